"""The CPU attention kernel (`aotd_jax/kernels/attention`): numbers, gradients, padding rows,
dispatch and fallbacks, against torch's scaled_dot_product_attention (an independent reference),
the jnp query-block path (causal) and CLIP's einsum path (not)."""

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
from aotd_jax.kernels import attention as ka
from aotd_jax import hf
from aotd_jax.models import clip
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.layers.causal_attention import blocked_causal_attention
from aotd_jax.models.llava_next_video import (
  LlavaNextVideoConfig,
  LlavaNextVideoForConditionalGeneration,
)
from aotd_jax.models.abstract import abstract_model
from aotd_jax.models.options import with_options
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tests.test_causal_attention import _attention_inputs
from tests.test_llama import left_padded_batch

needs_kernel = pytest.mark.skipif(
  jax.default_backend() != "cpu" or not ka.available(),
  reason="a CPU kernel: needs AVX-512 and a C++ compiler",
)


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield


def _inputs(b=3, length=19, kv=2, groups=3, d=8, pads=(0, 4, 9)):
  return _attention_inputs(b, length, kv, groups, d, pads)


def _jnp(block):
  return lambda q, k, v, mask: blocked_causal_attention(q, k, v, mask, block, cpu_kernel=False)


def _kernel(block):
  return lambda q, k, v, mask: ka.attention(q, k, v, mask, block, True)


def _grads(fn, q, k, v, mask, weights):
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights), (0, 1, 2)))(q, k, v)


def _hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


# Tails everywhere: L not a multiple of the block or of 16, head_dim not a multiple of 16, one
# and several query groups, a block longer than L, the Llama benchmark's shape.
@needs_kernel
@pytest.mark.parametrize(
  "b,length,kv,groups,d,pads,block",
  [
    (3, 19, 2, 3, 8, (0, 4, 9), 4),
    (3, 19, 2, 3, 8, (0, 4, 9), 7),
    (2, 70, 2, 2, 64, (0, 13), 16),
    (1, 33, 1, 1, 20, (0,), 64),
    (2, 100, 3, 1, 96, (5, 50), 32),
    (2, 256, 4, 2, 64, (0, 0), 64),
  ],
)
def test_kernel_values_and_gradients_equal_the_jnp_blocks(b, length, kv, groups, d, pads, block):
  q, k, v, mask, weights, valid = _inputs(b, length, kv, groups, d, pads)
  got = np.asarray(jax.jit(_kernel(block))(q, k, v, mask))
  want = np.asarray(jax.jit(_jnp(block))(q, k, v, mask))
  # Every row, padding queries included: both average their block's keys.
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
  for name, a, c in zip(
    "qkv",
    _grads(_kernel(block), q, k, v, mask, weights),
    _grads(_jnp(block), q, k, v, mask, weights),
  ):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(c), atol=1e-5, rtol=1e-5, err_msg=f"d{name}"
    )


def _torch_attention(q, k, v, mask, weights):
  """An independent reference: torch's `scaled_dot_product_attention` in float64, query head h
  reading key/value head h // groups (transformers' grouping), disallowed keys at -1e30. Returns
  the output (B, L, heads * d) and the gradients of sum(output * weights) in q, k, v."""
  import torch

  b, length, kv, groups, d = q.shape
  tq, tk, tv = (
    torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True) for x in (q, k, v)
  )
  heads = lambda x: x.permute(0, 2, 1, 3)  # (B, L, H, d) -> (B, H, L, d)  # noqa: E731
  query = heads(tq.reshape(b, length, kv * groups, d))
  key, value = (heads(x.repeat_interleave(groups, dim=2)) for x in (tk, tv))
  bias = torch.where(torch.tensor(np.asarray(mask))[:, None], 0.0, -1e30).to(torch.float64)
  out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias)
  out = out.permute(0, 2, 1, 3).reshape(b, length, -1)
  (out * torch.tensor(np.asarray(weights), dtype=torch.float64)).sum().backward()
  return out.detach().numpy(), [x.grad.numpy() for x in (tq, tk, tv)]


@needs_kernel
@pytest.mark.parametrize("causal", [True, False])
def test_kernel_values_and_gradients_equal_torch_sdpa(causal):
  """The kernel against torch's attention (not our jnp path): grouped heads, left padding, a
  head_dim that is not a multiple of 16, blocks that do not divide L. Causal: the causal & key
  padding mask; not causal: key padding only. Padding query rows are left out (they see no key,
  or only padding keys) and carry no weight in the loss."""
  q, k, v, mask, weights, valid = _inputs(b=3, length=37, kv=2, groups=3, d=12, pads=(0, 5, 11))
  if not causal:
    mask = jnp.broadcast_to(jnp.asarray(valid)[:, None, :], mask.shape)
  fn = lambda q, k, v: ka.attention(q, k, v, mask, 8, causal)  # noqa: E731
  got = np.asarray(jax.jit(fn)(q, k, v))
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), (0, 1, 2)))(q, k, v)
  want, want_grads = _torch_attention(q, k, v, mask, weights)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=1e-5)
  for name, a, c in zip("qkv", grads, want_grads):
    np.testing.assert_allclose(np.asarray(a), c, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


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
  np.testing.assert_allclose(
    np.asarray(jax.jit(_kernel(5))(q, k, v, mask)),
    np.asarray(jax.jit(_jnp(5))(q, k, v, mask)),
    atol=2e-6,
    rtol=1e-5,
  )
  stacked = [np.stack([x, x[::-1]]) for x in (q, k, v)]
  masks = jnp.stack([mask, mask[::-1]])
  got = jax.jit(jax.vmap(_kernel(5)))(*stacked, masks)
  want = jax.vmap(_jnp(5))(*stacked, masks)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=1e-5)


@needs_kernel
def test_dispatch():
  q, k, v, mask, _, _ = _inputs()
  target = "aotd_attention_fwd"
  assert target in _hlo(lambda q: blocked_causal_attention(q, k, v, mask, 4), q)
  assert target not in _hlo(
    lambda q: blocked_causal_attention(q, k, v, mask, 4, cpu_kernel=False), q
  )
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
  assert "aotd_attention" not in _hlo(fn, q)
  np.testing.assert_allclose(
    np.asarray(jax.jit(fn)(q)), np.asarray(_jnp(4)(q, k, v, mask)), atol=1e-6
  )


@needs_kernel
@pytest.mark.slow  # a whole train step twice; the kernel's own tests run fast
def test_llama_train_step_runs_the_kernel_and_matches_the_jnp_path():
  cfg = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
  )
  on = LlamaForCausalLM(
    LlamaConfig(**cfg), options=ComputeOptions(attention_block_size=6), rngs=nnx.Rngs(0)
  )
  off = LlamaForCausalLM(
    LlamaConfig(**cfg),
    options=ComputeOptions(attention_block_size=6, cpu_kernels=False),
    rngs=nnx.Rngs(0),
  )
  ids, mask, _ = left_padded_batch(vocab=64, length=20, pads=(0, 6, 3))

  def loss(m):
    logp = jax.nn.log_softmax(m(ids, mask).logits[:, :-1])
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    scored = mask[:, :-1] * mask[:, 1:]
    return jnp.sum(nll * scored) / scored.sum()

  grad_of = lambda m: nnx.grad(loss)(m)  # noqa: E731
  hlo = nnx.jit(grad_of).lower(on).compile().as_text()
  assert "aotd_attention_fwd" in hlo and "aotd_attention_bwd" in hlo
  assert "aotd_attention" not in nnx.jit(grad_of).lower(off).compile().as_text()
  want = dict(nnx.to_flat_state(nnx.jit(grad_of)(off)))
  for path, g in nnx.to_flat_state(nnx.jit(grad_of)(on)):
    np.testing.assert_allclose(
      np.asarray(g[...]), np.asarray(want[path][...]), atol=2e-5, err_msg=str(path)
    )


@needs_kernel
def test_the_kernel_checks_its_operands():
  q, k, v, mask, _, _ = _inputs()
  with pytest.raises(Exception, match="aotd_attention_fwd: mask is not"):
    jax.block_until_ready(ka._forward(q, k, v, mask[:, :, :-1], 4, True))
  with pytest.raises(Exception, match="keys and values do not fit"):
    jax.block_until_ready(ka._forward(q, k[:, :-1], v[:, :-1], mask, 4, True))
  with pytest.raises(Exception, match="block must be >= 1"):
    jax.block_until_ready(ka._forward(q, k, v, mask, 0, True))


@pytest.mark.skipif(
  platform.machine() not in ("x86_64", "AMD64") or build.find_compiler() is None,
  reason="needs an x86-64 C++ compiler",
)
def test_a_build_without_avx512_says_so(tmp_path):
  # CPUs without AVX-512 compile the source without its kernel: the library loads, reports no
  # support, and `available()` keeps the jnp path.
  out = tmp_path / "libattention_avx2.so"
  src = os.path.join(os.path.dirname(ka.__file__), "attention.cc")
  flags = [f for f in build._FLAGS if f != "-march=native"]
  subprocess.run(
    [
      build.find_compiler(),
      *flags,
      "-march=x86-64-v3",
      f"-I{jax.ffi.include_dir()}",
      src,
      "-o",
      str(out),
    ],
    check=True,
    timeout=300,
  )
  assert ctypes.cdll.LoadLibrary(str(out)).AotdAttentionSupported() == 0


def _clip_attention(cpu_kernels: bool, heads=3, d=8) -> clip.CLIPAttention:
  cfg = clip.CLIPVisionConfig(hidden_size=heads * d, num_attention_heads=heads)
  return clip.CLIPAttention(cfg, ComputeOptions(cpu_kernels=cpu_kernels), rngs=nnx.Rngs(0))


@needs_kernel
@pytest.mark.parametrize("length,masked", [(17, False), (65, True), (150, False)])
def test_full_attention_equals_clips_einsum_path(length, masked):
  """causal=False (CLIP's towers): values and gradients of the whole attention layer."""
  on, off = _clip_attention(True), _clip_attention(False)
  nnx.update(off, nnx.state(on))
  rng = np.random.default_rng(length)
  x = rng.standard_normal((2, length, 24)).astype(np.float32)
  mask = None
  if masked:  # CLIP text's (B, 1, L, L) causal & padding mask; row 0 of sequence 1 sees no key
    valid = np.arange(length)[None] >= np.array([0, 5])[:, None]
    mask = jnp.asarray(np.tril(np.ones((length, length), bool))[None, None] & valid[:, None, None])
  assert "aotd_attention_fwd" in _hlo(lambda x: on(x, mask), x)
  assert "aotd_attention" not in _hlo(lambda x: off(x, mask), x)
  np.testing.assert_allclose(
    np.asarray(jax.jit(on)(x, mask)), np.asarray(jax.jit(off)(x, mask)), atol=2e-6, rtol=1e-5
  )
  w = rng.standard_normal((2, length, 24)).astype(np.float32)
  if masked:
    w[1, :5] = 0  # padding queries: arbitrary in both paths, and no gradient from the kernel
  grad = lambda m: nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x, mask) * w), argnums=(0, 1)))(m, x)  # noqa: E731
  (gm_on, gx_on), (gm_off, gx_off) = grad(on), grad(off)
  np.testing.assert_allclose(np.asarray(gx_on), np.asarray(gx_off), atol=1e-5, rtol=1e-5)
  want = dict(nnx.to_flat_state(gm_off))
  for path, g in nnx.to_flat_state(gm_on):
    np.testing.assert_allclose(
      np.asarray(g[...]), np.asarray(want[path][...]), atol=1e-5, rtol=1e-5, err_msg=str(path)
    )


def test_cpu_kernels_option_reaches_both_towers_and_stays_out_of_config_json(tmp_path):
  cfg = LlavaNextVideoConfig(
    vision_config=clip.CLIPVisionConfig(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      image_size=28,
      patch_size=14,
    ),
    text_config=LlamaConfig(
      vocab_size=64,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
    ),
    video_token_index=60,
    image_token_index=61,
  )
  model = with_options(
    LlavaNextVideoForConditionalGeneration(cfg, rngs=nnx.Rngs(0)), cpu_kernels=False
  )
  assert not model.vision_tower.options.cpu_kernels and not model.language_model.options.cpu_kernels
  clip_model = abstract_model(
    lambda rngs: clip.CLIPModel(
      clip.CLIPConfig(), options=ComputeOptions(cpu_kernels=False), rngs=rngs
    )
  )
  assert not clip_model.vision_model.options.cpu_kernels  # the towers follow
  hf.save_pretrained(model, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert "cpu_kernels" not in f.read()
  loaded = hf.from_pretrained(str(tmp_path))
  assert loaded.vision_tower.options.cpu_kernels and loaded.language_model.options.cpu_kernels


@needs_kernel
def test_remat_and_concurrent_python_threads():
  """The kernel's custom VJP under `remat`, and calls from several Python threads at once."""
  cfg = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
  )
  plain = LlamaForCausalLM(
    LlamaConfig(**cfg), options=ComputeOptions(attention_block_size=8), rngs=nnx.Rngs(0)
  )
  remat = LlamaForCausalLM(
    LlamaConfig(**cfg),
    rngs=nnx.Rngs(0),
    options=ComputeOptions(attention_block_size=8, remat="full"),
  )
  ids, mask, _ = left_padded_batch(vocab=64, length=20, pads=(0, 6, 3))
  loss = lambda m: jnp.sum(m(ids, mask).logits * mask[:, :, None])  # noqa: E731
  want = dict(nnx.to_flat_state(nnx.jit(nnx.grad(loss))(plain)))
  assert "aotd_attention_bwd" in nnx.jit(nnx.grad(loss)).lower(remat).compile().as_text()
  for path, g in nnx.to_flat_state(nnx.jit(nnx.grad(loss))(remat)):
    np.testing.assert_allclose(
      np.asarray(g[...]), np.asarray(want[path][...]), atol=2e-5, err_msg=str(path)
    )

  import concurrent.futures

  q, k, v, mask, _, _ = _inputs(b=4, length=70, kv=2, groups=2, d=16, pads=(0, 3, 9, 30))
  fn = jax.jit(_kernel(16))
  want = np.asarray(fn(q, k, v, mask))
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    outs = list(pool.map(lambda _: np.asarray(fn(q, k, v, mask)), range(8)))
  for out in outs:
    np.testing.assert_array_equal(out, want)


@needs_kernel
@pytest.mark.parametrize("causal", [True, False])
def test_a_shared_mask_and_no_mask_equal_their_broadcast(causal):
  """(1, L, L) is one mask for the batch; None is every key (CLIP's vision tower): both give
  what the full (B, L, L) mask gives, values and gradients."""
  q, k, v, mask, weights, _ = _inputs(b=3, length=40, pads=(0, 0, 0))
  shared = mask[:1] if causal else mask[:1] | True
  full = jnp.broadcast_to(shared, mask.shape)
  for given in [shared, None] if not causal else [shared]:
    fn = lambda q, k, v, m=given: ka.attention(q, k, v, m, 16, causal)  # noqa: E731
    ref = lambda q, k, v: ka.attention(q, k, v, full, 16, causal)  # noqa: E731
    np.testing.assert_array_equal(
      np.asarray(jax.jit(fn)(q, k, v)), np.asarray(jax.jit(ref)(q, k, v))
    )
    got = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(lambda q, k, v: jnp.sum(ref(q, k, v) * weights), (0, 1, 2)))(q, k, v)
    for a, c in zip(got, want):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
