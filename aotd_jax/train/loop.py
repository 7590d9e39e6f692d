"""The training loop: resume, step, log, checkpoint, stop on preemption or NaN."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Protocol

import numpy as np
from absl import logging

from aotd_jax.train import metrics as metrics_lib
from aotd_jax.train.checkpoint import Checkpointer
from aotd_jax.train.trainer import NonFiniteLossError, Trainer


class DataIterator(Protocol):
  """A batch iterator whose position can be saved (Grain's `DatasetIterator` is one)."""

  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class LoopResult:
  status: str  # "done" | "preempted"
  step: int
  last_metrics: dict[str, float]
  seconds: float


@dataclasses.dataclass
class LoopConfig:
  total_steps: int
  checkpoint_every: int = 100
  log_every: int = 10
  peak_flops: float = 0.0  # one chip's peak FLOP/s; MFU divides by it × the mesh's chips


def train_loop(
  trainer: Trainer,
  data: DataIterator,
  cfg: LoopConfig,
  *,
  checkpointer: Checkpointer | None = None,
  writer: metrics_lib.MetricsWriter | None = None,
  stop_requested: Callable[[], bool] = lambda: False,
  flops_per_token: float = 0.0,
  meta: dict | None = None,
) -> LoopResult:
  """Runs `trainer` on `data` until `cfg.total_steps`, resuming from `checkpointer` if it holds a step.

  Saves every `cfg.checkpoint_every` steps and at the end (async), and synchronously when
  `stop_requested()` turns true (SIGTERM on a preempted TPU VM). A non-finite loss raises
  `NonFiniteLossError` after pending saves finish, so the last good checkpoint stays.
  """
  start = time.time()
  if checkpointer is not None and checkpointer.latest_step() is not None:
    restored = checkpointer.restore(None, model=trainer.model_state(), opt_state=trainer.opt_state)
    trainer.load(restored["model"], restored["opt_state"], restored["step"])
    if restored["data"]:
      data.set_state(restored["data"])
    logging.info("resumed from step %d of %s", trainer.step, checkpointer.directory)

  saved = [None]  # the step of the latest save started here

  def save(force: bool = False) -> None:
    if checkpointer is not None and saved[0] != trainer.step:
      saved[0] = trainer.step
      checkpointer.save(
        trainer.step,
        model=trainer.model_state(),
        opt_state=trainer.opt_state,
        meta={"step": trainer.step, **(meta or {})},
        data=data.get_state(),
        force=force,
      )

  last: dict[str, float] = {}
  num_chips = trainer.mesh.devices.size
  timed: list[float] = []  # step times after the first (compilation) step, for the ETA
  try:
    while trainer.step < cfg.total_steps:
      if stop_requested():
        # the step just saved on schedule (a SIGTERM during a checkpoint step) is not saved
        # again: Orbax refuses a step that exists, and the stop ended in a traceback, exit 1
        logging.warning("stop requested at step %d: saving and exiting", trainer.step)
        save(force=True)
        return LoopResult("preempted", trainer.step, last, time.time() - start)
      batch = next(data)
      t0 = time.time()
      first_step = not timed and not last
      m = dataclasses.asdict(trainer.train_step(batch))
      dt = time.time() - t0
      tokens = m.pop("tokens")  # the global batch's tokens, summed on the mesh
      m["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
      m["step_seconds"] = dt
      m["mfu"] = metrics_lib.mfu(flops_per_token * tokens, dt, cfg.peak_flops * num_chips)
      if not first_step:
        timed.append(dt)
      mean_dt = sum(timed[-50:]) / len(timed[-50:]) if timed else dt
      m["eta_seconds"] = mean_dt * (cfg.total_steps - trainer.step)
      m = {k: v for k, v in m.items() if v is not None}
      last = m
      if writer is not None:
        writer.write(trainer.step, m, prefix="train/")
      if trainer.step % cfg.log_every == 0 or trainer.step == cfg.total_steps:
        metrics_lib.log_line(trainer.step, cfg.total_steps, m)
      if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.total_steps:
        save()
  except NonFiniteLossError:
    if checkpointer is not None:
      checkpointer.wait()
    raise
  finally:
    if checkpointer is not None:
      checkpointer.wait()
  return LoopResult("done", trainer.step, last, time.time() - start)
