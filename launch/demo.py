r"""The README's first command: the whole AoTD pipeline on the toy world, end to end.

  python -m launch.demo --config=configs/toyworld/demo.py:quick --workdir=/tmp/aotd_demo

world -> tiny experts -> agent (LLM programs in the sandbox) -> CoTs -> two-step filter ->
three students (Instruct, AoTD, AoTD without filter) -> evaluation on the held-out split.
Prints the table and writes `report.json` / `report.html` into the work directory; a rerun
resumes from what is cached there. See docs/demo.md.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "configs/toyworld/demo.py:micro|quick|full"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Every stage caches its output here.")
_KEEP_MEMORY = flags.DEFINE_bool(
  "keep_freed_memory",
  None,
  "Keep freed host memory for reuse (aotd_jax/host_memory.py): no "
  "page faults on XLA's per-step CPU buffers. Default: on when JAX runs on the CPU.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from aotd_jax import host_memory
  from aotd_jax.projects.toyworld import run

  if host_memory.wanted(_KEEP_MEMORY.value):
    logging.info("keep_freed_memory: %s", host_memory.keep_freed_memory())
  config, workdir = _CONFIG.value, _WORKDIR.value
  rep = run.run(config, workdir, log=lambda s: print(s, flush=True))
  logging.info("report: %s/report.html (%.0fs)", workdir, rep["seconds"])


if __name__ == "__main__":
  app.run(main)
