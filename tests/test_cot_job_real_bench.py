"""benchmarks/cot_job_real.py at the rehearsal's sizes: the launcher's job with model experts
runs in its three modes, reaches every expert (coalesced ones through the device scheduler)
and keeps the same records."""

import os

import pytest

from benchmarks import cot_job_real


@pytest.mark.slow  # three jobs, each compiling the tiny experts: ~30 s on 2 cores
def test_three_modes_run_the_launchers_job_and_keep_the_same_records(tmp_path):
  got = cot_job_real.main(
    [
      "--size=tiny",
      "--questions=2",
      "--programs=2",
      "--warmup_questions=0",
      "--llm_latency_ms=20",
      f"--workdir={tmp_path}",
    ]
  )
  modes = got["modes"]
  assert list(modes) == ["on", "off", "serial"]
  assert got["same_records"], got["record_differences"]
  assert got["records_executed_all"]
  assert [modes[m]["coalesce"] for m in modes] == [True, False, False]
  assert [modes[m]["programs_in_flight"] for m in modes] == [2, 2, 1]
  for name, mode in modes.items():
    assert mode["executed"] == 2, name
    # every model expert and the selector were called by the stub's program
    assert set(mode["tool_s"]) == set(cot_job_real.TOOL_EXPERTS), name
    requests = mode["llm_requests"]
    assert requests["program"] == requests["selector"] == 2, (name, requests)
    assert mode["stage_busy_s"]["execute"] > 0 and mode["decode_s"] > 0, name
    assert mode["questions_per_s"] > 0
  # the sandbox's expert calls reached the coalescers: batches of every model ran through the
  # device scheduler (LLaVA's coalescers are made on first use, during the timed run)
  on = modes["on"]
  assert on["scheduler"]["batches"] > 0
  names = " ".join(on["coalescers"])
  for model in ("owlv2", "univtg", "llava"):
    assert model in names, on["coalescers"]
  assert modes["off"]["scheduler"] is None and not modes["off"]["coalescers"]
  assert set(got["ratios"]) == {"on_vs_off", "on_vs_serial", "off_vs_serial"}
  # the checkpoints are reused: a second call writes nothing
  root = os.path.join(tmp_path, "checkpoints")
  stamps = {p: os.path.getmtime(p) for p in got["checkpoints"].values()}
  assert cot_job_real.make_checkpoints("tiny", root) == got["checkpoints"]
  assert {p: os.path.getmtime(p) for p in stamps} == stamps


def test_differences_name_the_question_and_key():
  a = [{"qid": "q1", "kept": True, "trace": 1}, {"qid": "q2", "kept": False}]
  b = [{"qid": "q1", "kept": False, "trace": 1}, {"qid": "q2", "kept": False}]
  assert cot_job_real.differences(a, a) == []
  assert cot_job_real.differences(a, b) == ["q1: kept"]
  assert cot_job_real.differences(a, b[:1]) == ["2 vs 1 records", "q1: kept"]


@pytest.mark.parametrize("argv", [["--modes=on,fast"], ["--modes=,"], ["--questions=0"]])
def test_bad_arguments_are_refused(argv, capsys):
  with pytest.raises(SystemExit):
    cot_job_real.main(argv)
  assert argv[0].split("=")[0] in capsys.readouterr().err
