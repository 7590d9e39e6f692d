"""Llama decoder parity against transformers' `LlamaForCausalLM` on random tiny weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import aotd_jax  # noqa: F401  (turns off eager sharding)
from aotd_jax import hf
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.kernels import attention as attention_kernel
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
from aotd_jax.models.options import with_options

BASE = dict(
  vocab_size=96,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  initializer_range=0.2,
  bos_token_id=1,
  eos_token_id=2,
  pad_token_id=0,
)

CONFIGS = {
  "gqa": {},
  "tied_mha": dict(tie_word_embeddings=True, num_key_value_heads=4),
  "llama3": dict(
    rope_scaling=dict(
      rope_type="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=8,
    )
  ),
  "linear": dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
  # seq 24 > max_position_embeddings 16: the NTK base actually grows.
  "dynamic": dict(max_position_embeddings=16, rope_scaling=dict(rope_type="dynamic", factor=2.0)),
  "bias_headdim": dict(
    attention_bias=True, mlp_bias=True, head_dim=16, num_key_value_heads=1, rope_theta=500.0
  ),
}


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  """Parity means float32 matmuls: GPUs would otherwise use TF32 (~1e-3 off)."""
  with jax.default_matmul_precision("float32"):
    yield


def make_hf_llama(path, seed=0, **overrides):
  """A random tiny transformers Llama written by its own `save_pretrained`; returns the torch model."""
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**BASE, **overrides})).eval()
  model.save_pretrained(str(path))
  return model


def left_padded_batch(vocab=96, length=24, pads=(5, 0, 11), seed=0):
  """Token ids, mask and the positions transformers' `generate` uses for a left-padded batch."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, (len(pads), length))
  mask = np.ones_like(ids)
  for row, p in enumerate(pads):
    mask[row, :p] = 0
    ids[row, :p] = 0
  pos = np.where(mask > 0, np.cumsum(mask, -1) - 1, 1)
  return ids, mask, pos


def torch_forward(model, ids, mask, pos):
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(pos),
      output_hidden_states=True,
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_and_hidden_states_match_transformers(tmp_path, name):
  ref_model = make_hf_llama(tmp_path, **CONFIGS[name])
  ids, mask, pos = left_padded_batch()
  ref = torch_forward(ref_model, ids, mask, pos)
  model = hf.from_pretrained(str(tmp_path))
  assert (name == "tied_mha") == (not hasattr(model, "lm_head"))
  out = model(ids, mask, output_hidden_states=True)  # default positions follow the mask
  real = mask.astype(bool)
  np.testing.assert_allclose(
    np.asarray(out.logits)[real], ref.logits.numpy()[real], atol=1e-4, rtol=1e-4
  )
  assert len(out.hidden_states) == len(ref.hidden_states)
  for ours, theirs in zip(out.hidden_states, ref.hidden_states):
    np.testing.assert_allclose(np.asarray(ours)[real], theirs.numpy()[real], atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # test_generate checks cached decoding against transformers in the fast set
def test_kv_cache_prefill_then_steps_match_full_forward(tmp_path):
  make_hf_llama(tmp_path)
  model = hf.from_pretrained(str(tmp_path))
  ids, mask, _ = left_padded_batch(length=12, pads=(5, 0, 7))
  full = model(ids, mask).logits
  cache = model.init_cache(ids.shape[0], 16)
  slots = np.concatenate([mask, np.zeros((3, 4), mask.dtype)], axis=1)
  out = model(ids[:, :9], np.where(np.arange(16) < 9, slots, 0), cache=cache)
  real = mask.astype(bool)  # padded query rows attend to nothing; their values are arbitrary
  np.testing.assert_allclose(
    np.asarray(out.logits)[real[:, :9]], np.asarray(full[:, :9])[real[:, :9]], atol=1e-5
  )
  for t in range(9, 12):
    step_mask = np.where(np.arange(16) <= t, slots, 0)
    out = model(ids[:, t : t + 1], step_mask, cache=out.cache)
    np.testing.assert_allclose(out.logits[:, 0], full[:, t], atol=1e-5)
  assert int(out.cache.index) == 12


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_prefill_takes_the_prompts_own_keys(tmp_path, cpu_kernels, expect_kernel):
  # prefill=True (an empty cache filled from slot 0): attention over the prompt's keys on the
  # query-block path / CPU kernel, not scores over every cache slot. Same logits on real tokens,
  # same cache on real slots, and the decode steps after it agree.
  make_hf_llama(tmp_path)
  model = with_options(
    hf.from_pretrained(str(tmp_path)), attention_block_size=4, cpu_kernels=cpu_kernels
  )
  ids, mask, _ = left_padded_batch(length=12, pads=(5, 0, 7))
  slots = np.concatenate([mask, np.zeros((3, 4), mask.dtype)], axis=1)
  prompt_mask = np.where(np.arange(16) < 9, slots, 0)
  run = jax.jit(
    lambda m, c, prefill: m(ids[:, :9], prompt_mask, cache=c, prefill=prefill), static_argnums=2
  )
  cache = model.init_cache(ids.shape[0], 16)
  with expect_kernel(attention_kernel, attention_kernel.TARGET_FWD, when=cpu_kernels):
    ours = run(model, cache, True)
  theirs = run(model, cache, False)
  real = mask.astype(bool)[:, :9]
  np.testing.assert_allclose(
    np.asarray(ours.logits)[real], np.asarray(theirs.logits)[real], atol=1e-5
  )
  for a, b in zip(ours.cache.keys + ours.cache.values, theirs.cache.keys + theirs.cache.values):
    np.testing.assert_allclose(
      np.asarray(a)[:, :, :9].transpose(0, 2, 1, 3)[real],
      np.asarray(b)[:, :, :9].transpose(0, 2, 1, 3)[real],
      atol=1e-5,
    )
  for t in range(9, 12):
    step_mask = np.where(np.arange(16) <= t, slots, 0)
    ours, theirs = (model(ids[:, t : t + 1], step_mask, cache=o.cache) for o in (ours, theirs))
    np.testing.assert_allclose(ours.logits, theirs.logits, atol=1e-5)
  text = (
    jax.jit(lambda m, c: m(ids[:, :9], prompt_mask, cache=c, prefill=True))
    .lower(model, cache)
    .as_text()
  )
  kernel = cpu_kernels  # (expect_kernel skipped this parametrisation where the kernel cannot run)
  assert (attention_kernel.TARGET_FWD in text) == kernel
  # Without the kernel a prefill is one einsum over the prompt's 9 keys, not over the 16 slots.
  assert kernel or "9x9xf32" in text and "9x16xf32" not in text


def test_prefill_needs_a_cache():
  model = LlamaForCausalLM(LlamaConfig(**_ours(BASE)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="prefill=True needs a cache"):
    model(np.ones((1, 4), np.int32), prefill=True)


def test_inputs_embeds_equal_input_ids():
  model = LlamaForCausalLM(LlamaConfig(**_ours(BASE)), rngs=nnx.Rngs(0))
  ids, mask, _ = left_padded_batch()
  a = model(ids, mask).logits
  b = model(inputs_embeds=model.embed(ids), attention_mask=mask).logits
  np.testing.assert_array_equal(a, b)


def _ours(d):
  fields = {f.name for f in dataclasses.fields(LlamaConfig)}
  return {k: v for k, v in d.items() if k in fields}


@pytest.mark.slow  # three more compilations of the model
def test_bf16_and_remat_options():
  cfg = LlamaConfig(**_ours(BASE))
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  ids, mask, _ = left_padded_batch()
  ref = model(ids, mask).logits
  bf16 = LlamaForCausalLM(cfg, options=ComputeOptions(dtype="bfloat16"), rngs=nnx.Rngs(0))
  low = bf16(ids, mask).logits
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), ref, atol=0.1 * float(jnp.abs(ref).max()))
  remat = LlamaForCausalLM(cfg, options=ComputeOptions(remat="full"), rngs=nnx.Rngs(0))

  def loss(m):
    return jnp.mean(m(ids, mask).logits ** 2)

  g1 = nnx.grad(loss)(model)
  g2 = nnx.grad(loss)(remat)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_weights_carry_logical_axes():
  model = LlamaForCausalLM(LlamaConfig(**_ours(BASE)), rngs=nnx.Rngs(0))
  layer = model.model.layers[0]
  meta = lambda v: v.get_metadata()["out_sharding"]  # noqa: E731
  assert meta(model.model.embed_tokens.embedding) == ("vocab", "embed")
  assert meta(layer.self_attn.q_proj.kernel) == ("embed", "heads")
  assert meta(layer.self_attn.k_proj.kernel) == ("embed", "kv_heads")
  assert meta(layer.mlp.down_proj.kernel) == ("mlp", "embed")
  assert meta(layer.input_layernorm.scale) == ("norm",)
  assert meta(model.lm_head.kernel) == ("embed", "vocab")


@pytest.mark.parametrize(
  "bad, message",
  [
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=2.0)), "yarn"),
    (dict(rope_scaling=dict(rope_type="llama3", factor=2.0)), "low_freq_factor"),
  ],
)
def test_bad_config_is_named(bad, message):
  with pytest.raises(ValueError, match=message):
    LlamaConfig(**{**_ours(BASE), **bad})


def test_call_argument_errors():
  model = LlamaForCausalLM(LlamaConfig(**_ours(BASE)), rngs=nnx.Rngs(0))
  ids, mask, _ = left_padded_batch()
  with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
    model()
  with pytest.raises(ValueError, match="attention_mask has shape"):
    model(ids, mask[:, :5])
