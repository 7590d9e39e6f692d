"""Builds the trainer's inputs from a config: the student (HF directory or fresh init) and data."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from aotd_jax import hf, sharding as sharding_lib
from aotd_jax.hf import registry


def _apply_options(config, options: dict[str, Any]):
  """Sets dtype / param_dtype / remat / attention_impl where the config (or, for a Video-LLM,
  its language model's `text_config`) has such a field."""
  fields = {f.name for f in dataclasses.fields(config)}
  updates = {k: v for k, v in options.items() if k in fields and v is not None}
  if "text_config" in fields and options.get("attention_impl"):
    updates["text_config"] = _apply_options(config.text_config,
                                            {"attention_impl": options["attention_impl"]})
  return dataclasses.replace(config, **updates) if updates else config


def build_student(cfg, *, mesh: Mesh, seed: int = 0) -> nnx.Module:
  """The student: from `cfg.hf_dir` if set, else a fresh init of `cfg.architecture` with the
  HF-style config dict `cfg.init`, placed on `mesh` (initialised directly sharded)."""
  options = {"dtype": cfg.get("dtype"), "param_dtype": cfg.get("param_dtype"),
             "remat": cfg.get("remat"), "attention_impl": cfg.get("attention_impl")}
  if cfg.get("hf_dir"):
    model = hf.from_pretrained(cfg.hf_dir, dtype=jnp.dtype(cfg.get("param_dtype") or "float32"),
                               mesh=mesh)
    model.config = _apply_options(model.config, options)
    return model
  adapter = registry.adapter_for(cfg.architecture)
  config = _apply_options(adapter.config_from_hf(dict(cfg.init)), options)
  abstract = nnx.eval_shape(lambda: adapter.model_class(config, rngs=nnx.Rngs(seed)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding_lib.state_shardings(abstract_state, mesh)

  def init():
    return nnx.state(adapter.model_class(config, rngs=nnx.Rngs(seed)))

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def write_hf_config(model: nnx.Module, directory: str) -> None:
  """Writes `hf_config.json` beside the checkpoints, so `python -m aotd_jax.hf export` can
  rebuild the model without the training config."""
  adapter = registry.adapter_for(type(model).hf_architecture)
  hf_config = adapter.config_to_hf(model.config)
  hf_config.setdefault("architectures", [adapter.architecture])
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, "hf_config.json.tmp")
  with open(tmp, "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(directory, "hf_config.json"))
