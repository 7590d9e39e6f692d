"""Blocked causal attention: transformers parity, gradients equal to the einsum path, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import aotd_jax  # noqa: F401
from aotd_jax import hf
from aotd_jax.kernels import attention as ka
from aotd_jax.layers.causal_attention import blocked_causal_attention
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tests.test_llama import left_padded_batch, make_hf_llama, torch_forward


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield


def _with_block(model: LlamaForCausalLM, block: int, cpu_kernels: bool = True) -> LlamaForCausalLM:
  """The same weights under a config with another `attention_block_size` (and `cpu_kernels`:
  False keeps the jnp blocks, True takes the C++ attention kernel where it runs)."""
  options = dataclasses.replace(model.options, attention_block_size=block, cpu_kernels=cpu_kernels)
  other = LlamaForCausalLM(model.config, options=options, rngs=nnx.Rngs(0))
  nnx.update(other, nnx.state(model, nnx.Param))
  return other


@pytest.mark.parametrize("cpu_kernels", [False, True])
@pytest.mark.parametrize(
  "length,block",
  [
    pytest.param(24, 8, marks=pytest.mark.slow),
    (21, 8),
    pytest.param(24, 5, marks=pytest.mark.slow),
  ],
)
def test_blocked_logits_match_transformers_with_left_padding(
  tmp_path, length, block, cpu_kernels, expect_kernel
):
  ref_model = make_hf_llama(tmp_path)
  ids, mask, pos = left_padded_batch(length=length, pads=(5, 0, 11))
  ref = torch_forward(ref_model, ids, mask, pos)
  model = _with_block(hf.from_pretrained(str(tmp_path)), block, cpu_kernels)
  real = mask.astype(bool)  # padded query rows attend to nothing: arbitrary in every path
  with expect_kernel(ka, ka.TARGET_FWD, when=cpu_kernels):
    out = np.asarray(model(ids, mask).logits)
  np.testing.assert_allclose(out[real], ref.logits.numpy()[real], atol=1e-4, rtol=1e-4)


def _attention_inputs(b=3, length=19, kv=2, groups=3, d=8, pads=(0, 4, 9), seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, length, kv, groups, d), np.float32)
  k = rng.standard_normal((b, length, kv, d), np.float32)
  v = rng.standard_normal((b, length, kv, d), np.float32)
  valid = np.arange(length)[None, :] >= np.asarray(pads)[:, None]
  mask = np.tril(np.ones((length, length), bool))[None] & valid[:, None, :]
  weights = rng.standard_normal((b, length, kv * groups * d), np.float32) * valid[:, :, None]
  return q, k, v, jnp.asarray(mask), weights, valid


def _einsum_attention(q, k, v, mask):
  b, length, kv, groups, d = q.shape
  s = jnp.einsum("blkgd,bskd->bkgls", q, k) * d**-0.5
  s = jnp.where(mask[:, None, None], s, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bkgls,bskd->blkgd", jax.nn.softmax(s, -1), v).reshape(b, length, -1)


@pytest.mark.parametrize("cpu_kernels", [False, True])
@pytest.mark.parametrize("block", [pytest.param(3, marks=pytest.mark.slow), 7, 19, 32])
def test_blocked_values_and_gradients_equal_the_einsum_path(block, cpu_kernels, expect_kernel):
  q, k, v, mask, weights, valid = _attention_inputs()

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)

  ours = jax.jit(
    lambda q, k, v: blocked_causal_attention(q, k, v, mask, block, cpu_kernel=cpu_kernels)
  )
  ref = lambda q, k, v: _einsum_attention(q, k, v, mask)  # noqa: E731
  with expect_kernel(ka, ka.TARGET_FWD, ka.TARGET_BWD, when=cpu_kernels):
    out = np.asarray(ours(q, k, v))
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(out[valid], np.asarray(ref(q, k, v))[valid], atol=1e-5)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_masked_scores_get_no_gradient_even_on_padding_rows(cpu_kernels, expect_kernel):
  """A loss that reads padding query rows: dq and dk still equal the einsum path's (dv differs
  there by design: a fully masked row averages its block's values, not all values)."""
  q, k, v, mask, _, _ = _attention_inputs()
  weights = np.random.default_rng(1).standard_normal((3, 19, 48)).astype(np.float32)
  ours = jax.jit(
    jax.grad(
      lambda q, k: jnp.sum(
        blocked_causal_attention(q, k, v, mask, 4, cpu_kernel=cpu_kernels) * weights
      ),
      (0, 1),
    )
  )
  ref = jax.grad(lambda q, k: jnp.sum(_einsum_attention(q, k, v, mask) * weights), (0, 1))
  with expect_kernel(ka, ka.TARGET_FWD, ka.TARGET_BWD, when=cpu_kernels):
    got = ours(q, k)
  for name, a, b in zip("qk", got, ref(q, k)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_blocked_train_gradients_match_one_block(cpu_kernels, expect_kernel):
  cfg = LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
  )
  model = LlamaForCausalLM(cfg, options=ComputeOptions(attention_block_size=0), rngs=nnx.Rngs(0))
  ids, mask, _ = left_padded_batch(vocab=64, length=20, pads=(0, 6, 3))

  def grads(m):
    def loss(m):
      logp = jax.nn.log_softmax(m(ids, mask).logits[:, :-1])
      nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
      scored = mask[:, :-1] * mask[:, 1:]  # a padding query's logits are arbitrary
      return jnp.sum(nll * scored) / scored.sum()

    return nnx.jit(nnx.grad(loss))(m)

  want = nnx.to_flat_state(grads(model))
  with expect_kernel(ka, ka.TARGET_FWD, ka.TARGET_BWD, when=cpu_kernels):
    got = dict(nnx.to_flat_state(grads(_with_block(model, 6, cpu_kernels))))
  for path, g in want:
    np.testing.assert_allclose(
      np.asarray(got[path][...]), np.asarray(g[...]), atol=2e-5, err_msg=str(path)
    )


def test_blocked_runs_in_bfloat16():
  q, k, v, mask, _, valid = _attention_inputs()
  cast = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  out = jax.jit(blocked_causal_attention, static_argnums=4)(*cast, mask, 4)
  assert out.dtype == jnp.bfloat16
  ref = _einsum_attention(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(out, np.float32)[valid], np.asarray(ref)[valid], atol=0.1)
  grads = jax.jit(
    jax.grad(lambda q: jnp.sum(blocked_causal_attention(q, *cast[1:], mask, 4).astype(jnp.float32)))
  )(cast[0])
  assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads.astype(jnp.float32))))


def test_bad_inputs_are_named():
  q, k, v, mask, _, _ = _attention_inputs()
  with pytest.raises(ValueError, match="mask has shape"):
    blocked_causal_attention(q, k, v, mask[:, :-1], 4)
  with pytest.raises(ValueError, match="keys"):
    blocked_causal_attention(q, k[:, :-1], v, mask, 4)
  with pytest.raises(ValueError, match="block_size"):
    blocked_causal_attention(q, k, v, mask, 0)
  with pytest.raises(ValueError, match="attention_block_size"):
    ComputeOptions(attention_block_size=-1)


def test_blocked_on_a_mesh_equals_one_device(tmp_path):
  from flax.core import spmd
  from aotd_jax import sharding

  assert jax.device_count() == 8, "conftest should force 8 host devices"
  make_hf_llama(tmp_path)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  single = _with_block(hf.from_pretrained(str(tmp_path)), 8)
  sharded = hf.from_pretrained(str(tmp_path), mesh=mesh)
  ids, mask, _ = left_padded_batch(length=24, pads=(5, 0, 11, 2))
  weights = (
    np.random.default_rng(0).standard_normal((4, 24, 96)).astype(np.float32) * mask[..., None]
  )

  def loss(m):
    logits = m(ids, mask).logits
    return jnp.sum(logits * weights), logits

  (_, want), want_grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(single)
  with jax.set_mesh(mesh), spmd.logical_axis_rules(sharding.DEFAULT_RULES):
    options = dataclasses.replace(sharded.options, attention_block_size=8)
    for layer in sharded.model.layers:
      layer.self_attn.options = options
    (_, got), got_grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(sharded)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
  got_flat = dict(nnx.to_flat_state(got_grads))
  for path, g in nnx.to_flat_state(want_grads):
    np.testing.assert_allclose(
      np.asarray(got_flat[path][...]), np.asarray(g[...]), rtol=1e-5, atol=1e-4, err_msg=str(path)
    )
