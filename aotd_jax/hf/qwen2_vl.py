"""HF adapter for `Qwen2VLForConditionalGeneration`: config.json <-> `Qwen2VLConfig` and the
parameter-name table (the vision tower's, and the Qwen2 (Llama) table for the language model).

Reads both key layouts transformers has written: the current one (`model.visual.*`,
`model.language_model.{embed_tokens,layers,norm}.*`, `lm_head.weight`) and the older one the
released checkpoints (Qwen/Qwen2-VL-*-Instruct) use (`visual.*`, `model.{embed_tokens,layers,
norm}.*`, `lm_head.weight`). Export writes the current layout.
"""

from __future__ import annotations

import dataclasses
from typing import Collection

from aotd_jax.hf import llama as llama_hf
from aotd_jax.hf import qwen2 as qwen2_hf
from aotd_jax.hf import registry
from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import Rule, Transform, linear, norm
from aotd_jax.models.qwen2_vl import (
  QWEN2_VL_TEXT_DEFAULTS,
  Qwen2VLConfig,
  Qwen2VLForConditionalGeneration,
  Qwen2VLTextConfig,
  Qwen2VLVisionConfig,
)


def _patch_transform(cfg: Qwen2VLVisionConfig) -> Transform:
  """torch Conv3d weight (embed, C, T, P, P) <-> our (C*T*P*P, embed) matmul kernel."""
  shape = (cfg.embed_dim, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
  return Transform(
    "conv3d_as_matmul", lambda x: x.reshape(shape[0], -1).T, lambda x: x.T.reshape(shape)
  )


def vision_rules(cfg: Qwen2VLVisionConfig, hf: str, fx: str) -> list[Rule]:
  """The vision tower's table: HF names under `hf` (e.g. "model.visual") -> ours under `fx`."""
  out = [
    Rule(f"{hf}.patch_embed.proj.weight", f"{fx}/patch_embed/proj/kernel", _patch_transform(cfg))
  ]
  for i in range(cfg.depth):
    h, f = f"{hf}.blocks.{i}", f"{fx}/blocks/{i}"
    out += norm(f"{h}.norm1", f"{f}/norm1") + norm(f"{h}.norm2", f"{f}/norm2")
    out += linear(f"{h}.attn.qkv", f"{f}/attn/qkv") + linear(f"{h}.attn.proj", f"{f}/attn/proj")
    out += linear(f"{h}.mlp.fc1", f"{f}/mlp/fc1") + linear(f"{h}.mlp.fc2", f"{f}/mlp/fc2")
  out += norm(f"{hf}.merger.ln_q", f"{fx}/merger/ln_q")
  out += linear(f"{hf}.merger.mlp.0", f"{fx}/merger/mlp/0") + linear(
    f"{hf}.merger.mlp.2", f"{fx}/merger/mlp/1"
  )
  return out


_VISION_FIELDS = (
  "depth",
  "embed_dim",
  "hidden_size",
  "hidden_act",
  "mlp_ratio",
  "num_heads",
  "in_channels",
  "patch_size",
  "spatial_merge_size",
  "temporal_patch_size",
  "initializer_range",
  "image_size",
)  # image_size: ours (the pipeline's frame size)
_TOP_FIELDS = (
  "image_token_id",
  "video_token_id",
  "vision_start_token_id",
  "vision_end_token_id",
  "tie_word_embeddings",
)
# Text fields a released (transformers 4.x) config.json holds at its top level.
_ROPE_KEYS = ("rope_scaling", "rope_parameters", "rope_theta")


def _rope(d: dict, default_theta: float) -> tuple[float, dict]:
  """(rope_theta, the rest of rope_parameters / rope_scaling) of a config dict."""
  params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
  theta = params.pop("rope_theta", d.get("rope_theta", default_theta))
  return float(theta), params


def vision_config_from_hf(
  vision: dict, where: str = "config.json: vision_config"
) -> Qwen2VLVisionConfig:
  vision = dict(vision)
  if "in_chans" in vision and "in_channels" not in vision:  # the released checkpoints' name
    vision["in_channels"] = vision["in_chans"]
  theta, params = _rope(vision, 10000.0)
  if params.get("rope_type", "axial") != "axial":
    raise CheckpointError(
      f"{where}: rope_type {params['rope_type']!r} is not supported (only 'axial')"
    )
  kwargs = {k: vision[k] for k in _VISION_FIELDS if vision.get(k) is not None}
  for k in ("patch_size", "temporal_patch_size"):
    if isinstance(kwargs.get(k), (list, tuple)):
      if len(set(kwargs[k])) != 1:
        raise CheckpointError(f"{where}: non-square {k} {kwargs[k]} is not supported")
      kwargs[k] = kwargs[k][0]
  try:
    return Qwen2VLVisionConfig(rope_theta=theta, **kwargs)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{where}: {e}") from e


def text_config_from_hf(text: dict, where: str = "config.json: text_config") -> Qwen2VLTextConfig:
  theta, params = _rope(text, QWEN2_VL_TEXT_DEFAULTS["rope_theta"])
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ("default", "mrope"):
    raise CheckpointError(
      f"{where}: rope_type {kind!r} is not supported with M-RoPE (only 'default')"
    )
  plain = {k: v for k, v in text.items() if k not in _ROPE_KEYS}
  fields = {
    **QWEN2_VL_TEXT_DEFAULTS,
    **{
      k: v
      for k, v in plain.items()
      if v is not None or k in ("bos_token_id", "eos_token_id", "pad_token_id")
    },
  }
  base = qwen2_hf.config_from_hf({**fields, "rope_theta": theta}, where)
  try:
    return Qwen2VLTextConfig(
      **{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
      mrope_section=tuple(params.get("mrope_section", (16, 24, 24))),
    )
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{where}: {e}") from e


def config_from_hf(hf: dict) -> Qwen2VLConfig:
  """`Qwen2VLConfig` from a config.json: transformers 5's (`text_config`, `rope_parameters`) or
  the released checkpoints' (text fields and `rope_scaling` at the top level)."""
  if hf.get("model_type", "qwen2_vl") != "qwen2_vl":
    raise CheckpointError(f"config.json: model_type {hf['model_type']!r} is not 'qwen2_vl'")
  text = hf.get("text_config")
  if not text:
    text = {
      k: v for k, v in hf.items() if k not in ("vision_config", "architectures", "model_type")
    }
  vision = vision_config_from_hf(hf.get("vision_config") or {})
  text_config = text_config_from_hf(text)
  kwargs = {k: hf[k] for k in _TOP_FIELDS if hf.get(k) is not None}
  try:
    return Qwen2VLConfig(vision_config=vision, text_config=text_config, **kwargs)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"config.json: {e}") from e


def config_to_hf(cfg: Qwen2VLConfig) -> dict:
  """config.json in the released checkpoints' layout (text fields, `rope_theta` and an "mrope"
  `rope_scaling` at the top level), which transformers 4.45+ and 5 both read (4.x has no
  `text_config`)."""
  vc = cfg.vision_config
  vision = {k: getattr(vc, k) for k in _VISION_FIELDS}
  vision.update(
    model_type="qwen2_vl", rope_parameters={"rope_type": "axial", "rope_theta": vc.rope_theta}
  )
  text = qwen2_hf.config_to_hf(cfg.text_config)
  for k in (
    "architectures",
    "model_type",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "rope_parameters",
    "rope_scaling",
  ):
    text.pop(k, None)
  out = {**text, **{k: getattr(cfg, k) for k in _TOP_FIELDS}}
  out.update(
    model_type="qwen2_vl",
    vision_config=vision,
    use_sliding_window=False,
    rope_theta=cfg.text_config.rope_theta,
    rope_scaling={"type": "mrope", "mrope_section": list(cfg.text_config.mrope_section)},
    architectures=[Qwen2VLForConditionalGeneration.hf_architecture],
  )
  return out


def rules(cfg: Qwen2VLConfig, hf_keys: Collection[str] | None = None) -> list[Rule]:
  """HF tensor name -> our param path, for the key layout of `hf_keys`; on export (None) the
  released checkpoints' (`visual.*`, `model.*`, `lm_head.*`), which transformers 5 also writes
  and 4.45+ reads."""
  old = hf_keys is None or any(k.startswith("visual.") for k in hf_keys)
  out = vision_rules(cfg.vision_config, "visual" if old else "model.visual", "visual")
  lm_prefix = "model." if old else "model.language_model."
  for rule in llama_hf.rules(cfg.text_config):
    name = rule.hf if rule.hf.startswith("lm_head") else lm_prefix + rule.hf[len("model.") :]
    out.append(dataclasses.replace(rule, hf=name, flax=f"language_model/{rule.flax}"))
  return out


ADAPTER = registry.Adapter(
  architecture=Qwen2VLForConditionalGeneration.hf_architecture,
  model_class=Qwen2VLForConditionalGeneration,
  config_from_hf=config_from_hf,
  config_to_hf=config_to_hf,
  rules=rules,
  ignore=(r"rotary_emb\.inv_freq$", r"rotary_pos_emb\.inv_freq$"),
)
