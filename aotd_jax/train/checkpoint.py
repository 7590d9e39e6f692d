"""Preemption-safe Orbax checkpoints: one composite item per step.

Items: `model` (the full nnx Param state as a pure dict — the layout `python -m aotd_jax.hf
export` reads), `opt_state`, `meta` (step, config summary) and `data` (the Grain iterator
state, so a resumed run continues on the exact next batch). Saves are asynchronous; the
manager keeps the newest `max_to_keep` steps and never leaves a half-written step behind.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with AoTD's composite item."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("model", "opt_state", "meta", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, *, model: Any, opt_state: Any, meta: dict, data: dict | None,
           force: bool = False) -> bool:
    """Starts an (async) save of step `step`; returns whether a save was started."""
    args = ocp.args.Composite(
        model=ocp.args.StandardSave(model),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
        data=ocp.args.JsonSave(data or {}),
    )
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int | None, *, model: Any, opt_state: Any) -> dict:
    """Restores `step` (latest if None) onto the abstract/sharded targets given."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    to_abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(to_abstract(model)),
        opt_state=ocp.args.StandardRestore(to_abstract(opt_state)),
        meta=ocp.args.JsonRestore(),
        data=ocp.args.JsonRestore(),
    ))
    return {"step": step, "model": restored["model"], "opt_state": restored["opt_state"],
            "meta": restored["meta"], "data": restored["data"]}

  def wait(self) -> None:
    """Blocks until pending async saves are durable."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
