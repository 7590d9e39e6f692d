"""The CPU small-M matmul kernel (`aotd_jax/kernels`): numbers, dispatch, gradients, fallbacks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax import sharding
from aotd_jax.kernels import build
from aotd_jax.kernels import small_m_matmul as smm
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

DIMS = (((1,), (0,)), ((), ()))
needs_kernel = pytest.mark.skipif(
  jax.default_backend() != "cpu" or not smm.available(),
  reason="a CPU kernel: needs the CPU backend and a C++ compiler",
)


def _pair(m, k, n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)


def _hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


@needs_kernel
@pytest.mark.parametrize(
  "m,k,n",
  [
    (1, 5, 1),
    (3, 100, 70),
    (7, 33, 31),
    (8, 512, 8192 // 16),
    (8, 64, 96),
    (13, 64, 96),
    (32, 40, 200),
    (2, 0, 5),
  ],
)
def test_kernel_matches_a_float64_matmul(m, k, n):
  x, w = _pair(m, k, n)
  got = np.asarray(jax.jit(smm.small_m_matmul)(x, w))
  want = x.astype(np.float64) @ w.astype(np.float64)
  # Sequential float32 sums over K: within a few ulps of |x| |w| per output.
  bound = 4 * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w)) * max(k, 1) ** 0.5 + 1e-30
  assert got.shape == (m, n)
  assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / bound)


@needs_kernel
def test_gradients_and_vmap_equal_xla_dots():
  x, w = _pair(4, 24, 40)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  got = jax.grad(loss(smm.small_m_matmul), argnums=(0, 1))(x, w)
  want = jax.grad(loss(jnp.dot), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  xs = np.stack([x, 2 * x])
  np.testing.assert_allclose(
    jax.vmap(smm.small_m_matmul, (0, None))(xs, w), xs @ w, rtol=1e-5, atol=1e-5
  )


@needs_kernel
def test_dot_general_dispatch():
  dot = smm.SmallMDot(max_rows=8)
  x, w = _pair(8, 16, 24)
  assert dot.use_kernel(jnp.asarray(x), jnp.asarray(w), DIMS)
  assert "aotd_small_m_matmul" in _hlo(lambda x, w: dot(x, w, DIMS), x, w)
  # XLA's dot for: more rows than max_rows, another dtype, a disabled kernel, other dimension numbers.
  big, _ = _pair(9, 16, 24)
  assert not dot.use_kernel(jnp.asarray(big), jnp.asarray(w), DIMS)
  assert not dot.use_kernel(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), DIMS)
  assert not smm.SmallMDot(max_rows=0).use_kernel(jnp.asarray(x), jnp.asarray(w), DIMS)
  assert not dot.use_kernel(jnp.asarray(x.T), jnp.asarray(x), (((0,), (0,)), ((), ())))
  assert "aotd_small_m_matmul" not in _hlo(lambda x, w: dot(x, w, DIMS), big, w)
  np.testing.assert_allclose(
    jax.jit(lambda x, w: dot(x, w, DIMS))(big, w), big @ w, rtol=1e-5, atol=1e-5
  )
  # Equal settings compare equal (shared jit caches for separately built models).
  assert smm.SmallMDot(8) == smm.SmallMDot(8) and hash(smm.SmallMDot(8)) == hash(smm.SmallMDot(8))


@needs_kernel
def test_multi_device_mesh_keeps_xla_dots_and_sharded_weights_stay_correct():
  dot = smm.SmallMDot()
  x, w = _pair(8, 16, 24)
  mesh = sharding.make_mesh({"tensor": 2}, jax.devices()[:2])
  with jax.set_mesh(mesh):
    assert "aotd_small_m_matmul" not in _hlo(lambda x, w: dot(x, w, DIMS), x, w)
  # Weights split over devices without a mesh context: the kernel runs on replicated operands.
  ws = jax.device_put(
    w, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "tensor"))
  )
  np.testing.assert_allclose(
    jax.jit(lambda x, w: dot(x, w, DIMS))(x, ws), x @ w, rtol=1e-5, atol=1e-5
  )


@needs_kernel
@pytest.mark.slow  # a whole decode step twice; the kernel's own tests run fast
def test_llama_decode_step_uses_the_kernel_and_matches_xla():
  cfg = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
  )
  on = LlamaForCausalLM(LlamaConfig(**cfg), rngs=nnx.Rngs(0))
  off = LlamaForCausalLM(
    LlamaConfig(**cfg), options=ComputeOptions(cpu_kernels=False), rngs=nnx.Rngs(0)
  )
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 1)), jnp.int32)

  def step(model, ids):
    cache = model.init_cache(4, 8)
    return model(ids, jnp.ones((4, 8), jnp.int32), cache=cache).logits

  assert "aotd_small_m_matmul" in _hlo(lambda i: step(on, i), ids)
  assert "aotd_small_m_matmul" not in _hlo(lambda i: step(off, i), ids)
  np.testing.assert_allclose(step(on, ids), step(off, ids), rtol=1e-5, atol=1e-5)
  # Prefill (batch x length = 20 rows > DECODE_ROWS = 16) keeps XLA's dots.
  long_ids = jnp.tile(ids, (1, 5))
  assert "aotd_small_m_matmul" not in _hlo(lambda i: on(i).logits, long_ids)


def test_without_the_kernel_dot_general_is_xla(monkeypatch):
  monkeypatch.setattr(smm, "available", lambda: False)
  x, w = _pair(8, 16, 24)
  fn = lambda x, w: smm.SmallMDot()(x, w, DIMS)
  assert "aotd_small_m_matmul" not in _hlo(fn, x, w)
  np.testing.assert_allclose(jax.jit(fn)(x, w), x @ w, rtol=1e-5, atol=1e-5)


def test_a_missing_source_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.cc"):
    build.build_library(str(tmp_path / "missing.cc"), out_dir=str(tmp_path / "cache"))


@pytest.mark.skipif(build.find_compiler() is None, reason="no C++ compiler: nothing to fail")
def test_build_errors_name_the_source_and_compiler_output(tmp_path):
  bad = tmp_path / "broken.cc"
  bad.write_text("this is not C++;\n")
  with pytest.raises(build.KernelBuildError, match="broken.cc"):
    build.build_library(str(bad), out_dir=str(tmp_path / "cache"))
  assert not any(p.suffix == ".so" for p in (tmp_path / "cache").iterdir())  # no torn library left


def test_missing_compiler_gives_no_library(tmp_path, monkeypatch):
  monkeypatch.setattr(build.shutil, "which", lambda name: None)
  monkeypatch.delenv("CXX", raising=False)
  assert build.find_compiler() is None
  src = tmp_path / "k.cc"
  src.write_text("int f() { return 1; }\n")
  with pytest.raises(FileNotFoundError, match=r"no C\+\+ compiler"):
    build.build_library(str(src), out_dir=str(tmp_path))
  monkeypatch.setenv("AOTD_JAX_KERNEL_CACHE", str(tmp_path / "empty"))  # nothing cached to reuse
  assert build.load_library.__wrapped__("small_m_matmul") is None  # callers fall back to XLA


@needs_kernel
def test_library_is_cached_by_content(tmp_path):
  src = tmp_path / "k.cc"
  src.write_text('extern "C" int aotd_test_answer() { return 42; }\n')
  first = build.build_library(str(src), out_dir=str(tmp_path / "cache"))
  mtime = os.path.getmtime(first)
  assert build.build_library(str(src), out_dir=str(tmp_path / "cache")) == first
  assert os.path.getmtime(first) == mtime  # not rebuilt
  src.write_text('extern "C" int aotd_test_answer() { return 43; }\n')
  assert build.build_library(str(src), out_dir=str(tmp_path / "cache")) != first


def test_other_backends_keep_xla_dots(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not build.single_cpu_device()
  x, w = _pair(8, 16, 24)
  assert not smm.SmallMDot().use_kernel(jnp.asarray(x), jnp.asarray(w), DIMS)
