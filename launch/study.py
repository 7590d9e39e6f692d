r"""The toy-world study: AoTD vs Instruct over seeds, teachers, protocols and λ (docs/study.md).

  python -m launch.study --config=configs/toyworld/demo.py:quick --workdir=/tmp/aotd_study \
      --seeds=0,1,2,3,4 [--arms=instruct,aotd,...] [--epochs=5] [--config.KEY=VALUE ...]

Each seed draws its own world, experts and CoTs (`--vary=all`: world.seed + seed; made once
into `workdir/shared_w<seed>`), then each (arm, seed) student trains and is evaluated on its
world's held-out test split; a finished one is not redone, so rerunning the command after a
kill resumes (`--vary=student`: one world in `workdir/shared`, only the student's seed
changes). Writes `workdir/runs/<arm>_s<seed>.json`,
`workdir/study.json` and the table `workdir/study.md`; the arms are listed in
`aotd_jax.projects.toyworld.study.ARMS`. The whole study (quick world, 15 arms x 5 seeds = 75
students, ~35-70 s of CPU each, plus ~8 min of shared stages per seed) is about 2 hours of CPU
time, hours of wall time on a shared 2-core box (docs/study.md); it prints its progress with
an estimate of the time left. `--report_only` tables the runs finished so far.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/toyworld/demo.py:quick", "The demo config the study starts from."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Shared stages, runs and the table go here.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds (paired across arms).")
_VARY = flags.DEFINE_enum(
  "vary",
  "all",
  ["all", "student"],
  "What a seed changes: 'all' = its "
  "own world (world.seed + seed), experts, CoTs and student; 'student' "
  "= one world, the student's seed only.",
)
_ARMS = flags.DEFINE_list(
  "arms", None, "Arms to run (default: all of study.ARMS); each CoT arm brings its baseline."
)
_EPOCHS = flags.DEFINE_float(
  "epochs",
  5.0,
  "Passes over each student's own data (protocol "
  "'epochs'); 'steps' arms train config.students.steps steps.",
)
_SAMPLES = flags.DEFINE_integer("bootstrap_samples", 4000, "Resamples of the paired bootstrap.")
_REPORT_ONLY = flags.DEFINE_bool(
  "report_only",
  False,
  "Train nothing: the table of the runs already finished (a study stopped early).",
)
_KEEP_MEMORY = flags.DEFINE_bool(
  "keep_freed_memory",
  None,
  "Keep freed host memory for reuse (aotd_jax/host_memory.py). "
  "Default: on when JAX runs on the CPU.",
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from aotd_jax import host_memory
  from aotd_jax.projects.toyworld import study

  if host_memory.wanted(_KEEP_MEMORY.value):
    logging.info("keep_freed_memory: %s", host_memory.keep_freed_memory())
  seeds = cli.parse_seeds(_SEEDS.value)
  arms = _ARMS.value or list(study.ARMS)
  out = study.run_study(
    _CONFIG.value,
    _WORKDIR.value,
    arms,
    seeds,
    epochs=_EPOCHS.value,
    samples=_SAMPLES.value,
    report_only=_REPORT_ONLY.value,
    vary=_VARY.value,
    log=lambda s: print(s, flush=True),
  )
  logging.info("study: %s/study.md (%.0fs)", _WORKDIR.value, out["seconds"])


if __name__ == "__main__":
  app.run(main)
