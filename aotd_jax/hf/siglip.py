"""HF adapter for `SiglipVisionModel` (without the pooling head), and its name table for LLaVA-OneVision.

transformers 4.x writes the tower's keys under `vision_model.`; 5.x writes them bare. Both are
read; export writes the bare (5.x) layout.
"""

from __future__ import annotations

from typing import Collection

from aotd_jax.hf import clip as clip_hf
from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import CONV2D, Rule, embed, norm
from aotd_jax.hf.registry import Adapter
from aotd_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel

# transformers' SiglipVisionConfig defaults (its `vision_use_head` default is True: a config.json
# that omits it has a head, which is refused).
HF_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  num_channels=3,
  image_size=224,
  patch_size=16,
  hidden_act="gelu_pytorch_tanh",
  layer_norm_eps=1e-6,
  attention_dropout=0.0,
  vision_use_head=True,
)


def config_from_hf(
  hf: dict, where: str = "config.json", defaults: dict | None = None
) -> SiglipVisionConfig:
  """`SiglipVisionConfig` from a SigLIP vision config dict (`defaults` fill omitted fields)."""
  try:
    return clip_hf.config_fields(SiglipVisionConfig, hf, {**HF_DEFAULTS, **(defaults or {})})
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{where}: {e}") from e


def config_to_hf(config: SiglipVisionConfig) -> dict:
  out = clip_hf.config_dict(config)
  out.pop("initializer_range", None)
  return {**out, "model_type": "siglip_vision_model"}


def tower_rules(config: SiglipVisionConfig, hf: str, fx: str) -> list[Rule]:
  """Rules for a `SiglipVisionTransformer` at our path `fx` from HF prefix `hf` ('' for none)."""
  j = lambda name: f"{hf}.{name}" if hf else name
  g = lambda name: f"{fx}/{name}"
  return [
    Rule(j("embeddings.patch_embedding.weight"), g("embeddings/patch_embedding/kernel"), CONV2D),
    Rule(j("embeddings.patch_embedding.bias"), g("embeddings/patch_embedding/bias")),
    *embed(j("embeddings.position_embedding"), g("embeddings/position_embedding")),
    *clip_hf.encoder_rules(config.num_hidden_layers, j("encoder"), g("encoder")),
    *norm(j("post_layernorm"), g("post_layernorm")),
  ]


def _rules(config: SiglipVisionConfig, hf_keys: Collection[str] | None) -> list[Rule]:
  prefix = (
    "vision_model"
    if hf_keys is not None and any(k.startswith("vision_model.") for k in hf_keys)
    else ""
  )
  return tower_rules(config, prefix, "vision_model")


VISION_ADAPTER = Adapter(
  architecture=SiglipVisionModel.hf_architecture,
  model_class=SiglipVisionModel,
  config_from_hf=config_from_hf,
  config_to_hf=lambda c: {**config_to_hf(c), "architectures": [SiglipVisionModel.hf_architecture]},
  rules=_rules,
  ignore=clip_hf.IGNORE,
)
