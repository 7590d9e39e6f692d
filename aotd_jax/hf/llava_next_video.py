"""HF adapter for `LlavaNextVideoForConditionalGeneration`: config.json <-> `LlavaNextVideoConfig`
and the parameter-name table, built from the Llama and CLIP tables.

Reads every key layout transformers has written: the current one (`model.language_model.*`,
`model.vision_tower[.vision_model].*`, `model.multi_modal_projector.*`, `model.image_newline`,
`lm_head.weight`) and the older one (`language_model.model.*`, `language_model.lm_head.weight`,
`vision_tower[.vision_model].*`, `multi_modal_projector.*`, `image_newline`). Export writes the
older layout with the `vision_model` level (the released checkpoints'), which transformers 4.45
and 5 both load (`_pick`).
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
from aotd_jax.models.llava_next_video import (
  LlavaNextVideoConfig,
  LlavaNextVideoForConditionalGeneration,
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
  "spatial_pool_mode",
  "spatial_pool_stride",
  "spatial_pool_out_channels",
  "image_seq_length",
  "video_seq_length",
)
# transformers' LlavaNextVideoConfig defaults for a config.json that omits a sub-config field.
_VISION_DEFAULTS = dict(
  intermediate_size=4096,
  hidden_size=1024,
  patch_size=14,
  image_size=336,
  num_hidden_layers=24,
  num_attention_heads=16,
  projection_dim=768,
)


def config_from_hf(hf: dict) -> LlavaNextVideoConfig:
  """`LlavaNextVideoConfig` from a parsed config.json (with its `text_config` / `vision_config`)."""
  vision = hf.get("vision_config") or {}
  if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
    raise CheckpointError(
      f"config.json: vision_config.model_type {vision['model_type']!r} is not "
      "supported (only 'clip_vision_model')"
    )
  text = hf.get("text_config") or {}
  if text.get("model_type", "llama") != "llama":
    raise CheckpointError(
      f"config.json: text_config.model_type {text['model_type']!r} is not supported (only 'llama')"
    )
  kwargs = top_fields(hf, _TOP_FIELDS)
  try:
    return LlavaNextVideoConfig(
      vision_config=clip_hf.config_fields(CLIPVisionConfig, vision, _VISION_DEFAULTS),
      text_config=llama_hf.config_from_hf(text),
      **kwargs,
    )
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
  out.update(
    model_type="llava_next_video",
    text_config=text,
    vision_config=vision,
    architectures=[LlavaNextVideoForConditionalGeneration.hf_architecture],
  )
  return out


def _pick(hf_keys: Collection[str] | None, candidates: tuple[str, ...], export: str) -> str:
  """The first candidate prefix some key starts with; `export` when writing (`hf_keys` None).

  Exports use the released checkpoints' layout (`language_model.model.*`, `language_model.lm_head.*`,
  `vision_tower.vision_model.*`, `multi_modal_projector.*`), which transformers 4.45+ and 5 both
  load; only `vision_resampler` (the conv pooling) keeps transformers 5's `model.` prefix, for
  which it has no rename rule.
  """
  if hf_keys is not None:
    for prefix in candidates:
      if any(k.startswith(prefix) for k in hf_keys):
        return prefix
  return export


def rules(cfg: LlavaNextVideoConfig, hf_keys: Collection[str] | None = None) -> list[Rule]:
  """HF tensor name -> our param path, for the key layout found in `hf_keys` (on export: the
  layout transformers writes, see `_pick`).

  Each part is looked up on its own: transformers 5 writes most parts in the older layout but
  keys it has no rename rule for (`model.vision_resampler.*`) in the current one.
  """
  out = clip_hf.vision_tower_rules(
    cfg.vision_config, vision_prefix(hf_keys)[:-1], "vision_tower/vision_model"
  )
  if cfg.spatial_pool_mode == "conv":
    pool = _pick(
      hf_keys, ("model.vision_resampler.", "vision_resampler."), "model.vision_resampler."
    )
    out += [
      Rule(pool + "pool.weight", "vision_resampler/pool/kernel", CONV2D),
      Rule(pool + "pool.bias", "vision_resampler/pool/bias"),
    ]
  return out + projector_and_lm_rules(cfg, hf_keys)


def vision_prefix(hf_keys: Collection[str] | None) -> str:
  """The vision tower's HF prefix in `hf_keys` (with or without `model.` / `vision_model.`)."""
  return _pick(
    hf_keys,
    (
      "model.vision_tower.vision_model.",
      "model.vision_tower.",
      "vision_tower.vision_model.",
      "vision_tower.",
    ),
    "vision_tower.vision_model.",
  )


def projector_and_lm_rules(cfg, hf_keys: Collection[str] | None) -> list[Rule]:
  """The projector, `image_newline` and language-model rules of a LLaVA-family checkpoint
  (LLaVA-NeXT-Video, LLaVA-OneVision), each part in the layout found in `hf_keys`."""
  proj = _pick(
    hf_keys, ("model.multi_modal_projector.", "multi_modal_projector."), "multi_modal_projector."
  )
  out = []
  for name in ("linear_1", "linear_2"):
    out += linear(proj + name, f"multi_modal_projector/{name}", bias=cfg.multimodal_projector_bias)
  out.append(
    Rule(_pick(hf_keys, ("model.image_newline", "image_newline"), "image_newline"), "image_newline")
  )
  lm = _pick(hf_keys, ("model.language_model.", "language_model.model."), "language_model.model.")
  head = _pick(hf_keys, ("lm_head.", "language_model.lm_head."), "language_model.lm_head.")
  for rule in llama_hf.rules(cfg.text_config):
    hf = (
      head + rule.hf[len("lm_head.") :]
      if rule.hf.startswith("lm_head.")
      else lm + rule.hf[len("model.") :]
    )
    out.append(dataclasses.replace(rule, hf=hf, flax=f"language_model/{rule.flax}"))
  return out


def top_fields(hf: dict, names) -> dict:
  """The top-level config.json fields `names` that are set, with the older `image_token_id` /
  `video_token_id` names read as `*_token_index` (transformers' attribute_map)."""
  kwargs = {k: hf[k] for k in names if hf.get(k) is not None}
  for old, new in (
    ("image_token_id", "image_token_index"),
    ("video_token_id", "video_token_index"),
  ):
    if new not in kwargs and hf.get(old) is not None:
      kwargs[new] = hf[old]
  return kwargs


ADAPTER = registry.Adapter(
  architecture=LlavaNextVideoForConditionalGeneration.hf_architecture,
  model_class=LlavaNextVideoForConditionalGeneration,
  config_from_hf=config_from_hf,
  config_to_hf=config_to_hf,
  rules=rules,
  ignore=clip_hf.IGNORE + (r"rotary_emb\.inv_freq$",),
)
