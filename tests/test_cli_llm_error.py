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
