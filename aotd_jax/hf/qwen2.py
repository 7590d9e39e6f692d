"""HF adapter for `Qwen2ForCausalLM`: config.json <-> `LlamaConfig(qkv_bias=True)`, Llama's name table.

Qwen2's checkpoints use Llama's tensor names (plus `self_attn.{q,k,v}_proj.bias`), so the table
is `aotd_jax.hf.llama.rules`. Sliding-window attention (`use_sliding_window=true`) is refused:
the released Qwen2 LMs (and LLaVA-OneVision's) run with full attention.
"""

from __future__ import annotations

import dataclasses

from aotd_jax.hf import llama as llama_hf
from aotd_jax.hf import registry
from aotd_jax.hf.io import CheckpointError
from aotd_jax.models.llama import LlamaConfig
from aotd_jax.models.qwen2 import QWEN2_DEFAULTS, Qwen2ForCausalLM

# Qwen2Config fields with no LlamaConfig counterpart that config.json always carries.
_QWEN2_ONLY = dict(use_sliding_window=False, sliding_window=None, max_window_layers=28)


def config_from_hf(hf: dict, where: str = "config.json") -> LlamaConfig:
  """`LlamaConfig(qkv_bias=True)` from a Qwen2 config.json (or a VLM's `text_config`)."""
  if hf.get("use_sliding_window"):
    raise CheckpointError(
      f"{where}: use_sliding_window=true (sliding-window attention) is not "
      "supported; only full-attention Qwen2 models load"
    )
  cfg = llama_hf.config_from_hf({**QWEN2_DEFAULTS, **hf})
  # Qwen2 configs may leave the special tokens unset (None), which Llama's defaults would fill.
  tokens = {k: hf.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
  return dataclasses.replace(cfg, qkv_bias=True, attention_bias=False, mlp_bias=False, **tokens)


def config_to_hf(cfg: LlamaConfig) -> dict:
  """config.json for transformers' `Qwen2Config` (4.x `rope_theta` and 5.x `rope_parameters`)."""
  out = llama_hf.config_to_hf(cfg)
  for name in ("attention_bias", "mlp_bias"):
    out.pop(name, None)
  out.update(
    _QWEN2_ONLY,
    model_type="qwen2",
    rope_theta=cfg.rope_theta,
    architectures=[Qwen2ForCausalLM.hf_architecture],
  )
  return out


def rules(cfg: LlamaConfig, hf_keys=None):
  return llama_hf.rules(cfg, hf_keys)


ADAPTER = registry.Adapter(
  architecture=Qwen2ForCausalLM.hf_architecture,
  model_class=Qwen2ForCausalLM,
  config_from_hf=config_from_hf,
  config_to_hf=config_to_hf,
  rules=rules,
  ignore=(r"rotary_emb\.inv_freq$",),
)
