"""benchmarks/llama_generate_cpu.py: its refusals name the flag (the timing itself is a benchmark)."""

import pytest

from benchmarks import llama_generate_cpu


def test_a_tree_without_aotd_jax_is_refused_by_flag_and_path(tmp_path):
  with pytest.raises(SystemExit, match=r"--trees: .*not_a_checkout.* has no aotd_jax/"):
    llama_generate_cpu.main(["--trees", str(tmp_path / "not_a_checkout"), "--rounds", "1"])


def test_new_below_two_is_refused_by_flag(capsys):
  with pytest.raises(SystemExit):
    llama_generate_cpu.main(["--new", "1"])
  assert "--new: at least 2" in capsys.readouterr().err
