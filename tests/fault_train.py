r"""`launch.train` with fault injection, for the preemption and NaN tests only.

  python -m tests.fault_train --config=configs/toyworld/distill.py:llama --workdir=W \
      --kill_at_step=4 [--kill_process=1] [--nan_at_step=5]

Without these flags it is `launch.train` itself. The faults wrap the run's data iterator
(`launch.train.run(..., wrap_data=)`), so no production config or launcher carries them.
"""

from __future__ import annotations

import functools
import os
import signal

import jax
import numpy as np
from absl import flags

from launch import cli
from launch import train

_KILL_AT = flags.DEFINE_integer(
  "kill_at_step", -1, "SIGKILL this process once step N's checkpoint is durable (-1: never)."
)
_KILL_PROCESS = flags.DEFINE_integer(
  "kill_process", -1, "Only the process of this jax.process_index() is killed (-1: every one)."
)
_NAN_AT = flags.DEFINE_integer(
  "nan_at_step", -1, "Poison step N's batch (NaN label mask): a non-finite loss (-1: never)."
)


class KillAfter:
  """Serves `data` and SIGKILLs this process when asked for a batch once `n` batches have been
  served and the checkpoints are durable: exactly like a VM that disappears."""

  def __init__(self, data, checkpointer, n: int):
    self._data, self._ckpt, self._n, self._served = data, checkpointer, n, 0

  def __next__(self):
    if self._served == self._n:
      self._ckpt.wait()
      os.kill(os.getpid(), signal.SIGKILL)
    self._served += 1
    return next(self._data)

  def get_state(self):
    return self._data.get_state()

  def set_state(self, state):
    self._data.set_state(state)


class NanAt:
  """Serves `data` with the batch of training step `n` poisoned (its label mask all NaN)."""

  def __init__(self, data, trainer, n: int):
    self._data, self._trainer, self._n = data, trainer, n

  def __next__(self):
    batch = next(self._data)
    if self._trainer.step + 1 == self._n:
      batch = dict(batch, label_mask=np.full(np.shape(batch["label_mask"]), np.nan, np.float32))
    return batch

  def get_state(self):
    return self._data.get_state()

  def set_state(self, state):
    self._data.set_state(state)


def inject_faults(data, checkpointer, trainer):
  """The `wrap_data` hook: the faults the flags ask for, around the run's data iterator."""
  if _NAN_AT.value > 0:
    data = NanAt(data, trainer, _NAN_AT.value)
  if _KILL_AT.value > 0 and _KILL_PROCESS.value in (-1, jax.process_index()):
    data = KillAfter(data, checkpointer, _KILL_AT.value)
  return data


if __name__ == "__main__":
  cli.run(functools.partial(train.main, wrap_data=inject_faults))
