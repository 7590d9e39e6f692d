"""Hugging Face directory <-> Orbax `CheckpointManager` directory, for any registered architecture.

Layout (shared with the distillation trainer): `<orbax_dir>/<step>/model` holds the model's
`nnx.Param` state as a pure dict (other composite items such as `opt_state` may sit beside it
and are never read here), and `<orbax_dir>/hf_config.json` holds the HF `config.json`, so that
export knows which architecture and config to rebuild.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from aotd_jax import sharding as sharding_lib
from aotd_jax.data import files
from aotd_jax.hf import api, hub, io, registry

HF_CONFIG = "hf_config.json"
MODEL_ITEM = "model"


def _manager(orbax_dir: str) -> ocp.CheckpointManager:
  where = epath.Path(orbax_dir) if files.is_url(orbax_dir) else os.path.abspath(orbax_dir)
  return ocp.CheckpointManager(where, item_names=(MODEL_ITEM,))


def convert(hf_dir: str, orbax_dir: str, *, dtype=jnp.float32, step: int = 0) -> str:
  """Writes the HF model at `hf_dir` as step `step` of an Orbax checkpoint at `orbax_dir`, with
  `hf_dir`'s tokenizer, processor and chat-template files beside it (`hub.copy_tokenizer_files`),
  so `launch.evaluate --student=ORBAX_DIR` finds its tokenizer and pixel normalisation there.

  Returns the checkpoint directory. The parameters are stored in `dtype`.
  """
  model = api.from_pretrained(hf_dir, dtype=dtype)
  hf_config = dict(io.read_config(hf_dir))
  hf_config["dtype"] = jnp.dtype(dtype).name  # what the checkpoint stores, for export
  params = nnx.state(model, nnx.Param).to_pure_dict()
  files.makedirs(orbax_dir)
  with _manager(orbax_dir) as mngr:
    mngr.save(
      step, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.StandardSave(params)}), force=True
    )
    mngr.wait_until_finished()
  files.write_text(
    files.join(orbax_dir, HF_CONFIG), json.dumps(hf_config, indent=2, sort_keys=True)
  )
  hub.copy_tokenizer_files(hf_dir, orbax_dir)
  return orbax_dir


def read_hf_config(orbax_dir: str) -> dict:
  """The `hf_config.json` beside an Orbax checkpoint, with a clear error when absent."""
  path = files.join(orbax_dir, HF_CONFIG)
  if not files.isfile(path):
    inner = files.join(orbax_dir, "checkpoints")
    if files.isfile(files.join(inner, HF_CONFIG)):  # a launch.train workdir
      raise io.CheckpointError(
        f"{orbax_dir} is a launch.train workdir: its checkpoints are in {inner} (give that)"
      )
    raise io.CheckpointError(
      f"{path}: missing; this Orbax directory was not written by "
      f"`python -m aotd_jax.hf convert` or the trainer"
    )
  try:
    return json.loads(files.read_text(path))
  except json.JSONDecodeError as e:
    raise io.CheckpointError(f"{path}: not valid JSON ({e})") from e


def restore_model(
  orbax_dir: str,
  *,
  step: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
  rules=None,
  dtype=None,
) -> nnx.Module:
  """Rebuilds the model of an Orbax checkpoint (latest step by default), reading only its `model` item.

  With `mesh`, every parameter is restored directly into its rules-table sharding; with `dtype`,
  restored in that dtype (cast as read: `bfloat16` halves a float32 run's memory), and the model
  computes in it; else in the dtype the checkpoint records.
  """
  hf_config = read_hf_config(orbax_dir)
  adapter = registry.adapter_for(registry.architecture_of(hf_config, orbax_dir))
  config = adapter.config_from_hf(hf_config)
  model = api.build_abstract(
    adapter, config, api.dtype_options(dtype or hf_config.get("dtype") or "float32")
  )
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  if mesh is not None:
    by_path = sharding_lib.param_shardings_by_path(model, mesh, rules)
  else:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  flat = {}
  for path, var in nnx.to_flat_state(abstract):
    key = "/".join(map(str, path))
    value = var.get_value()
    flat[path] = jax.ShapeDtypeStruct(
      value.shape, value.dtype, sharding=by_path[key] if mesh is not None else one
    )
  target = nnx.State.from_flat_path(flat).to_pure_dict()
  with _manager(orbax_dir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise io.CheckpointError(
        f"{orbax_dir}: no checkpoint step {'found' if step is None else step} "
        f"(steps: {list(mngr.all_steps())})"
      )
    if not files.isdir(files.join(orbax_dir, f"{step}/{MODEL_ITEM}")):
      raise io.CheckpointError(f"{orbax_dir}/{step}: no `{MODEL_ITEM}` item in this checkpoint")
    try:
      restored = mngr.restore(
        step, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.StandardRestore(target)})
      )[MODEL_ITEM]
    except (ValueError, KeyError) as e:
      raise io.CheckpointError(
        f"{orbax_dir}/{step}/{MODEL_ITEM}: does not match the "
        f"{adapter.architecture} of {HF_CONFIG} ({e})"
      ) from e
  abstract.replace_by_pure_dict(restored)
  return nnx.merge(graphdef, abstract, rest)


def export(
  orbax_dir: str,
  hf_dir: str,
  *,
  step: int | None = None,
  dtype=None,
  max_shard_bytes: int = 5 * 2**30,
) -> str:
  """Writes the latest (or given) step of an Orbax checkpoint as a HF directory, with the
  tokenizer, processor and chat-template files kept beside the checkpoint (those `convert`
  copied); returns `hf_dir`."""
  model = restore_model(orbax_dir, step=step)
  api.save_pretrained(model, hf_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)
  hub.copy_tokenizer_files(orbax_dir, hf_dir)
  return hf_dir
