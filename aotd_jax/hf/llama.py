"""HF adapter for `LlamaForCausalLM`: config.json <-> `LlamaConfig`, and the parameter-name table."""

from __future__ import annotations

import dataclasses
from typing import Collection

from aotd_jax.hf import registry
from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import Rule, embed, linear, norm
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

# Fields config.json spells differently (rope) or does not hold (qkv_bias: Qwen2's model type).
_SPECIAL = ("rope_theta", "rope_scaling", "qkv_bias")
_FIELDS = tuple(f.name for f in dataclasses.fields(LlamaConfig) if f.name not in _SPECIAL)


def config_from_hf(hf: dict) -> LlamaConfig:
  """`LlamaConfig` from a parsed config.json (transformers 4 `rope_scaling`/`rope_theta` or 5 `rope_parameters`)."""
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(
      f"config.json: hidden_act {hf['hidden_act']!r} is not supported (only 'silu')"
    )
  params = dict(hf.get("rope_parameters") or {})
  rope_theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
  scaling = params or dict(hf.get("rope_scaling") or {})
  if scaling.get("rope_type", scaling.get("type", "default")) == "default":
    scaling = None
  kwargs = {k: hf[k] for k in _FIELDS if k in hf and hf[k] is not None}
  try:
    return LlamaConfig(rope_theta=float(rope_theta), rope_scaling=scaling, **kwargs)
  except ValueError as e:
    raise CheckpointError(f"config.json: {e}") from e


def config_to_hf(cfg: LlamaConfig) -> dict:
  """config.json fields that transformers 5 (`rope_parameters`) and 4 (`rope_theta`/`rope_scaling`) read."""
  out = {k: getattr(cfg, k) for k in _FIELDS}
  if isinstance(out["eos_token_id"], tuple):
    out["eos_token_id"] = list(out["eos_token_id"])
  scaling = cfg.rope_scaling_dict
  out.update(
    model_type="llama",
    hidden_act="silu",
    rope_parameters={"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_theta},
  )
  out["architectures"] = [LlamaForCausalLM.hf_architecture]
  return out


def rules(cfg: LlamaConfig, hf_keys: Collection[str] | None = None) -> list[Rule]:
  """HF tensor name -> our param path for every weight (lm_head only when untied)."""
  out = embed("model.embed_tokens", "model/embed_tokens")
  out += norm("model.norm", "model/norm", bias=False)
  for i in range(cfg.num_hidden_layers):
    hf, fx = f"model.layers.{i}", f"model/layers/{i}"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
      bias = cfg.attention_bias or (cfg.qkv_bias and name != "o_proj")
      out += linear(f"{hf}.self_attn.{name}", f"{fx}/self_attn/{name}", bias=bias)
    for name in ("gate_proj", "up_proj", "down_proj"):
      out += linear(f"{hf}.mlp.{name}", f"{fx}/mlp/{name}", bias=cfg.mlp_bias)
    out += norm(f"{hf}.input_layernorm", f"{fx}/input_layernorm", bias=False)
    out += norm(f"{hf}.post_attention_layernorm", f"{fx}/post_attention_layernorm", bias=False)
  if not cfg.tie_word_embeddings:
    out += linear("lm_head", "lm_head", bias=False)
  return out


ADAPTER = registry.Adapter(
  architecture=LlamaForCausalLM.hf_architecture,
  model_class=LlamaForCausalLM,
  config_from_hf=config_from_hf,
  config_to_hf=config_to_hf,
  rules=rules,
  ignore=(r"rotary_emb\.inv_freq$",),
)
