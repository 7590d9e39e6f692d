"""The fused attention paths of the Llama decoder agree with the reference einsum path."""

import numpy as np
import pytest
from flax import nnx

import aotd_jax  # noqa: F401
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

CFG = LlamaConfig(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
)


def _logits(impl, ids, mask):
  model = LlamaForCausalLM(CFG, options=ComputeOptions(attention_impl=impl), rngs=nnx.Rngs(0))
  return np.asarray(model(ids, mask).logits)


def test_dot_product_attention_matches_with_left_padding():
  ids = np.random.default_rng(0).integers(0, 64, (2, 9))
  mask = np.ones((2, 9), np.int32)
  mask[1, :3] = 0
  np.testing.assert_allclose(
    _logits("dot_product_attention", ids, mask), _logits("xla", ids, mask), atol=1e-5
  )


def test_causal_matches_on_right_padded_tokens():
  ids = np.random.default_rng(1).integers(0, 64, (2, 9))
  mask = np.ones((2, 9), np.int32)
  mask[1, 6:] = 0
  ref, out = _logits("xla", ids, mask), _logits("causal", ids, mask)
  np.testing.assert_allclose(out[0], ref[0], atol=1e-5)
  np.testing.assert_allclose(out[1, :6], ref[1, :6], atol=1e-5)  # real tokens of the padded row


def test_unknown_attention_impl_is_refused():
  with pytest.raises(ValueError, match="attention_impl"):
    ComputeOptions(attention_impl="flash3")


def test_auto_matches_xla_with_left_padding():
  ids = np.random.default_rng(2).integers(0, 64, (2, 9))
  mask = np.ones((2, 9), np.int32)
  mask[1, :2] = 0
  np.testing.assert_allclose(_logits("auto", ids, mask), _logits("xla", ids, mask), atol=1e-6)
