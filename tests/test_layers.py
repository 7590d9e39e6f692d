"""aotd_jax.layers: the attention dispatcher's choices and paths, dense layers, norms."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import aotd_jax  # noqa: F401
from aotd_jax.layers import attention as attention_lib
from aotd_jax.layers import dense as dense_lib
from aotd_jax.layers import norms


def _qkv(seed=0, b=2, l=6, h=4, kv=2, d=8):
  r = np.random.default_rng(seed)
  q, k, v = (
    jnp.asarray(r.standard_normal(s), jnp.float32)
    for s in ((b, l, h, d), (b, l, kv, d), (b, l, kv, d))
  )
  return q, k, v


@pytest.mark.parametrize(
  "backend,dtype,kernel,want",
  [
    ("cpu", jnp.float32, True, "xla"),  # "xla" takes the CPU kernel there
    ("cpu", jnp.float32, False, "xla"),
    ("gpu", jnp.bfloat16, False, "cudnn"),
    ("gpu", jnp.float32, False, "xla"),
    ("tpu", jnp.bfloat16, False, "xla"),
  ],
)
def test_auto_chooses_by_backend_and_dtype(backend, dtype, kernel, want):
  assert attention_lib.choose("auto", backend=backend, dtype=dtype, cpu_kernel=kernel) == want


def test_explicit_choice_is_kept_and_unknown_names_refused():
  assert (
    attention_lib.choose("causal", backend="gpu", dtype=jnp.bfloat16, cpu_kernel=False) == "causal"
  )
  with pytest.raises(ValueError, match="attention_impl='flash3'"):
    attention_lib.choose("flash3", backend="cpu", dtype=jnp.float32, cpu_kernel=False)


def test_cudnn_off_a_gpu_is_a_clear_error():
  if jax.default_backend() == "gpu":
    pytest.skip("this checks the refusal on a machine without a GPU")
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
    attention_lib.attention(q, k, v, implementation="cudnn")


def test_head_major_cache_is_read_by_xla_only():
  q, k, v = _qkv(l=1)
  with pytest.raises(ValueError, match="head-major"):
    attention_lib.attention(
      q,
      k.transpose(0, 2, 1, 3),
      v.transpose(0, 2, 1, 3),
      implementation="dot_product_attention",
      kv_head_major=True,
    )


def test_causal_paths_agree():
  q, k, v = _qkv(l=7)
  mask = (
    jnp.tril(jnp.ones((7, 7), bool))[None]
    & jnp.asarray([[True] * 7, [False] * 2 + [True] * 5])[:, None, :]
  )
  real = np.asarray(mask.any(-1))  # padding queries see no key: arbitrary in every path
  ref = attention_lib.attention(q, k, v, mask, causal=True, cpu_kernels=False)
  outs = {
    "blocks": attention_lib.attention(q, k, v, mask, causal=True, block_size=3, cpu_kernels=False),
    "auto": attention_lib.attention(
      q, k, v, mask, implementation="auto", causal=True, block_size=3
    ),
    "dot_product_attention": attention_lib.attention(
      q, k, v, mask, causal=True, implementation="dot_product_attention"
    ),
    "head_major": attention_lib.attention(
      q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, causal=True, kv_head_major=True
    ),
  }
  for name, out in outs.items():
    np.testing.assert_allclose(
      np.asarray(out)[real], np.asarray(ref)[real], atol=1e-5, err_msg=name
    )


def test_bidirectional_grouped_heads_match_repeated_keys():
  q, k, v = _qkv(seed=1)
  mask = jnp.asarray(np.random.default_rng(2).random((2, 6, 6)) > 0.3) | jnp.eye(6, dtype=bool)
  rep = lambda t: jnp.repeat(t, 2, axis=2)  # noqa: E731
  want = attention_lib.attention(q, rep(k), rep(v), mask, cpu_kernels=False)
  for kernels in (False, True):
    got = attention_lib.attention(q, k, v, mask, cpu_kernels=kernels)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # the reference: softmax over the visible keys, by hand
  s = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.asarray(rep(k))) / np.sqrt(8)
  s = np.where(np.asarray(mask)[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(
    np.asarray(want),
    np.einsum("bhqk,bkhd->bqhd", p, np.asarray(rep(v))).reshape(2, 6, 32),
    atol=1e-5,
  )


def test_dense_carries_axes_and_refuses_unknown_precision():
  layer = dense_lib.dense(4, 3, ("embed", "mlp"), rngs=nnx.Rngs(0), bias=True)
  assert layer.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")
  assert layer.bias.get_metadata()["out_sharding"] == ("mlp",)
  x = jnp.ones((2, 4))
  np.testing.assert_allclose(
    np.asarray(layer(x)), np.asarray(x @ layer.kernel[...] + layer.bias[...]), rtol=1e-6
  )
  with pytest.raises(ValueError, match="'medium'"):
    dense_lib.dense(4, 3, ("embed", "mlp"), rngs=nnx.Rngs(0), precision="medium")


def test_rms_norm_matches_its_definition():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5)), jnp.float32)
  want = np.asarray(x) / np.sqrt(np.mean(np.asarray(x) ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(norms.RMSNorm(5, 1e-6)(x)), want, rtol=1e-5)


def test_pallas_flash_forward_matches_xla_in_interpret_mode():
  """Pallas' GPU kernel run by its interpreter: causal, L padded to its block, grouped heads."""
  q, k, v = _qkv(seed=4, l=7)
  mask = jnp.tril(jnp.ones((7, 7), bool))[None]
  want = attention_lib.attention(q, k, v, mask, causal=True, cpu_kernels=False)
  got = attention_lib.pallas_flash(q, k, v, causal=True, interpret=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("causal,length", [(True, 7), (True, 40), (False, 7)])
def test_pallas_flash_matches_xla_in_interpret_mode(causal, length):
  """Pallas' GPU kernel run by its interpreter: values and gradients equal the XLA path's."""
  q, k, v = _qkv(seed=4, l=length)
  mask = jnp.tril(jnp.ones((length, length), bool))[None] if causal else None
  ref = lambda q, k, v: attention_lib.attention(q, k, v, mask, causal=causal, cpu_kernels=False)  # noqa: E731
  ours = lambda q, k, v: attention_lib.pallas_flash(q, k, v, causal=causal, interpret=True)  # noqa: E731
  np.testing.assert_allclose(np.asarray(ours(q, k, v)), np.asarray(ref(q, k, v)), atol=1e-5)
  w = jnp.asarray(np.random.default_rng(5).standard_normal((2, length, 32)), jnp.float32)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * w), (0, 1, 2))(q, k, v) for f in (ours, ref)]
  for name, a, b in zip("qkv", *grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=f"d{name}")


def test_pallas_off_a_gpu_is_a_clear_error():
  if jax.default_backend() == "gpu":
    pytest.skip("this checks the refusal on a machine without a GPU")
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="'pallas' needs a GPU"):
    attention_lib.attention(q, k, v, implementation="pallas", causal=True)
