r"""Run a config's sweep (`get_hyper(h)`): variants one after another locally, or print one
command per variant for a cluster scheduler.

  python -m launch.sweep --config=configs/toyworld/distill.py:llama --workdir=/tmp/sweep [--print_only] \
      [--config.total_steps=50 ...]

`--config.KEY=VALUE` arguments pass through to every variant (before the variant's own keys).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from absl import app, flags

from aotd_jax.train import sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file, optionally with :arg.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Each variant gets workdir/<variant name>.")
_PRINT_ONLY = flags.DEFINE_bool("print_only", False, "Print the commands instead of running them.")
flags.mark_flags_as_required(["config", "workdir"])

_PASSTHROUGH: list[str] = []  # --config.KEY=VALUE arguments of this command line


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing of everything but `--config.KEY=VALUE`, which is kept to pass through."""
  _PASSTHROUGH[:] = [a for a in argv[1:] if a.startswith("--config.")]
  return flags.FLAGS([a for a in argv if not a.startswith("--config.")])


def _load(path: str):
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  if spec is None or not os.path.isfile(path):
    raise app.UsageError(f"--config: no such file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(argv):
  del argv
  path, _, arg = _CONFIG.value.partition(":")
  variants = sweep.expand(_load(path), arg or None)
  failures = 0
  for overrides in variants:
    cmd = sweep.command(
      _CONFIG.value,
      os.path.join(_WORKDIR.value, sweep.variant_name(overrides)),
      overrides,
      extra=_PASSTHROUGH,
    )
    if _PRINT_ONLY.value:
      print(sweep.render(cmd))
      continue
    print(f"[sweep] {sweep.render(cmd)}", flush=True)
    cmd[0] = sys.executable
    failures += subprocess.run(cmd, check=False).returncode != 0
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
