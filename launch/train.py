r"""Distil AoTD's student: L = L_label + λ·L_rationale over a device mesh.

  python -m launch.train --config=configs/toyworld/distill.py --workdir=/tmp/aotd_toy \
      --config.total_steps=20 --config.checkpoint_every=5

Resumes automatically from `workdir/checkpoints`; SIGTERM (TPU preemption) saves and exits 0;
a NaN/Inf loss stops with exit code 3 and the last good checkpoint kept. A resume whose config
changes the batch size, λ, total steps or data stops with exit code 4 unless
`--config.allow_changes=True` (each checkpoint's `meta` holds the run's full config).
Before anything is built, each CoT set's `manifest.json` must record the frames this run
decodes (`config.data.window`, `.frame_sampling`, `.num_frames`; `aotd_jax/train/cot_frames.py`):
a mismatch is a usage error naming both values unless `--config.data.allow_cot_frame_mismatch=True`;
`workdir/cot_frames.json` records the comparison. A config sized for another device count
(`config.expected_devices`, set by the real presets) stops too, naming `,runlocal`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import logging as logging_std
from typing import Any, Callable

import jax
from absl import flags, logging
from ml_collections import config_flags

from aotd_jax import host_memory, sharding
from aotd_jax.hf import io as hf_io
from aotd_jax.train import build, config_check, cot_frames, data as train_data
from aotd_jax.train.checkpoint import Checkpointer, check_resume_config
from aotd_jax.train.loop import LoopConfig, train_loop
from aotd_jax.train.metrics import MetricsWriter
from aotd_jax.train.optim import learning_rate_schedule, make_optimizer, trainable_filter
from launch import cli
from aotd_jax.train.trainer import NonFiniteLossError, Trainer, matmul_flops_per_token

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (get_config(arg)).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and plots go here.")
_KEEP_MEMORY = flags.DEFINE_bool(
  "keep_freed_memory",
  None,
  "Keep freed host memory for reuse (aotd_jax/host_memory.py): no "
  "page faults on XLA's per-step CPU buffers. Default: on when JAX runs on the CPU.",
)
flags.mark_flags_as_required(["config", "workdir"])

EXIT_NAN = 3
EXIT_CONFIG_CHANGED = 4


class _QuietOrbax(logging_std.Filter):
  """Orbax logs every save step at INFO; keep our log readable."""

  def filter(self, record):
    return "orbax" not in record.pathname


# `wrap_data(data, checkpointer, trainer) -> data`: a data iterator around the run's own
# (same `__next__` / `get_state` / `set_state`); the tests' fault injection is one
# (tests/fault_train.py).
WrapData = Callable[[Any, Checkpointer, Trainer], Any]


def _refuse_resume(cfg, config_dict: dict, ckpt_dir: str) -> bool:
  """When `ckpt_dir` has a checkpoint: True (after printing why) if its saved config differs
  from `config_dict` in a guarded key and `allow_changes` is off (`check_resume_config`);
  the allowed changes are logged."""
  checkpointer = Checkpointer(ckpt_dir, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      return False
    saved = checkpointer.restore_meta().get("config")
    try:
      changes = check_resume_config(
        saved if isinstance(saved, dict) else None,
        config_dict,
        allow_changes=cfg.get("allow_changes", False),
        directory=ckpt_dir,
      )
    except ValueError as e:
      print(f"refused: {e}", file=sys.stderr)
      return True
  finally:
    checkpointer.close()
  for change in changes:
    logging.warning("resuming with a changed config (allow_changes): %s", change)
  return False


def run(cfg, workdir: str, *, wrap_data: WrapData | None = None) -> int:
  """The whole run; returns the process exit code."""
  config_check.check_train_config(cfg)
  if cfg.student.get("hf_dir", ""):  # a mistyped student path stops first (CheckpointError)
    hf_io.read_config(cfg.student.hf_dir)
  # the CoT sets' manifests against this run's frames, before anything is built
  cot_report = cot_frames.check(cfg) if cfg.data.get("kind", "synthetic") == "pipeline" else None
  for error in (cot_report or {}).get("errors_allowed", ()):
    logging.warning("training on mismatched CoT frames (allow_cot_frame_mismatch): %s", error)
  train_data.check_paths(cfg)  # the annotation files and video folders, before the build
  sharding.maybe_initialize_distributed(cfg)
  config_check.check_devices(cfg, jax.device_count(), jax.devices()[0].platform)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  config_dict = json.loads(cfg.to_json_best_effort())
  # a resume with a changed config is refused before the student is built (minutes at 7B)
  if _refuse_resume(cfg, config_dict, ckpt_dir):
    return EXIT_CONFIG_CHANGED
  mesh = sharding.make_mesh(dict(cfg.mesh))
  student = build.build_student(cfg.student, mesh=mesh, seed=cfg.seed)
  data = train_data.make_train_data(cfg, student, workdir=workdir)
  tx = make_optimizer(cfg.optim, cfg.total_steps)
  schedule = learning_rate_schedule(cfg.optim, cfg.total_steps)
  trainer = Trainer(
    student,
    tx,
    mesh=mesh,
    trainable=trainable_filter(
      student.options.freeze_vision_tower, cfg.student.get("freeze_image_newline", False)
    ),
    rationale_weight=cfg.rationale_weight,
    schedule=schedule,
    loss_normalization=cfg.get("loss", {}).get("normalization", "per_part"),
    neftune_alpha=cfg.get("neftune_alpha", 0.0),
    seed=cfg.seed,
  )
  if jax.process_index() == 0:
    build.write_hf_config(student, ckpt_dir, source_dir=cfg.student.get("hf_dir", ""))
    if cot_report is not None:
      cot_frames.write_report(cot_report, workdir)
  checkpointer = Checkpointer(
    ckpt_dir,
    max_to_keep=cfg.get("keep_checkpoints", 3),
    async_save=cfg.get("async_checkpoints", True),
  )
  if wrap_data is not None:
    data = wrap_data(data, checkpointer, trainer)
  # one writer per run: process 0 writes TensorBoard, metrics.jsonl and plots
  writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
  writer.write_text("config", cfg.to_json_best_effort(indent=2, sort_keys=True))
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  loop_cfg = LoopConfig(
    total_steps=cfg.total_steps,
    checkpoint_every=cfg.checkpoint_every,
    log_every=cfg.get("log_every", 10),
    peak_flops=cfg.get("peak_flops", 0.0),
  )
  try:
    result = train_loop(
      trainer,
      data,
      loop_cfg,
      checkpointer=checkpointer,
      writer=writer,
      stop_requested=stop.is_set,
      flops_per_token=matmul_flops_per_token(student),
      meta={"name": cfg.get("name", ""), "config": config_dict},
    )
  except NonFiniteLossError as e:
    logging.error("%s", e)
    print(f"stopped: {e}", file=sys.stderr)
    return EXIT_NAN
  finally:
    writer.close()
    checkpointer.close()
  print(
    f"{result.status} at step {result.step} in {result.seconds:.1f}s; "
    f"loss {result.last_metrics.get('loss', float('nan')):.4f}; checkpoints in {ckpt_dir}"
  )
  return 0


def main(argv, wrap_data: WrapData | None = None):
  del argv
  logging.get_absl_handler().addFilter(_QuietOrbax())
  sharding.maybe_initialize_distributed(_CONFIG.value)  # before any backend is touched
  if host_memory.wanted(_KEEP_MEMORY.value):
    logging.info("keep_freed_memory: %s", host_memory.keep_freed_memory())
  sys.exit(run(_CONFIG.value, _WORKDIR.value, wrap_data=wrap_data))


if __name__ == "__main__":
  cli.run(main)
