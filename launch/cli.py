"""Launcher entry point: command-line mistakes end with one line naming the flag, not a
traceback.

`--config.totl_steps=3` (a key the config lacks), `--config.total_steps=abc`, a config arg the
config file refuses, and a `ConfigError` from the launcher's own checks
(`aotd_jax.train.config_check`) each print `<launcher>: error: ...` on stderr and exit with
status 2, the usual code for a usage error; so does a `CheckpointError` (a checkpoint path
given on the command line that is not a readable checkpoint: the message names the file) and
an `AnnotationError` (an annotation file that is missing or not in the format given).
An LLM server that does not answer (`aotd_jax.agent.llm_http.LLMError` after its retries) is
one line too, with what to check, and exit status 1.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import app, flags

from aotd_jax.data.annotations import AnnotationError
from aotd_jax.hf.io import CheckpointError
from aotd_jax.train.config_check import ConfigError

EXIT_USAGE = 2


def _prog(argv) -> str:
  name = os.path.basename(argv[0]) if argv else "launch"
  return name[:-3] if name.endswith(".py") else name


def describe(e: BaseException, argv) -> str:
  """A one-paragraph message for a flag-parsing failure, naming the flag when it can."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  if isinstance(e, (KeyError, AttributeError)):
    message = str(e).replace("\\'", "'")
    for arg in overrides:
      path = arg[len("--config.") :].split("=", 1)[0]
      key = next((k for k in path.split(".") if f"'{k}'" in message), None)
      if key:
        hint = re.search(r'Did you mean "([^"]+)"', message)
        return (
          f"{arg.split('=', 1)[0]}: the config has no key {key!r}"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
          + "; a new key needs a config file that defines it"
        )
  text = str(e).strip().strip("'\"").replace("\\n", " ")
  if isinstance(e, flags.Error):
    return text
  return f"{type(e).__name__}: {text}"


def packaged_configs(argv: list[str], cwd: str | None = None) -> list[str]:
  """`--config=configs/...` read from the installed `configs` package when no such file is
  under the working directory, so an installed launcher runs the documented commands from any
  directory; any other `--config` is left as it is."""
  cwd = os.getcwd() if cwd is None else cwd
  out = []
  for arg in argv:
    if arg.startswith("--config=configs/"):
      path, sep, config_arg = arg[len("--config=") :].partition(":")
      if not os.path.exists(os.path.join(cwd, path)):
        import configs  # pylint: disable=g-import-not-at-top

        packaged = os.path.join(
          os.path.dirname(os.path.abspath(configs.__file__)), path[len("configs/") :]
        )
        if os.path.isfile(packaged):
          arg = f"--config={packaged}{sep}{config_arg}"
    out.append(arg)
  return out


def parse_seeds(values: list[str]) -> list[int]:
  """--seeds values as ints; a bad one is a usage error naming the flag.

  Here rather than in launch/study.py so that tests can call it without importing a launcher
  (two launchers imported in one process define --config twice).
  """
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--seeds={','.join(values)}: expected integers, e.g. 0,1,2,3,4") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise app.UsageError(f"--seeds={','.join(values)}: expected distinct seeds")
  return seeds


def llm_hint(e: Exception) -> str:
  """An LLM server error with what to check: the server at that URL, serving that model; a
  replay file's error (no server involved) as it is."""
  if not str(e).startswith("POST "):
    return str(e)
  return (
    f"{e}. Check that the OpenAI-compatible server at that URL is up and serves the model "
    "named (docs/reproduce.md, section 0)"
  )


def out_file(path: str, flag: str = "--out") -> None:
  """Makes the folder of the output file `path` given as `flag`, before the run whose results
  it will hold: they are written at its end, where a missing folder lost them (`W/eval/` on a
  first evaluation). A ConfigError when `path` is a directory."""
  from aotd_jax.data import files  # pylint: disable=g-import-not-at-top

  if files.isdir(path):
    raise ConfigError(f"{flag}={path} is a directory; give the JSON file to write")
  parent = os.path.dirname(path.rstrip("/"))
  if parent:
    files.makedirs(parent)


def parse_flags(argv):
  """`app.run`'s flag parser with readable errors; `--config=configs/...` also from the
  installed package (`packaged_configs`)."""
  argv = packaged_configs(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    print(f"{_prog(argv)}: error: {describe(e, argv)}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def guard(main: Callable) -> Callable:
  """`main` whose `ConfigError`, `CheckpointError` or `AnnotationError` (an annotation file
  that is missing or not its format's: the message names it) exits 2 with its message, and whose
  `LLMError` (an LLM server that did not answer after its retries) exits 1 with its message
  and what to check; no traceback."""

  def guarded(argv):
    try:
      return main(argv)
    except (ConfigError, CheckpointError, AnnotationError) as e:
      print(f"{_prog(sys.argv)}: error: {e}", file=sys.stderr)
      sys.exit(EXIT_USAGE)
    except Exception as e:  # an LLMError only where the launcher used an LLM server
      llm_http = sys.modules.get("aotd_jax.agent.llm_http")
      if llm_http is None or not isinstance(e, llm_http.LLMError):
        raise
      print(f"{_prog(sys.argv)}: error: {llm_hint(e)}", file=sys.stderr)
      sys.exit(1)

  return guarded


def run(main: Callable) -> None:
  """`app.run(guard(main))` with `parse_flags`."""
  app.run(guard(main), flags_parser=parse_flags)
