r"""Run the same absl command on every worker of a Cloud TPU VM slice.

  # once per slice: venv + the TPU build of JAX on every worker (repo checked out at --repo_dir)
  python -m launch.tpu.pod --tpu=my-v5p-128 --zone=us-east5-a --repo_dir='~/aotd_jax' --setup \
      --config=configs/distill/lnv7b.py:tpu_v5p_128 --workdir=gs://BUCKET/aotd/run1 --dry_run
  # the run: every worker in the background, one log per worker in --worker_log_dir
  python -m launch.tpu.pod --tpu=my-v5p-128 --zone=us-east5-a --repo_dir='~/aotd_jax' \
      --config=configs/distill/lnv7b.py:tpu_v5p_128 --workdir=gs://BUCKET/aotd/run1 \
      --config.total_steps=2000 --libtpu_init_args='--xla_tpu_enable_async_all_gather=true' --dry_run

  # the CoT job, one shard per worker (merge with launch.merge_cots once all finished)
  python -m launch.tpu.pod --tpu=my-v5p-128 --zone=us-east5-a --module=launch.generate_cots \
      --config=configs/cot/star.py:ann=STAR_train.json,videos=Charades_v1_480,owlv2=owlv2,\
univtg=univtg/model_best.ckpt,clip=clip-vit-base-patch32,llava=LLaVA-NeXT-Video-7B-DPO-hf,\
llm=http://localhost:8000/v1,out=cots/star --dry_run

Every worker runs `python -m MODULE ... --config.distributed=True` (`--module`, default
launch.train), so the module calls `jax.distributed.initialize()` (TPU VMs discover their
peers themselves). Arguments
`--config.KEY=VALUE` pass through to every worker (as does `--override=KEY=VALUE`). With
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
_WORKDIR = flags.DEFINE_string(
  "workdir",
  "",
  "Shared workdir (a gs:// bucket path on pods); launch.train needs it, modules "
  "without a --workdir flag (launch.generate_cots) run without.",
)
_MODULE = flags.DEFINE_string("module", "launch.train", "Entry point to run on every worker.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE, repeatable.")
_SETUP = flags.DEFINE_bool(
  "setup",
  False,
  "Instead of the run: create .venv on every worker and install the package "
  "with the TPU build of JAX (`pip install -c constraints.txt -e '.[tpu,gcs]'`).",
)
_EXTRAS = flags.DEFINE_string("extras", "tpu,gcs", "Extras the setup step installs.")
_PYTHON = flags.DEFINE_string(
  "python",
  "python3",
  "Interpreter the setup step makes the venv "
  "with (Python >= 3.11, e.g. python3.11 on older TPU VM images).",
)
_LIBTPU = flags.DEFINE_string("libtpu_init_args", "", "LIBTPU_INIT_ARGS for every worker.")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "XLA_FLAGS for every worker.")
_BACKGROUND = flags.DEFINE_bool(
  "background",
  True,
  "Detach the run on every worker (nohup), logging to "
  "--worker_log_dir/<module>-<worker hostname>.log; the ssh returns at once.",
)
_LOG_DIR = flags.DEFINE_string(
  "worker_log_dir", "~/aotd_logs", "Per-worker log folder (on each worker)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
flags.mark_flags_as_required(["tpu", "zone", "config"])

_PASSTHROUGH: list[str] = []  # --config.KEY=VALUE arguments of this command line


def _tilde(path: str) -> str:
  """Quotes a path for the remote shell, keeping a leading `~/` expandable."""
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def setup_command(repo_dir: str, extras: str = "tpu,gcs", python: str = "python3") -> str:
  """The shell command that prepares one worker: a venv with the accelerator build of JAX."""
  return (
    f"cd {_tilde(repo_dir)} && {shlex.quote(python)} -m venv .venv && . .venv/bin/activate && "
    "python -m pip install -q --upgrade pip && "
    f"python -m pip install -q -c constraints.txt -e {shlex.quote(f'.[{extras}]')}"
  )


def worker_command(
  repo_dir: str,
  module: str,
  config: str,
  workdir: str,
  overrides: list[str],
  *,
  env: dict[str, str] | None = None,
  background: bool = False,
  log_dir: str = "~/aotd_logs",
) -> str:
  """The shell command every worker runs (same on all; JAX tells the workers apart)."""
  args = [f"--config={config}"] + ([f"--workdir={workdir}"] if workdir else [])
  args.append("--config.distributed=True")
  args += [o if o.startswith("--") else f"--config.{o}" for o in overrides]
  exports = "".join(f"export {k}={shlex.quote(v)} && " for k, v in (env or {}).items() if v)
  run = f"python -m {module} " + " ".join(shlex.quote(a) for a in args)
  if background:
    log = f"{_tilde(log_dir)}/{module.rsplit('.', 1)[-1]}-$(hostname).log"
    run = f"mkdir -p {_tilde(log_dir)} && nohup {run} > {log} 2>&1 < /dev/null &"
  return f"cd {_tilde(repo_dir)} && . .venv/bin/activate && {exports}{run}"


def gcloud_command(tpu: str, zone: str, project: str, remote: str) -> list[str]:
  cmd = [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    tpu,
    f"--zone={zone}",
    "--worker=all",
    f"--command={remote}",
  ]
  if project:
    cmd.append(f"--project={project}")
  return cmd


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing of everything but `--config.KEY=VALUE`, which is kept to pass through."""
  _PASSTHROUGH[:] = [a for a in argv[1:] if a.startswith("--config.")]
  return flags.FLAGS([a for a in argv if not a.startswith("--config.")])


def main(argv):
  del argv
  if _MODULE.value == "launch.train" and not _WORKDIR.value:
    raise app.UsageError("launch.train needs --workdir (a gs:// path shared by every worker)")
  if _SETUP.value:
    remote = setup_command(_REPO.value, _EXTRAS.value, _PYTHON.value)
  else:
    env = {"LIBTPU_INIT_ARGS": _LIBTPU.value, "XLA_FLAGS": _XLA_FLAGS.value}
    remote = worker_command(
      _REPO.value,
      _MODULE.value,
      _CONFIG.value,
      _WORKDIR.value,
      _OVERRIDES.value + _PASSTHROUGH,
      env=env,
      background=_BACKGROUND.value,
      log_dir=_LOG_DIR.value,
    )
  cmd = gcloud_command(_TPU.value, _ZONE.value, _PROJECT.value, remote)
  if _DRY_RUN.value:
    print(" ".join(shlex.quote(c) for c in cmd))
    return
  sys.exit(subprocess.run(cmd, check=False).returncode)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
