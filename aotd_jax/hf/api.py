"""`from_pretrained` / `save_pretrained` between HF directories and our Flax NNX models."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from flax import nnx

from aotd_jax import sharding as sharding_lib
from aotd_jax.data import files
from aotd_jax.hf import io, registry
from aotd_jax.hf.mapping import export_params, import_params
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.abstract import abstract_model


def dtype_options(dtype) -> ComputeOptions:
  """Default `ComputeOptions` with parameters and computation in `dtype`."""
  name = jnp.dtype(dtype).name
  return ComputeOptions(dtype=name, param_dtype=name)


def build_abstract(adapter: registry.Adapter, config, options: ComputeOptions) -> nnx.Module:
  """The model's structure with shapes only: no memory, no random init."""
  return abstract_model(lambda rngs: adapter.model_class(config, options=options, rngs=rngs))


def from_pretrained(
  path: str,
  *,
  dtype=jnp.float32,
  options: ComputeOptions | None = None,
  mesh: jax.sharding.Mesh | None = None,
  rules=None,
) -> nnx.Module:
  """Builds the Flax model of a HF directory (`config.json` + safetensors, sharded too).

  Args:
    path: a Hugging Face model directory (as written by transformers' `save_pretrained`).
    dtype: the parameter dtype (and compute dtype) to load into, when `options` is not given.
    options: how the model computes; its `param_dtype` is the dtype the weights load into.
    mesh: if given, every parameter is placed with the sharding the logical-axis rules say.
    rules: logical-axis rules (defaults to `aotd_jax.sharding.DEFAULT_RULES`).
  """
  options = dtype_options(dtype) if options is None else options
  dtype = jnp.dtype(options.param_dtype)
  hf_config = io.read_config(path)
  arch = registry.architecture_of(hf_config, path)
  adapter = registry.adapter_for(arch)
  config = adapter.config_from_hf(hf_config)
  model = build_abstract(adapter, config, options)
  tensors, origin = io.read_tensors(path)
  shardings = None
  if mesh is not None:
    shardings = sharding_lib.param_shardings_by_path(model, mesh, rules)
  return import_params(
    model,
    adapter.rules(config, set(tensors)),
    tensors,
    origin,
    source=path,
    dtype=dtype,
    ignore=adapter.ignore,
    shardings=shardings,
  )


def adapter_of_model(model: nnx.Module) -> registry.Adapter:
  arch = getattr(type(model), "hf_architecture", None)
  if arch is None:
    raise io.CheckpointError(f"{type(model).__name__} has no Hugging Face architecture")
  return registry.adapter_for(arch)


def hf_config_of(model: nnx.Module) -> dict:
  """The config.json of `model`: its config's HF fields, `architectures`, and `dtype` (the
  parameter dtype of its `ComputeOptions`, at the top level and in a nested `text_config`)."""
  adapter = adapter_of_model(model)
  hf_config = adapter.config_to_hf(model.config)
  hf_config.setdefault("architectures", [adapter.architecture])
  hf_config["dtype"] = model.options.param_dtype
  if isinstance(hf_config.get("text_config"), dict):
    hf_config["text_config"]["dtype"] = model.options.param_dtype
  return hf_config


def save_pretrained(
  model: nnx.Module, path: str, *, dtype=None, max_shard_bytes: int = 5 * 2**30
) -> None:
  """Writes `config.json` + safetensors that transformers' `from_pretrained` loads."""
  adapter = adapter_of_model(model)
  tensors = export_params(model, adapter.rules(model.config, None), dtype=dtype)
  files.makedirs(path)
  hf_config = hf_config_of(model)
  text = hf_config.get("text_config")
  if isinstance(text, dict):  # readers that look for rope_theta at the top level
    theta = text.get("rope_theta", (text.get("rope_parameters") or {}).get("rope_theta"))
    if theta is not None:
      hf_config.setdefault("rope_theta", theta)
  io.write_config(hf_config, path)
  from aotd_jax.hf import hub

  files.write_text(
    files.join(path, "generation_config.json"),
    json.dumps(hub.generation_config(hf_config), indent=2, sort_keys=True),
  )
  io.write_tensors(tensors, path, max_shard_bytes=max_shard_bytes)


def load_tokenizer(path: str):
  """The tokenizer saved beside the weights, via transformers' AutoTokenizer (no network)."""
  from transformers import AutoTokenizer  # optional dependency: only needed for text

  return AutoTokenizer.from_pretrained(path, local_files_only=True)
