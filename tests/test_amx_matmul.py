"""The AMX bf16x3 matmul kernel (`aotd_jax/kernels/amx_matmul`) and `matmul_precision`.

Kernel tests compare against a float64 reference; they skip on CPUs without AMX-BF16 (or
without a C++ compiler). The dispatch and config tests run everywhere.
"""

import ctypes
import json
import os
import platform
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax import hf
from aotd_jax.kernels import amx_matmul as amx
from aotd_jax.kernels import build
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.clip import CLIPConfig, CLIPModel, CLIPVisionConfig
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
from aotd_jax.models.llava_next_video import (
  LlavaNextVideoConfig,
  LlavaNextVideoForConditionalGeneration,
)
from aotd_jax.models.abstract import abstract_model
from aotd_jax.models.options import with_options

needs_amx = pytest.mark.skipif(
  jax.default_backend() != "cpu" or not amx.available(),
  reason="needs a CPU with AMX-BF16, an OS that grants it, and a C++ compiler",
)

# bf16x3 keeps ~16 bits of each operand: relative error ~5e-6 here. One bf16 pass gives ~2e-3,
# so this bound also fails a kernel that dropped either correction product.
_TOL = 2e-5


def _rel_err(out, ref):
  return float(np.abs(np.asarray(out, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _tol(passes, a, b, ref, transpose_a=False, transpose_b=False) -> float:
  """bf16x3: _TOL. bf16x6 keeps all 24 bits of each operand, so it must be as exact as XLA's
  float32 dot on the same operands (within 3x, or 5e-7 where that is ~0); dropping any one of
  its six products gives ~2e-6 and fails."""
  if passes == 3:
    return _TOL
  xla = jnp.dot(
    a.T if transpose_a else a, b.T if transpose_b else b, precision=jax.lax.Precision.HIGHEST
  )
  return max(3 * _rel_err(xla, ref), 5e-7)


def _operands(m, k, n, seed=0):
  rng = np.random.default_rng(seed)
  return (
    rng.standard_normal((m, k)).astype(np.float32),
    rng.standard_normal((k, n)).astype(np.float32),
  )


@needs_amx
@pytest.mark.parametrize(
  "m,k,n", [(1, 1, 1), (5, 7, 3), (33, 65, 47), (64, 512, 96), (257, 1030, 129)]
)
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("passes", [3, 6])
def test_kernel_matches_float64(m, k, n, transpose_a, transpose_b, passes):
  # Row, column and K tails (not multiples of 32), several row blocks, K blocks and panels; each
  # operand read in place from either layout.
  a, b = _operands(m, k, n)
  ref = a.astype(np.float64) @ b.astype(np.float64)
  args = (a.T.copy() if transpose_a else a, b.T.copy() if transpose_b else b)
  out = jax.jit(lambda x, y: amx.kernel_matmul(x, y, transpose_a, transpose_b, passes))(*args)
  assert out.shape == (m, n) and out.dtype == jnp.float32
  assert _rel_err(out, ref) < _tol(passes, a, b, ref)


@needs_amx
def test_six_passes_are_as_exact_as_float32():
  # On the train step's kind of operands (K = 2048) bf16x6 meets XLA's float32 dot and is >4x
  # more exact than bf16x3.
  a, b = _operands(256, 2048, 128, seed=5)
  ref = a.astype(np.float64) @ b.astype(np.float64)
  six = _rel_err(jax.jit(lambda x, y: amx.kernel_matmul(x, y, passes=6))(a, b), ref)
  three = _rel_err(jax.jit(amx.kernel_matmul)(a, b), ref)
  assert six < _tol(6, a, b, ref) and six < three / 4


def test_bad_passes_are_named():
  a, b = _operands(4, 4, 4)
  with pytest.raises(ValueError, match="passes must be 3 .* got 4"):
    amx.kernel_matmul(a, b, passes=4)


@needs_amx
def test_the_handler_checks_passes():
  # The C++ handler checks the attribute too (a caller that bypasses `kernel_matmul`).
  a, b = _operands(4, 4, 4)
  call = jax.ffi.ffi_call(amx.TARGET, jax.ShapeDtypeStruct((4, 4), jnp.float32))
  with pytest.raises(Exception, match="passes must be 3 or 6"):
    jax.block_until_ready(call(a, b, transpose_a=False, transpose_b=False, passes=np.int32(5)))


@needs_amx
def test_kernel_is_more_precise_than_one_bf16_pass():
  a, b = _operands(128, 256, 64, seed=1)
  ref = a.astype(np.float64) @ b.astype(np.float64)
  one_pass = jnp.dot(
    jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16), preferred_element_type=jnp.float32
  )
  assert _rel_err(one_pass, ref) > 50 * _rel_err(jax.jit(amx.kernel_matmul)(a, b), ref)


@needs_amx
def test_empty_and_zero_k():
  out = jax.jit(amx.kernel_matmul)(np.zeros((4, 0), np.float32), np.zeros((0, 6), np.float32))
  np.testing.assert_array_equal(out, np.zeros((4, 6), np.float32))
  empty = jax.jit(amx.kernel_matmul)(np.zeros((0, 3), np.float32), np.ones((3, 5), np.float32))
  assert empty.shape == (0, 5)


@needs_amx
@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("passes", [3, 6])
def test_gradients_match_xla(transpose_w, passes):
  x, w = _operands(70, 90, 50, seed=2)
  w = w.T.copy() if transpose_w else w
  c = np.random.default_rng(3).standard_normal((70, 50)).astype(np.float32)

  def loss(f, x, w):
    return jnp.sum(f(x, w) * c)  # d/dy = c

  def xla(x, w):
    return jnp.dot(x, w.T if transpose_w else w, precision=jax.lax.Precision.HIGHEST)

  ours = jax.grad(
    lambda x, w: loss(lambda x, w: amx.amx_matmul(x, w, transpose_w, passes), x, w), argnums=(0, 1)
  )(x, w)
  theirs = jax.grad(lambda x, w: loss(xla, x, w), argnums=(0, 1))(x, w)
  x64, w64, c64 = (t.astype(np.float64) for t in (x, w, c))
  w_kn = w64.T if transpose_w else w64
  dw = x64.T @ c64
  for got, xla_got, want in zip(ours, theirs, (c64 @ w_kn.T, dw.T if transpose_w else dw)):
    assert got.shape == want.shape
    tol = _TOL if passes == 3 else max(3 * _rel_err(xla_got, want), 5e-7)
    assert _rel_err(got, want) < tol


@needs_amx
def test_concurrent_calls_and_vmap():
  # Independent calls in one program run at once on XLA's pool (they share its threads).
  xs = [_operands(300, 200, 150, seed=s) for s in range(4)]
  outs = jax.jit(lambda *ab: [amx.kernel_matmul(ab[2 * i], ab[2 * i + 1]) for i in range(4)])(
    *[t for pair in xs for t in pair]
  )
  for (a, b), out in zip(xs, outs):
    assert _rel_err(out, a.astype(np.float64) @ b.astype(np.float64)) < _TOL
  a = np.stack([xs[0][0], xs[1][0]])
  b = np.stack([xs[0][1], xs[1][1]])
  out = jax.vmap(amx.amx_matmul)(a, b)
  for i in range(2):
    assert _rel_err(out[i], a[i].astype(np.float64) @ b[i].astype(np.float64)) < _TOL


def _hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).as_text()


@needs_amx
def test_precision_dot_dispatch():
  x3 = jnp.ones((2, 40, 64), jnp.float32)
  w = jnp.ones((64, 48), jnp.float32)
  nn = (((2,), (0,)), ((), ()))
  high = amx.PrecisionDot(0, "high")
  assert amx.TARGET in _hlo(lambda x, w: high(x, w, nn), x3, w)
  out = jax.jit(lambda x, w: high(x, w, nn))(x3, w)
  assert out.shape == (2, 40, 48)
  np.testing.assert_allclose(out, jnp.full((2, 40, 48), 64.0), rtol=1e-6)
  # x @ w^T for w (N, K), as a tied LM head reads its embedding.
  nt = (((1,), (1,)), ((), ()))
  assert amx.TARGET in _hlo(lambda x, w: high(x, w, nt), x3[0], w.T)
  # No kernel: default precision, bfloat16, batch dims; an explicit precision argument wins.
  default = amx.PrecisionDot(0, "default")
  assert amx.TARGET not in _hlo(lambda x, w: default(x, w, nn), x3, w)
  assert amx.TARGET in _hlo(lambda x, w: default(x, w, nn, precision=jax.lax.Precision.HIGH), x3, w)
  highest = _hlo(lambda x, w: high(x, w, nn, precision=jax.lax.Precision.HIGHEST), x3, w)
  assert amx.TARGET in highest and "passes = 6" in highest
  assert "passes = 3" in _hlo(lambda x, w: high(x, w, nn), x3, w)
  assert "passes = 6" in _hlo(lambda x, w: amx.PrecisionDot(0, "highest")(x, w, nn), x3, w)
  mixed = (jax.lax.Precision.HIGH, jax.lax.Precision.HIGHEST)
  assert amx.TARGET not in _hlo(lambda x, w: default(x, w, nn, precision=mixed), x3, w)
  xb, wb = x3.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  assert amx.TARGET not in _hlo(lambda x, w: high(x, w, nn), xb, wb)
  batched = (((2,), (1,)), ((0,), (0,)))
  assert amx.TARGET not in _hlo(lambda x, w: high(x, w, batched), x3, jnp.ones((2, 64, 8)))
  # A decode step's few rows still take the small-M kernel first.
  nn2d = (((1,), (0,)), ((), ()))
  decode = _hlo(lambda x, w: amx.PrecisionDot(8, "high")(x, w, nn2d), x3[0, :4], w)
  assert "aotd_small_m_matmul" in decode and amx.TARGET not in decode


def test_precision_dot_without_the_kernel_is_xla(monkeypatch):
  # No AMX (or no compiler): XLA's float32 dot, bit for bit, with the precision passed on.
  monkeypatch.setattr(amx, "available", lambda: False)
  x, w = _operands(20, 30, 10)
  nn = (((1,), (0,)), ((), ()))
  text = _hlo(lambda x, w: amx.PrecisionDot(0, "high")(x, w, nn), x, w)
  assert amx.TARGET not in text
  np.testing.assert_array_equal(
    jax.jit(lambda x, w: amx.PrecisionDot(0, "high")(x, w, nn))(x, w), jax.jit(jnp.dot)(x, w)
  )


def test_bad_precision_is_named():
  with pytest.raises(ValueError, match="matmul_precision='fast'"):
    ComputeOptions(matmul_precision="fast")
  with pytest.raises(ValueError, match="'medium' is not one of"):
    amx.PrecisionDot(0, "medium")


def test_sub_configs_follow_the_model_precision():
  cfg = LlavaNextVideoConfig(
    vision_config=CLIPVisionConfig(num_hidden_layers=2),
    text_config=LlamaConfig(
      num_hidden_layers=1, hidden_size=64, intermediate_size=64, num_attention_heads=4
    ),
  )
  model = abstract_model(
    lambda rngs: LlavaNextVideoForConditionalGeneration(
      cfg, options=ComputeOptions(matmul_precision="high"), rngs=rngs
    )
  )
  assert model.vision_tower.options.matmul_precision == "high"
  assert model.language_model.options.matmul_precision == "high"
  clip_model = abstract_model(
    lambda rngs: CLIPModel(
      CLIPConfig(), options=ComputeOptions(matmul_precision="highest"), rngs=rngs
    )
  )
  assert clip_model.vision_model.options.matmul_precision == "highest"


def _tiny_llama(**kw) -> LlamaForCausalLM:
  cfg = LlamaConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    **kw,
  )
  return LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))


@needs_amx
@pytest.mark.parametrize("tied,precision", [(False, "high"), (True, "high"), (False, "highest")])
def test_llama_high_precision_step(tied, precision):
  model = _tiny_llama(tie_word_embeddings=tied)
  high = with_options(model, matmul_precision=precision)
  assert high.options.matmul_precision == precision and high.model.layers[0].mlp.up_proj is not None
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 300, (2, 40)), jnp.int32)

  def loss(m):
    return jnp.mean(jax.nn.log_softmax(m(ids).logits)[..., 0])

  text = jax.jit(lambda m: nnx.grad(loss)(m)).lower(high).as_text()
  # q, k, v, o, gate, up, down per layer and the LM head: forward, dx and dw each.
  assert text.count(amx.TARGET) == 3 * (7 * 2 + 1)
  assert text.count(f"passes = {3 if precision == 'high' else 6}") == 3 * (7 * 2 + 1)
  np.testing.assert_allclose(high(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
  g_high = jax.tree.leaves(nnx.grad(loss)(high))
  g_ref = jax.tree.leaves(nnx.grad(loss)(model))
  for a, b in zip(g_high, g_ref):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(float(np.abs(b).max()), 1e-6))


def test_matmul_precision_stays_out_of_config_json(tmp_path):
  model = with_options(_tiny_llama(), matmul_precision="high")
  hf.save_pretrained(model, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert "matmul_precision" not in json.load(f)
  assert hf.from_pretrained(str(tmp_path)).options.matmul_precision == "default"


@pytest.mark.skipif(
  platform.machine() not in ("x86_64", "AMD64") or build.find_compiler() is None,
  reason="needs an x86-64 C++ compiler",
)
def test_a_build_without_amx_says_so(tmp_path):
  # CPUs without AMX (AMD, older Intel) compile the source without its AMX path: the library
  # loads, reports no support, and `available()` keeps XLA's dots.
  out = tmp_path / "libamx_matmul_noamx.so"
  src = os.path.join(os.path.dirname(amx.__file__), "amx_matmul.cc")
  subprocess.run(
    [
      build.find_compiler(),
      *build._FLAGS,
      "-mno-amx-tile",
      "-mno-amx-bf16",
      f"-I{jax.ffi.include_dir()}",
      src,
      "-o",
      str(out),
    ],
    check=True,
    timeout=300,
  )
  assert ctypes.cdll.LoadLibrary(str(out)).AotdAmxSupported() == 0


@needs_amx
def test_inf_and_nan_never_come_out_finite():
  # Non-finite where float32 is, NaN where it is NaN. An inf may come out NaN where float32
  # gives +-inf: the inf meets the other operand's lo part, whose sign is its own.
  a, b = _operands(40, 64, 36, seed=4)
  a[3, 5], a[7, 0], b[2, 9] = np.inf, np.nan, -np.inf
  with np.errstate(invalid="ignore", over="ignore"):
    ref = a.astype(np.float64) @ b.astype(np.float64)
  out = np.asarray(jax.jit(amx.kernel_matmul)(a, b))
  np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref))
  assert np.isnan(out[np.isnan(ref)]).all()
  finite = np.isfinite(ref)
  assert finite.sum() > 1000 and _rel_err(out[finite], ref[finite]) < _TOL


@needs_amx
def test_calls_from_several_python_threads():
  # Programs run by different Python threads at once share the kernel's pool of work chunks.
  import concurrent.futures

  cases = [_operands(200 + 10 * i, 300, 90 + i, seed=10 + i) for i in range(6)]
  fn = jax.jit(amx.kernel_matmul)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    outs = list(pool.map(lambda ab: np.asarray(fn(*ab)), cases * 3))
  for (a, b), out in zip(cases * 3, outs):
    assert _rel_err(out, a.astype(np.float64) @ b.astype(np.float64)) < _TOL


@needs_amx
def test_default_matmul_precision_context():
  x, w = jnp.ones((16, 32)), jnp.ones((32, 8))
  dot = amx.PrecisionDot(0, "default")
  nn = (((1,), (0,)), ((), ()))
  with jax.default_matmul_precision("high"):
    assert amx.TARGET in _hlo(lambda x, w: dot(x, w, nn), x, w)
  with jax.default_matmul_precision("highest"):
    assert "passes = 6" in _hlo(lambda x, w: dot(x, w, nn), x, w)
  with jax.default_matmul_precision("bfloat16"):
    assert amx.TARGET not in _hlo(lambda x, w: dot(x, w, nn), x, w)
