r"""Run the same absl command on every worker of a Cloud TPU VM slice.

  python -m launch.tpu.pod --tpu=my-v5p-128 --zone=us-east5-a --repo_dir=~/aotd_jax \
      --workdir=gs://bucket/aotd/run1 --config=configs/distill/lnv7b_star_tpu.py --dry_run

Every worker runs `python -m launch.train ... --config.distributed=True`, so the launcher
calls `jax.distributed.initialize()` (TPU VMs discover their peers themselves). With
`--dry_run` the gcloud commands are printed, not run (that is how the tests check it).
"""
from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags

_TPU = flags.DEFINE_string("tpu", None, "TPU VM name.")
_ZONE = flags.DEFINE_string("zone", None, "TPU zone.")
_PROJECT = flags.DEFINE_string("project", "", "GCP project (gcloud's default if empty).")
_REPO = flags.DEFINE_string("repo_dir", "~/aotd_jax", "Checkout of this repo on every worker.")
_CONFIG = flags.DEFINE_string("config", None, "Config file (with :arg) for launch.train.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Shared workdir (a gs:// bucket path on pods).")
_MODULE = flags.DEFINE_string("module", "launch.train", "Entry point to run on every worker.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE, repeatable.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
flags.mark_flags_as_required(["tpu", "zone", "config", "workdir"])


def worker_command(repo_dir: str, module: str, config: str, workdir: str, overrides: list[str]) -> str:
  """The shell command every worker runs (same on all; JAX tells the workers apart)."""
  args = [f"--config={config}", f"--workdir={workdir}", "--config.distributed=True"]
  args += [o if o.startswith("--") else f"--config.{o}" for o in overrides]
  return (f"cd {repo_dir} && . .venv/bin/activate && "
          f"python -m {module} " + " ".join(shlex.quote(a) for a in args))


def gcloud_command(tpu: str, zone: str, project: str, remote: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all",
         f"--command={remote}"]
  if project:
    cmd.append(f"--project={project}")
  return cmd


def main(argv):
  del argv
  remote = worker_command(_REPO.value, _MODULE.value, _CONFIG.value, _WORKDIR.value, _OVERRIDES.value)
  cmd = gcloud_command(_TPU.value, _ZONE.value, _PROJECT.value, remote)
  if _DRY_RUN.value:
    print(" ".join(shlex.quote(c) for c in cmd))
    return
  sys.exit(subprocess.run(cmd, check=False).returncode)


if __name__ == "__main__":
  app.run(main)
