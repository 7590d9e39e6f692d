"""Model options that `config.json` does not hold (precision, kernels, attention, remat), set on
a built model: every sub-module is rebuilt around the same weights."""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

# Language-model options of a Video-LLM: they also reach its `text_config`.
_TEXT_OPTIONS = ("attention_impl", "attention_block_size", "cpu_kernels", "matmul_precision")


def apply_options(config, options: dict[str, Any]):
  """Sets dtype / param_dtype / remat / attention_impl / attention_block_size / cpu_kernels /
  matmul_precision / freeze_vision_tower where the config (or, for a Video-LLM, its language model's
  `text_config`) has such a field."""
  fields = {f.name for f in dataclasses.fields(config)}
  updates = {k: v for k, v in options.items() if k in fields and v is not None}
  text = {k: options.get(k) for k in _TEXT_OPTIONS if options.get(k) is not None}
  if "text_config" in fields and text:
    updates["text_config"] = apply_options(config.text_config, text)
  return dataclasses.replace(config, **updates) if updates else config


def with_config(model: nnx.Module, config) -> nnx.Module:
  """`model`'s weights under another config of the same shapes: every sub-module is rebuilt,
  since each keeps the config it was built with (assigning `model.config` alone reaches none)."""
  if config == model.config:
    return model
  abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
  return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


def with_options(model: nnx.Module, **options) -> nnx.Module:
  """`model` (same weights) with model options that config.json does not hold, e.g.
  `with_options(model, matmul_precision="high")`; a Video-LLM passes the language-model ones
  (attention_impl, attention_block_size, cpu_kernels, matmul_precision) to its `text_config`."""
  return with_config(model, apply_options(model.config, options))
