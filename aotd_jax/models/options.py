"""Model options that `config.json` does not hold (precision, kernels, attention, remat), set on
a built model: every sub-module is rebuilt around the same weights."""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

# Options of a Video-LLM that also reach its language model's `text_config` / its vision tower's
# `vision_config`.
_TEXT_OPTIONS = ("attention_impl", "attention_block_size", "cpu_kernels", "matmul_precision")
_VISION_OPTIONS = ("cpu_kernels",)


def share_options(config, subs: tuple[str, ...] = ("vision_config", "text_config")) -> None:
  """In a Video-LLM config's `__post_init__`: its dtype / param_dtype / remat /
  matmul_precision reach the sub-configs `subs` (one choice for the whole model), and a tied
  model ties its language model's embeddings. Frozen dataclasses are updated in place."""
  want = dict(dtype=config.dtype, param_dtype=config.param_dtype, remat=config.remat,
              matmul_precision=config.matmul_precision)
  for name in subs:
    sub = getattr(config, name)
    if any(getattr(sub, k) != v for k, v in want.items()):
      object.__setattr__(config, name, dataclasses.replace(sub, **want))
  if config.tie_word_embeddings and not config.text_config.tie_word_embeddings:
    object.__setattr__(config, "text_config",
                       dataclasses.replace(config.text_config, tie_word_embeddings=True))


def apply_options(config, options: dict[str, Any]):
  """Sets dtype / param_dtype / remat / attention_impl / attention_block_size / cpu_kernels /
  matmul_precision / freeze_vision_tower where the config (or, for a Video-LLM, its language model's
  `text_config` or its vision tower's `vision_config`) has such a field."""
  fields = {f.name for f in dataclasses.fields(config)}
  updates = {k: v for k, v in options.items() if k in fields and v is not None}
  for sub, names in (("text_config", _TEXT_OPTIONS), ("vision_config", _VISION_OPTIONS)):
    given = {k: options.get(k) for k in names if options.get(k) is not None}
    if sub in fields and given:
      updates[sub] = apply_options(getattr(config, sub), given)
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
  (attention_impl, attention_block_size, cpu_kernels, matmul_precision) to its `text_config` and
  cpu_kernels to its `vision_config`."""
  return with_config(model, apply_options(model.config, options))
