"""A launcher whose LLM server does not answer (`LLMError` after the client's retries) ends with
one line naming the URL and what to check, exit status 1, not a traceback (`launch.cli`)."""

import pytest

from aotd_jax.agent.llm_http import LLMError
from launch import cli


def test_an_unanswered_llm_server_is_one_line(capsys):
  def main(argv):
    del argv
    raise LLMError("POST http://127.0.0.1:9/v1/chat/completions failed after 5 attempts")

  with pytest.raises(SystemExit) as e:
    cli.guard(main)(["judge_open_ended"])
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert "error: POST http://127.0.0.1:9/v1/chat/completions failed after 5 attempts." in err
  assert "server at that URL is up and serves the model named" in err


def test_other_exceptions_are_not_swallowed():
  def main(argv):
    raise RuntimeError("a bug")

  with pytest.raises(RuntimeError, match="a bug"):
    cli.guard(main)([])


def test_a_bad_replay_file_gets_no_server_hint(capsys):
  """A recording replayed in place of a server (`--replay`, `--judge_replay`): its error is said
  as it is, not followed by advice about a server that was never called."""

  def main(argv):
    raise LLMError("replay file J.jsonl line 1: bad record (JSONDecodeError: ...)")

  with pytest.raises(SystemExit) as e:
    cli.guard(main)(["judge_open_ended"])
  err = capsys.readouterr().err
  assert e.value.code == 1 and "error: replay file J.jsonl line 1: bad record" in err
  assert "server" not in err


def test_a_missing_or_foreign_annotation_file_is_one_line(capsys, tmp_path):
  """`launch.evaluate --annotations=val.csv` mistyped, or a file of another format than
  `--format`: the reader's AnnotationError naming the file, exit 2 (was a traceback)."""
  from aotd_jax.data import annotations

  def main(argv):
    annotations.read("star", tmp_path / "STAR_vall.json")

  with pytest.raises(SystemExit) as e:
    cli.guard(main)(["evaluate"])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert len(err.strip().splitlines()) == 1
  assert err.strip().endswith(f": error: annotation file not found: {tmp_path / 'STAR_vall.json'}")
