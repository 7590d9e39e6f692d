"""The CPU causal-attention kernel (`aotd_jax/kernels/causal_attention`): numbers, gradients,
padding rows, dispatch and fallbacks, against the jnp query-block path."""
import ctypes
import os
import platform
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax import sharding
from aotd_jax.kernels import build
from aotd_jax.kernels import causal_attention as ka
from aotd_jax.models.causal_attention import blocked_causal_attention
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tests.test_causal_attention import _attention_inputs
from tests.test_llama import left_padded_batch

needs_kernel = pytest.mark.skipif(jax.default_backend() != "cpu" or not ka.available(),
                                  reason="a CPU kernel: needs AVX-512 and a C++ compiler")


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield


def _inputs(b=3, length=19, kv=2, groups=3, d=8, pads=(0, 4, 9)):
  return _attention_inputs(b, length, kv, groups, d, pads)


def _jnp(block):
  return lambda q, k, v, mask: blocked_causal_attention(q, k, v, mask, block, cpu_kernel=False)


def _kernel(block):
  return lambda q, k, v, mask: ka.causal_attention(q, k, v, mask, block)


def _grads(fn, q, k, v, mask, weights):
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights), (0, 1, 2)))(q, k, v)


def _hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


# Tails everywhere: L not a multiple of the block or of 16, head_dim not a multiple of 16, one
# and several query groups, a block longer than L, the Llama benchmark's shape.
@needs_kernel
@pytest.mark.parametrize("b,length,kv,groups,d,pads,block", [
    (3, 19, 2, 3, 8, (0, 4, 9), 4), (3, 19, 2, 3, 8, (0, 4, 9), 7), (2, 70, 2, 2, 64, (0, 13), 16),
    (1, 33, 1, 1, 20, (0,), 64), (2, 100, 3, 1, 96, (5, 50), 32), (2, 256, 4, 2, 64, (0, 0), 64)])
def test_kernel_values_and_gradients_equal_the_jnp_blocks(b, length, kv, groups, d, pads, block):
  q, k, v, mask, weights, valid = _inputs(b, length, kv, groups, d, pads)
  got = np.asarray(jax.jit(_kernel(block))(q, k, v, mask))
  want = np.asarray(jax.jit(_jnp(block))(q, k, v, mask))
  # Every row, padding queries included: both average their block's keys.
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
  for name, a, c in zip("qkv", _grads(_kernel(block), q, k, v, mask, weights),
                        _grads(_jnp(block), q, k, v, mask, weights)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


@needs_kernel
def test_padding_queries_get_no_gradient():
  """A loss that reads padding query rows too: dq and dk still equal the jnp path's, and dv is
  the jnp path's without those rows (the kernel sends a query that sees no key no gradient)."""
  q, k, v, mask, _, valid = _inputs()
  weights = np.random.default_rng(1).standard_normal((3, 19, 48)).astype(np.float32)
  got = _grads(_kernel(4), q, k, v, mask, weights)
  want = _grads(_jnp(4), q, k, v, mask, weights)
  for name, a, c in zip("qk", got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5, err_msg=f"d{name}")
  want_dv = _grads(_jnp(4), q, k, v, mask, weights * valid[:, :, None])[2]
  np.testing.assert_allclose(np.asarray(got[2]), np.asarray(want_dv), atol=1e-5)
  assert not np.allclose(np.asarray(got[2]), np.asarray(want[2]), atol=1e-3)  # the rows matter


@needs_kernel
def test_vmap_and_a_general_mask():
  q, k, v, mask, weights, _ = _inputs()
  # Any causal mask, not only causal & key padding: drop a few extra keys per query.
  drop = np.random.default_rng(2).random(mask.shape) < 0.2
  mask = mask & ~jnp.asarray(drop) | jnp.eye(19, dtype=bool)[None]
  np.testing.assert_allclose(np.asarray(jax.jit(_kernel(5))(q, k, v, mask)),
                             np.asarray(jax.jit(_jnp(5))(q, k, v, mask)), atol=2e-6, rtol=1e-5)
  stacked = [np.stack([x, x[::-1]]) for x in (q, k, v)]
  masks = jnp.stack([mask, mask[::-1]])
  got = jax.jit(jax.vmap(_kernel(5)))(*stacked, masks)
  want = jax.vmap(_jnp(5))(*stacked, masks)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=1e-5)


@needs_kernel
def test_dispatch():
  q, k, v, mask, _, _ = _inputs()
  target = "aotd_causal_attention_fwd"
  assert target in _hlo(lambda q: blocked_causal_attention(q, k, v, mask, 4), q)
  assert target not in _hlo(lambda q: blocked_causal_attention(q, k, v, mask, 4, cpu_kernel=False), q)
  bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  assert target not in _hlo(lambda q: blocked_causal_attention(q, *bf16[1:], mask, 4), bf16[0])
  assert not ka.use_kernel(q, k, v, mask.astype(jnp.int32))
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  with jax.set_mesh(mesh):
    assert target not in _hlo(lambda q: blocked_causal_attention(q, k, v, mask, 4), q)


def test_without_the_kernel_the_jnp_path_runs(monkeypatch):
  monkeypatch.setattr(ka, "available", lambda: False)
  q, k, v, mask, _, valid = _inputs()
  fn = lambda q: blocked_causal_attention(q, k, v, mask, 4)  # noqa: E731
  assert "aotd_causal_attention" not in _hlo(fn, q)
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(q)), np.asarray(_jnp(4)(q, k, v, mask)), atol=1e-6)


@needs_kernel
def test_llama_train_step_runs_the_kernel_and_matches_the_jnp_path():
  cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, attention_block_size=6)
  on = LlamaForCausalLM(LlamaConfig(**cfg), rngs=nnx.Rngs(0))
  off = LlamaForCausalLM(LlamaConfig(**cfg, cpu_kernels=False), rngs=nnx.Rngs(0))
  ids, mask, _ = left_padded_batch(vocab=64, length=20, pads=(0, 6, 3))

  def loss(m):
    logp = jax.nn.log_softmax(m(ids, mask).logits[:, :-1])
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    scored = mask[:, :-1] * mask[:, 1:]
    return jnp.sum(nll * scored) / scored.sum()

  grad_of = lambda m: nnx.grad(loss)(m)  # noqa: E731
  hlo = nnx.jit(grad_of).lower(on).compile().as_text()
  assert "aotd_causal_attention_fwd" in hlo and "aotd_causal_attention_bwd" in hlo
  assert "aotd_causal_attention" not in nnx.jit(grad_of).lower(off).compile().as_text()
  want = dict(nnx.to_flat_state(nnx.jit(grad_of)(off)))
  for path, g in nnx.to_flat_state(nnx.jit(grad_of)(on)):
    np.testing.assert_allclose(np.asarray(g[...]), np.asarray(want[path][...]), atol=2e-5, err_msg=str(path))


@needs_kernel
def test_the_kernel_checks_its_operands():
  q, k, v, mask, _, _ = _inputs()
  with pytest.raises(Exception, match="aotd_causal_attention_fwd: mask is not"):
    jax.block_until_ready(ka._forward(q, k, v, mask[:, :, :-1], 4))
  with pytest.raises(Exception, match="keys and values do not fit"):
    jax.block_until_ready(ka._forward(q, k[:, :-1], v[:, :-1], mask, 4))
  with pytest.raises(Exception, match="block must be >= 1"):
    jax.block_until_ready(ka._forward(q, k, v, mask, 0))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or build.find_compiler() is None,
                    reason="needs an x86-64 C++ compiler")
def test_a_build_without_avx512_says_so(tmp_path):
  # CPUs without AVX-512 compile the source without its kernel: the library loads, reports no
  # support, and `available()` keeps the jnp path.
  out = tmp_path / "libcausal_attention_avx2.so"
  src = os.path.join(os.path.dirname(ka.__file__), "causal_attention.cc")
  flags = [f for f in build._FLAGS if f != "-march=native"]
  subprocess.run([build.find_compiler(), *flags, "-march=x86-64-v3", f"-I{jax.ffi.include_dir()}", src,
                  "-o", str(out)], check=True, timeout=300)
  assert ctypes.cdll.LoadLibrary(str(out)).AotdCausalAttentionSupported() == 0
