"""HF adapter for `LlavaNextVideoForConditionalGeneration`: config.json <-> `LlavaNextVideoConfig`
and the parameter-name table, built from the Llama and CLIP tables.

Reads every key layout transformers has written: the current one (`model.language_model.*`,
`model.vision_tower[.vision_model].*`, `model.multi_modal_projector.*`, `model.image_newline`,
`lm_head.weight`) and the older one (`language_model.model.*`, `language_model.lm_head.weight`,
`vision_tower[.vision_model].*`, `multi_modal_projector.*`, `image_newline`). Export writes the
current layout with the `vision_model` level, which transformers 4.4x-5.x all load.
"""
from __future__ import annotations

import dataclasses
from typing import Collection

from aotd_jax.hf import clip as clip_hf
from aotd_jax.hf import llama as llama_hf
from aotd_jax.hf import registry
from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import CONV2D, Rule, linear
from aotd_jax.models.clip import CLIPVisionConfig
from aotd_jax.models.llava_next_video import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

_TOP_FIELDS = ("image_token_index", "video_token_index", "projector_hidden_act",
               "vision_feature_select_strategy", "vision_feature_layer", "multimodal_projector_bias",
               "tie_word_embeddings", "image_grid_pinpoints", "spatial_pool_mode", "spatial_pool_stride",
               "spatial_pool_out_channels", "image_seq_length", "video_seq_length")
# transformers' LlavaNextVideoConfig defaults for a config.json that omits a sub-config field.
_VISION_DEFAULTS = dict(intermediate_size=4096, hidden_size=1024, patch_size=14, image_size=336,
                        num_hidden_layers=24, num_attention_heads=16, projection_dim=768)


def config_from_hf(hf: dict) -> LlavaNextVideoConfig:
  """`LlavaNextVideoConfig` from a parsed config.json (with its `text_config` / `vision_config`)."""
  vision = hf.get("vision_config") or {}
  if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
    raise CheckpointError(f"config.json: vision_config.model_type {vision['model_type']!r} is not "
                          "supported (only 'clip_vision_model')")
  text = hf.get("text_config") or {}
  if text.get("model_type", "llama") != "llama":
    raise CheckpointError(f"config.json: text_config.model_type {text['model_type']!r} is not "
                          "supported (only 'llama')")
  kwargs = {k: hf[k] for k in _TOP_FIELDS if hf.get(k) is not None}
  # Older configs name the placeholders *_token_id (attribute_map in transformers).
  for old, new in (("image_token_id", "image_token_index"), ("video_token_id", "video_token_index")):
    if new not in kwargs and hf.get(old) is not None:
      kwargs[new] = hf[old]
  try:
    return LlavaNextVideoConfig(
        vision_config=clip_hf.config_fields(CLIPVisionConfig, vision, _VISION_DEFAULTS),
        text_config=llama_hf.config_from_hf(text), **kwargs)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"config.json: {e}") from e


def config_to_hf(cfg: LlavaNextVideoConfig) -> dict:
  """config.json for transformers' `LlavaNextVideoConfig`."""
  out = {k: getattr(cfg, k) for k in _TOP_FIELDS if getattr(cfg, k) is not None}
  layer = cfg.vision_feature_layer
  out["vision_feature_layer"] = layer if isinstance(layer, int) else list(layer)
  out["image_grid_pinpoints"] = [list(p) for p in cfg.image_grid_pinpoints]
  text = llama_hf.config_to_hf(cfg.text_config)
  text.pop("architectures", None)
  vision = {**clip_hf.config_dict(cfg.vision_config), "model_type": "clip_vision_model"}
  out.update(model_type="llava_next_video", text_config=text, vision_config=vision,
             dtype=cfg.param_dtype,
             architectures=[LlavaNextVideoForConditionalGeneration.hf_architecture])
  return out


def _vision_prefix(root: str, hf_keys: Collection[str] | None) -> str:
  """`<root>vision_tower.vision_model` (transformers 4 / export) or `<root>vision_tower` (5.x)."""
  nested = f"{root}vision_tower.vision_model"
  if hf_keys is None or any(k.startswith(nested + ".") for k in hf_keys):
    return nested
  return f"{root}vision_tower"


def rules(cfg: LlavaNextVideoConfig, hf_keys: Collection[str] | None = None) -> list[Rule]:
  """HF tensor name -> our param path, for the key layout found in `hf_keys` (current on export)."""
  current = hf_keys is None or any(k.startswith("model.") for k in hf_keys)
  root = "model." if current else ""
  out = clip_hf.vision_tower_rules(cfg.vision_config, _vision_prefix(root, hf_keys),
                                   "vision_tower/vision_model")
  out += linear(f"{root}multi_modal_projector.linear_1", "multi_modal_projector/linear_1",
                bias=cfg.multimodal_projector_bias)
  out += linear(f"{root}multi_modal_projector.linear_2", "multi_modal_projector/linear_2",
                bias=cfg.multimodal_projector_bias)
  out.append(Rule(f"{root}image_newline", "image_newline"))
  if cfg.spatial_pool_mode == "conv":
    out += [Rule(f"{root}vision_resampler.pool.weight", "vision_resampler/pool/kernel", CONV2D),
            Rule(f"{root}vision_resampler.pool.bias", "vision_resampler/pool/bias")]
  lm_prefix = "model.language_model." if current else "language_model.model."
  for rule in llama_hf.rules(cfg.text_config):
    if rule.hf.startswith("lm_head"):
      hf = rule.hf if current else f"language_model.{rule.hf}"
    else:
      hf = lm_prefix + rule.hf[len("model."):]
    out.append(dataclasses.replace(rule, hf=hf, flax=f"language_model/{rule.flax}"))
  return out


ADAPTER = registry.Adapter(
    architecture=LlavaNextVideoForConditionalGeneration.hf_architecture,
    model_class=LlavaNextVideoForConditionalGeneration,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    ignore=clip_hf.IGNORE + (r"rotary_emb\.inv_freq$",),
)
