"""Preemption-safe Orbax checkpoints: one composite item per step.

Items: `model` (the full nnx Param state as a pure dict — the layout `python -m aotd_jax.hf
export` reads), `opt_state`, `meta` (step, the run's full config) and `data` (every host's
data-iterator state, one `process_<i>-of-<n>.json` per process, so each host of a pod resumes
on its own next batch). Saves are asynchronous; the manager keeps the newest `max_to_keep`
steps and never leaves a half-written step behind. Directories are `etils.epath` paths: local,
`gs://` (with the `gcs` extra) or any fsspec filesystem Orbax can write.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
  """A user path as `epath.Path`: local paths made absolute, URLs (`gs://...`) left as they are."""
  text = os.fspath(path)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(text))


def _process_file(directory: epath.Path, index: int, count: int) -> epath.Path:
  return epath.Path(directory) / f"process_{index}-of-{count}.json"


class PerProcessJsonHandler(ocp.CheckpointHandler):
  """Every process saves its own JSON (`process_<i>-of-<n>.json`) and restores its own: the
  data position of each host (Orbax's `JsonSave` writes on the primary host only)."""

  def save(self, directory: epath.Path, args: "PerProcessJsonSave") -> None:
    path = _process_file(directory, jax.process_index(), jax.process_count())
    path.write_text(json.dumps(args.item, sort_keys=True))

  def restore(self, directory: epath.Path, args: "PerProcessJsonRestore | None" = None) -> dict:
    count = jax.process_count()
    path = _process_file(directory, jax.process_index(), count)
    if not path.exists():
      found = sorted(p.name for p in epath.Path(directory).glob("process_*.json"))
      raise FileNotFoundError(
        f"{path}: no data-iterator state for this process ({count} processes now; the "
        f"checkpoint holds {found or 'none'}): resume on the same number of hosts"
      )
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    del directory
    return None


@ocp.args.register_with_handler(PerProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class PerProcessJsonSave(ocp.args.CheckpointArgs):
  item: dict


@ocp.args.register_with_handler(PerProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class PerProcessJsonRestore(ocp.args.CheckpointArgs):
  pass


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with AoTD's composite item."""

  def __init__(
    self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
  ):
    self.directory = as_path(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("model", "opt_state", "meta", "data")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(
    self,
    step: int,
    *,
    model: Any,
    opt_state: Any,
    meta: dict,
    data: dict | None,
    force: bool = False,
  ) -> bool:
    """Starts an (async) save of step `step`; returns whether a save was started."""
    args = ocp.args.Composite(
      model=ocp.args.StandardSave(model),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta),
      data=PerProcessJsonSave(dict(data or {})),
    )
    return self._manager.save(step, args=args, force=force)

  def restore_meta(self, step: int | None = None) -> dict:
    """The `meta` item of `step` (latest if None) alone: the saved config, without the arrays;
    {} for a checkpoint of the model alone (`python -m aotd_jax.hf convert` writes no meta)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except KeyError as e:  # Orbax: 'Item "meta" was not found in the checkpoint'
      if '"meta"' not in str(e):
        raise
      return {}
    return restored["meta"]

  def restore(self, step: int | None, *, model: Any, opt_state: Any) -> dict:
    """Restores `step` (latest if None) onto the abstract/sharded targets given."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    to_abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        model=ocp.args.StandardRestore(to_abstract(model)),
        opt_state=ocp.args.StandardRestore(to_abstract(opt_state)),
        meta=ocp.args.JsonRestore(),
        data=PerProcessJsonRestore(),
      ),
    )
    return {
      "step": step,
      "model": restored["model"],
      "opt_state": restored["opt_state"],
      "meta": restored["meta"],
      "data": restored["data"],
    }

  def wait(self) -> None:
    """Blocks until pending async saves are durable."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


# Config keys a resume must not change silently: they change what the remaining steps train on.
GUARDED_KEYS = ("batch_size", "rationale_weight", "total_steps")
GUARDED_PREFIXES = ("data.",)
# ... except these, which only say where or how fast the same data is read.
# data keys added after runs were saved without them: unset reads as this value (no change)
IMPLICIT = {"max_examples": 0}
UNGUARDED_DATA_KEYS = (
  "num_workers",
  "worker_buffer_size",
  "video_root",
  "tokenizer",
  "decode_size",
  # checks before and during the run (what stops it), not what it trains on
  "fit_check",
  "max_skip_fraction",
  "skip_check_after",
  "cache_dir",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_changes(saved: dict, current: dict) -> list[str]:
  """The guarded keys (batch size, λ, total steps, the data mix) whose values differ between
  the config saved in a checkpoint and the current one, as `key: old -> new` lines."""
  old, new = _flatten(saved), _flatten(current)
  out = []
  for key in sorted(set(old) | set(new)):
    guarded = key in GUARDED_KEYS or (
      key.startswith(GUARDED_PREFIXES) and key.rsplit(".", 1)[-1] not in UNGUARDED_DATA_KEYS
    )
    leaf = key.rsplit(".", 1)[-1]
    before, after = old.get(key, IMPLICIT.get(leaf)), new.get(key, IMPLICIT.get(leaf))
    if guarded and before != after:
      out.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
  return out


def check_resume_config(
  saved: dict | None, current: dict, *, allow_changes: bool, directory: Any = ""
) -> list[str]:
  """Refuses (ValueError) a resume whose config changes a guarded key, unless `allow_changes`;
  returns the changes (logged by the caller when allowed)."""
  if not saved:
    return []
  changes = config_changes(saved, current)
  if changes and not allow_changes:
    raise ValueError(
      f"{directory}: resuming with a config that changes what the run trains on:\n  "
      + "\n  ".join(changes)
      + "\nuse a new workdir, or pass --config.allow_changes=True to resume anyway"
    )
  return changes
