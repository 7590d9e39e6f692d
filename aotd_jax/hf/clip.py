"""HF adapters for `CLIPModel` and `CLIPVisionModel`, and the tower name tables OWLv2 and LLaVA reuse."""

from __future__ import annotations

import dataclasses
from typing import Collection

from aotd_jax.hf.mapping import CONV2D, Rule, embed, linear, norm
from aotd_jax.hf.registry import Adapter
from aotd_jax.models import clip


def _join(prefix: str, name: str, sep: str) -> str:
  return f"{prefix}{sep}{name}" if prefix else name


def config_fields(cls, hf: dict, defaults: dict | None = None):
  """Builds a config dataclass from the HF fields it knows (unknown HF fields are ignored)."""
  names = {f.name for f in dataclasses.fields(cls)}
  kw = dict(defaults or {})
  kw.update({k: v for k, v in hf.items() if k in names})
  return cls(**kw)


def config_dict(config) -> dict:
  """A config dataclass as HF fields (its sub-configs left out)."""
  return {
    f.name: getattr(config, f.name)
    for f in dataclasses.fields(config)
    if not f.name.endswith("_config")
  }


def encoder_rules(num_layers: int, hf: str, fx: str) -> list[Rule]:
  """Rules for `CLIPEncoder` layers: HF prefix `hf` (e.g. 'vision_model.encoder'), ours `fx`."""
  rules = []
  for i in range(num_layers):
    h, f = f"{hf}.layers.{i}", f"{fx}/layers/{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      rules += linear(f"{h}.self_attn.{proj}", f"{f}/self_attn/{proj}")
    rules += linear(f"{h}.mlp.fc1", f"{f}/mlp/fc1") + linear(f"{h}.mlp.fc2", f"{f}/mlp/fc2")
    rules += norm(f"{h}.layer_norm1", f"{f}/layer_norm1") + norm(
      f"{h}.layer_norm2", f"{f}/layer_norm2"
    )
  return rules


def vision_tower_rules(
  config: clip.CLIPVisionConfig, hf: str, fx: str, pre_norm_name: str = "pre_layrnorm"
) -> list[Rule]:
  """Rules for a `CLIPVisionTransformer` at our path `fx` from HF prefix `hf` ('' for none).

  `pre_norm_name` is the HF name of the pre-encoder LayerNorm (`pre_layernorm` in OWLv2).
  """
  j = lambda name: _join(hf, name, ".")
  g = lambda name: _join(fx, name, "/")
  return [
    Rule(j("embeddings.class_embedding"), g("embeddings/class_embedding")),
    Rule(j("embeddings.patch_embedding.weight"), g("embeddings/patch_embedding/kernel"), CONV2D),
    *embed(j("embeddings.position_embedding"), g("embeddings/position_embedding")),
    *norm(j(pre_norm_name), g("pre_layrnorm")),
    *encoder_rules(config.num_hidden_layers, j("encoder"), g("encoder")),
    *norm(j("post_layernorm"), g("post_layernorm")),
  ]


def text_tower_rules(config: clip.CLIPTextConfig, hf: str, fx: str) -> list[Rule]:
  """Rules for a `CLIPTextTransformer` at our path `fx` from HF prefix `hf`."""
  j = lambda name: _join(hf, name, ".")
  g = lambda name: _join(fx, name, "/")
  return [
    *embed(j("embeddings.token_embedding"), g("embeddings/token_embedding")),
    *embed(j("embeddings.position_embedding"), g("embeddings/position_embedding")),
    *encoder_rules(config.num_hidden_layers, j("encoder"), g("encoder")),
    *norm(j("final_layer_norm"), g("final_layer_norm")),
  ]


# Buffers some checkpoints still carry.
IGNORE = (r"position_ids$",)


# ---------------------------------------------------------------- CLIPVisionModel


def _vision_from_hf(hf: dict) -> clip.CLIPVisionConfig:
  return config_fields(clip.CLIPVisionConfig, hf)


def _vision_to_hf(config: clip.CLIPVisionConfig) -> dict:
  return {
    **config_dict(config),
    "model_type": "clip_vision_model",
    "architectures": ["CLIPVisionModel"],
  }


def _vision_rules(config: clip.CLIPVisionConfig, hf_keys: Collection[str] | None) -> list[Rule]:
  # transformers < 5 wrote `vision_model.`-prefixed keys; 5.x writes them bare. Read both,
  # write the current layout.
  prefix = (
    "vision_model"
    if hf_keys is not None and any(k.startswith("vision_model.") for k in hf_keys)
    else ""
  )
  return vision_tower_rules(config, prefix, "vision_model")


VISION_ADAPTER = Adapter(
  architecture="CLIPVisionModel",
  model_class=clip.CLIPVisionModel,
  config_from_hf=_vision_from_hf,
  config_to_hf=_vision_to_hf,
  rules=_vision_rules,
  ignore=IGNORE,
)


# ---------------------------------------------------------------- CLIPModel


def _from_hf(hf: dict) -> clip.CLIPConfig:
  return clip.CLIPConfig(
    text_config=config_fields(clip.CLIPTextConfig, hf.get("text_config") or {}),
    vision_config=config_fields(clip.CLIPVisionConfig, hf.get("vision_config") or {}),
    **{
      k: hf[k]
      for k in ("projection_dim", "logit_scale_init_value", "initializer_factor")
      if k in hf
    },
  )


def _to_hf(config: clip.CLIPConfig) -> dict:
  return {
    **config_dict(config),
    "model_type": "clip",
    "architectures": ["CLIPModel"],
    "text_config": {**config_dict(config.text_config), "model_type": "clip_text_model"},
    "vision_config": {**config_dict(config.vision_config), "model_type": "clip_vision_model"},
  }


def _rules(config: clip.CLIPConfig, hf_keys: Collection[str] | None) -> list[Rule]:
  del hf_keys
  return [
    *text_tower_rules(config.text_config, "text_model", "text_model"),
    *vision_tower_rules(config.vision_config, "vision_model", "vision_model"),
    *linear("visual_projection", "visual_projection", bias=False),
    *linear("text_projection", "text_projection", bias=False),
    Rule("logit_scale", "logit_scale"),
  ]


ADAPTER = Adapter(
  architecture="CLIPModel",
  model_class=clip.CLIPModel,
  config_from_hf=_from_hf,
  config_to_hf=_to_hf,
  rules=_rules,
  ignore=IGNORE,
)
