"""HF adapter for `Owlv2ForObjectDetection`."""

from __future__ import annotations

from typing import Collection

from aotd_jax.hf.clip import (
  IGNORE,
  config_dict,
  config_fields,
  text_tower_rules,
  vision_tower_rules,
)
from aotd_jax.hf.mapping import Rule, linear, norm
from aotd_jax.hf.registry import Adapter
from aotd_jax.models import owlv2
from aotd_jax.models.clip import CLIPTextConfig, CLIPVisionConfig


def _from_hf(hf: dict) -> owlv2.Owlv2Config:
  return owlv2.Owlv2Config(
    text_config=config_fields(CLIPTextConfig, hf.get("text_config") or {}, owlv2.OWL_TEXT_DEFAULTS),
    vision_config=config_fields(
      CLIPVisionConfig, hf.get("vision_config") or {}, owlv2.OWL_VISION_DEFAULTS
    ),
    **{
      k: hf[k]
      for k in ("projection_dim", "logit_scale_init_value", "initializer_factor")
      if k in hf
    },
  )


def _sub(config, model_type: str) -> dict:
  d = config_dict(config)
  d.pop("projection_dim", None)  # not an OWLv2 tower field
  return {**d, "model_type": model_type}


def _to_hf(config: owlv2.Owlv2Config) -> dict:
  return {
    **config_dict(config),
    "model_type": "owlv2",
    "architectures": ["Owlv2ForObjectDetection"],
    "text_config": _sub(config.text_config, "owlv2_text_model"),
    "vision_config": _sub(config.vision_config, "owlv2_vision_model"),
  }


def _head(hf: str, fx: str) -> list[Rule]:
  return [r for i in range(3) for r in linear(f"{hf}.dense{i}", f"{fx}/dense{i}")]


def _rules(config: owlv2.Owlv2Config, hf_keys: Collection[str] | None) -> list[Rule]:
  del hf_keys
  return [
    *text_tower_rules(config.text_config, "owlv2.text_model", "owlv2/text_model"),
    *vision_tower_rules(
      config.vision_config,
      "owlv2.vision_model",
      "owlv2/vision_model",
      pre_norm_name="pre_layernorm",
    ),
    *linear("owlv2.visual_projection", "owlv2/visual_projection", bias=False),
    *linear("owlv2.text_projection", "owlv2/text_projection", bias=False),
    Rule("owlv2.logit_scale", "owlv2/logit_scale"),
    *linear("class_head.dense0", "class_head/dense0"),
    *linear("class_head.logit_shift", "class_head/logit_shift"),
    *linear("class_head.logit_scale", "class_head/logit_scale"),
    *_head("box_head", "box_head"),
    *_head("objectness_head", "objectness_head"),
    *norm("layer_norm", "layer_norm"),
  ]


ADAPTER = Adapter(
  architecture="Owlv2ForObjectDetection",
  model_class=owlv2.Owlv2ForObjectDetection,
  config_from_hf=_from_hf,
  config_to_hf=_to_hf,
  rules=_rules,
  ignore=IGNORE + (r"^box_bias$",),
)
