"""Qwen2 decoder LM: the Llama decoder (`aotd_jax.models.llama`) with biases on q/k/v only.

Qwen2's computation is Llama's (RMSNorm, RoPE (the 7B checkpoints set `rope_theta` 1e6), grouped-query
attention, SwiGLU) except for the q/k/v projection biases, so a Qwen2 is a `LlamaConfig` with
`qkv_bias=True`. `Qwen2ForCausalLM` only carries the HF architecture name for
`aotd_jax.hf.save_pretrained`; it is the LM of LLaVA-OneVision (and of Qwen2-VL's text half).
"""

from __future__ import annotations

from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

# transformers' `Qwen2Config` defaults where they differ from `LlamaConfig`'s.
QWEN2_DEFAULTS = dict(
  vocab_size=151936,
  hidden_size=4096,
  intermediate_size=22016,
  max_position_embeddings=32768,
  rope_theta=10000.0,
  rms_norm_eps=1e-6,
  bos_token_id=None,
  eos_token_id=None,
  pad_token_id=None,
)


def qwen2_config(**fields) -> LlamaConfig:
  """A `LlamaConfig` for a Qwen2 LM: transformers' Qwen2 defaults, q/k/v biases."""
  return LlamaConfig(**{**QWEN2_DEFAULTS, **fields, "qkv_bias": True})


class Qwen2ForCausalLM(LlamaForCausalLM):
  """transformers' `Qwen2ForCausalLM`: a `LlamaForCausalLM` whose config has `qkv_bias=True`."""

  hf_architecture = "Qwen2ForCausalLM"
