"""HF adapter for `LlavaOnevisionForConditionalGeneration`: config.json <-> `LlavaOnevisionConfig`
and the parameter-name table, built from the Qwen2 (Llama) and SigLIP tables.

Reads every key layout transformers has written: the current one (`model.language_model.*`,
`model.vision_tower[.vision_model].*`, `model.multi_modal_projector.*`, `model.image_newline`,
`lm_head.weight`) and the older one the released checkpoints use (`language_model.model.*`,
`language_model.lm_head.weight`, `vision_tower[.vision_model].*`, `multi_modal_projector.*`,
`image_newline`). Export writes the released checkpoints' layout (see `llava_next_video._pick`).
"""

from __future__ import annotations

from typing import Collection

from aotd_jax.hf import llava_next_video as lnv_hf
from aotd_jax.hf import qwen2 as qwen2_hf
from aotd_jax.hf import registry
from aotd_jax.hf import siglip as siglip_hf
from aotd_jax.hf.clip import IGNORE
from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import Rule
from aotd_jax.models.llava_onevision import (
  LlavaOnevisionConfig,
  LlavaOnevisionForConditionalGeneration,
)

_TOP_FIELDS = (
  "image_token_index",
  "video_token_index",
  "projector_hidden_act",
  "vision_feature_select_strategy",
  "vision_feature_layer",
  "multimodal_projector_bias",
  "tie_word_embeddings",
  "image_grid_pinpoints",
  "vision_aspect_ratio",
)
# transformers' LlavaOnevisionConfig defaults for a vision_config that omits a field.
_VISION_DEFAULTS = dict(
  hidden_size=1152,
  intermediate_size=4304,
  patch_size=14,
  image_size=384,
  num_hidden_layers=26,
  num_attention_heads=16,
  vision_use_head=False,
)


def config_from_hf(hf: dict) -> LlavaOnevisionConfig:
  """`LlavaOnevisionConfig` from a parsed config.json (with its `text_config` / `vision_config`)."""
  vision = hf.get("vision_config") or {}
  if vision.get("model_type", "siglip_vision_model") != "siglip_vision_model":
    raise CheckpointError(
      f"config.json: vision_config.model_type {vision['model_type']!r} is not "
      "supported (only 'siglip_vision_model')"
    )
  text = hf.get("text_config") or {}
  if text.get("model_type", "qwen2") != "qwen2":
    raise CheckpointError(
      f"config.json: text_config.model_type {text['model_type']!r} is not supported (only 'qwen2')"
    )
  kwargs = lnv_hf.top_fields(hf, _TOP_FIELDS)
  vision_config = siglip_hf.config_from_hf(vision, "config.json: vision_config", _VISION_DEFAULTS)
  text_config = qwen2_hf.config_from_hf(text, "config.json: text_config")
  try:
    return LlavaOnevisionConfig(vision_config=vision_config, text_config=text_config, **kwargs)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"config.json: {e}") from e


def config_to_hf(cfg: LlavaOnevisionConfig) -> dict:
  """config.json for transformers' `LlavaOnevisionConfig`."""
  out = {k: getattr(cfg, k) for k in _TOP_FIELDS}
  layer = cfg.vision_feature_layer
  out["vision_feature_layer"] = layer if isinstance(layer, int) else list(layer)
  out["image_grid_pinpoints"] = [list(p) for p in cfg.image_grid_pinpoints]
  text = qwen2_hf.config_to_hf(cfg.text_config)
  text.pop("architectures", None)
  out.update(
    model_type="llava_onevision",
    text_config=text,
    vision_config=siglip_hf.config_to_hf(cfg.vision_config),
    architectures=[LlavaOnevisionForConditionalGeneration.hf_architecture],
  )
  return out


def rules(cfg: LlavaOnevisionConfig, hf_keys: Collection[str] | None = None) -> list[Rule]:
  """HF tensor name -> our param path, for the key layout found in `hf_keys` (current on export)."""
  out = siglip_hf.tower_rules(
    cfg.vision_config, lnv_hf.vision_prefix(hf_keys)[:-1], "vision_tower/vision_model"
  )
  return out + lnv_hf.projector_and_lm_rules(cfg, hf_keys)


ADAPTER = registry.Adapter(
  architecture=LlavaOnevisionForConditionalGeneration.hf_architecture,
  model_class=LlavaOnevisionForConditionalGeneration,
  config_from_hf=config_from_hf,
  config_to_hf=config_to_hf,
  rules=rules,
  ignore=IGNORE + (r"rotary_emb\.inv_freq$",),
)
