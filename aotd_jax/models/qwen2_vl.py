"""Qwen2-VL (`Qwen2VLForConditionalGeneration`) in Flax NNX, ported from transformers.

Vision: a ViT over dynamic-resolution patches. Each patch is `temporal_patch_size` (2) frames x
14 x 14 pixels (an image is its frame repeated), embedded by one matmul (transformers' Conv3d
with kernel = stride); attention runs within each temporal patch-slice of an image/video
("frame"), with 2-D rotary embeddings (row, column) over the head dimension; the 2 x 2 patch
merger (LayerNorm, MLP) turns each block of four neighbouring patches into one LM token. The
processor (`aotd_jax.data.qwen2_vl_processing`) already orders patches block-major, so the merger
is a reshape.

Language model: Qwen2's decoder (`aotd_jax.models.llama` with q/k/v biases) with M-RoPE: position
ids are (3, B, L) (temporal, height, width); the head dimension's frequencies are split in
`mrope_section` parts, each rotated by one of the three ids. Text tokens carry three equal ids;
a video's tokens carry (start + t, start + row, start + column).

Submodules follow transformers' current layout (`visual`, `language_model` = a full
`Qwen2VLTextForCausalLM` holding `model.*` and `lm_head`); `aotd_jax.hf.qwen2_vl` reads both key
layouts transformers has written.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.models import rope
from aotd_jax.models.clip import _dense, _layer_norm, activation, attend
from aotd_jax.models.remat import remat_call
from aotd_jax.sharding import constrain


# ------------------------------------------------------------------------------------- vision


@dataclasses.dataclass(frozen=True)
class Qwen2VLVisionConfig:
  """transformers' `Qwen2VLVisionConfig` fields plus our dtype / remat / precision / kernel options."""
  depth: int = 32
  embed_dim: int = 1280
  hidden_size: int = 3584  # the LM's: the merger's output size
  hidden_act: str = "quick_gelu"
  mlp_ratio: int = 4
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  rope_theta: float = 10000.0
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  matmul_precision: str = "default"
  # On a single CPU device, float32 attention runs through aotd_jax's C++ kernel.
  cpu_kernels: bool = True

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f"Qwen2VLVisionConfig: embed_dim {self.embed_dim} is not divisible by "
                       f"num_heads {self.num_heads}")
    if (self.embed_dim // self.num_heads) % 4:
      raise ValueError(f"Qwen2VLVisionConfig: head dim {self.embed_dim // self.num_heads} must be a "
                       "multiple of 4 (2-D rotary embedding: half for rows, half for columns)")
    activation(self.hidden_act)

  # Names `aotd_jax.models.clip`'s layer helpers read.
  @property
  def layer_norm_eps(self) -> float:
    return 1e-6

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size


def _grid_list(grid_thw) -> list[tuple[int, int, int]]:
  """Concrete (N, 3) `grid_thw` -> list of (t, h, w) ints, with a clear error if it is traced."""
  if isinstance(grid_thw, jax.core.Tracer):
    raise ValueError("Qwen2-VL: grid_thw must be concrete (numpy or a tuple), not a traced array: "
                     "it fixes the attention segments and the token count")
  grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  return [tuple(int(v) for v in row) for row in grid]


def vision_position_ids(grid_thw, merge: int) -> np.ndarray:
  """(patches, 2) (row, column) of every patch in the processor's block-major order."""
  out = []
  for t, h, w in _grid_list(grid_thw):
    if h % merge or w % merge:
      raise ValueError(f"Qwen2-VL: grid {(t, h, w)} is not a multiple of spatial_merge_size {merge}")
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // merge, merge, w // merge, merge)
    hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
    out.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
  return np.concatenate(out, axis=0) if out else np.zeros((0, 2), np.int64)


def vision_segments(grid_thw) -> list[int]:
  """Token count of each attention segment: one per temporal patch-slice of each image/video."""
  return [h * w for t, h, w in _grid_list(grid_thw) for _ in range(t)]


class Qwen2VLVisionAttention(nnx.Module):
  """Fused-qkv self-attention with 2-D rotary embeddings, within segments."""

  def __init__(self, cfg: Qwen2VLVisionConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.head_dim
    self.cpu_kernels = cfg.cpu_kernels
    self.qkv = _dense(cfg, d, 3 * d, ("embed", "heads"), rngs=rngs)
    self.proj = _dense(cfg, d, d, ("heads", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: tuple[int, ...]):
    """x (N, D) with N = sum(segments); cos/sin (N, head_dim) float32."""
    n, d = x.shape
    h, hd = self.num_heads, self.head_dim
    qkv = self.qkv(x).reshape(n, 3, h, hd)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    # transformers rotates in float32 and casts back.
    q = rope.apply_rope(q[None].astype(jnp.float32), cos[None], sin[None])[0].astype(x.dtype)
    k = rope.apply_rope(k[None].astype(jnp.float32), cos[None], sin[None])[0].astype(x.dtype)
    s, longest = len(segments), max(segments)
    if len(set(segments)) == 1:
      # Every frame the same size (a batch of same-size clips): segments are a reshape.
      q, k, v = (t.reshape(s, longest, h, hd) for t in (q, k, v))
      mask = None
    else:
      # Mixed sizes: each segment padded to the longest, padded keys masked out.
      starts = np.concatenate([[0], np.cumsum(segments)[:-1]])
      idx = starts[:, None] + np.arange(longest)[None, :]
      valid = np.arange(longest)[None, :] < np.asarray(segments)[:, None]
      idx = np.where(valid, idx, 0)
      q, k, v = (jnp.take(t, jnp.asarray(idx), axis=0) for t in (q, k, v))
      mask = jnp.broadcast_to(jnp.asarray(valid)[:, None, None, :], (s, 1, longest, longest))
    out = attend(q, k, v, mask, self.cpu_kernels)
    if mask is None:
      out = out.reshape(n, d)
    else:
      out = out.reshape(s * longest, d)[jnp.asarray(np.flatnonzero(valid.reshape(-1)))]
    return self.proj(out)


class Qwen2VLVisionMlp(nnx.Module):
  def __init__(self, cfg: Qwen2VLVisionConfig, *, rngs: nnx.Rngs):
    hidden = cfg.embed_dim * cfg.mlp_ratio
    self.act = activation(cfg.hidden_act)
    self.fc1 = _dense(cfg, cfg.embed_dim, hidden, ("embed", "mlp"), rngs=rngs)
    self.fc2 = _dense(cfg, hidden, cfg.embed_dim, ("mlp", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(constrain(self.act(self.fc1(x)), ("activation_length", "activation_mlp")))


class Qwen2VLVisionBlock(nnx.Module):
  """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, cfg: Qwen2VLVisionConfig, *, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(cfg, cfg.embed_dim, rngs=rngs)
    self.norm2 = _layer_norm(cfg, cfg.embed_dim, rngs=rngs)
    self.attn = Qwen2VLVisionAttention(cfg, rngs=rngs)
    self.mlp = Qwen2VLVisionMlp(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, segments):
    x = x + self.attn(self.norm1(x), cos, sin, segments)
    x = x + self.mlp(self.norm2(x))
    return constrain(x, ("activation_length", "activation_embed"))


class Qwen2VLPatchEmbed(nnx.Module):
  """transformers' Conv3d (kernel = stride = (2, 14, 14), no bias) as one matmul over each
  flattened (channels, 2, 14, 14) patch."""

  def __init__(self, cfg: Qwen2VLVisionConfig, *, rngs: nnx.Rngs):
    self.proj = _dense(cfg, cfg.patch_dim, cfg.embed_dim, ("conv_in", "embed"), rngs=rngs, bias=False)

  def __call__(self, x):
    return self.proj(x)


class Qwen2VLPatchMerger(nnx.Module):
  """LayerNorm, then each block of merge^2 patches (consecutive rows) -> MLP -> one LM token."""

  def __init__(self, cfg: Qwen2VLVisionConfig, *, rngs: nnx.Rngs):
    self.merged = cfg.embed_dim * cfg.spatial_merge_size ** 2
    self.ln_q = _layer_norm(cfg, cfg.embed_dim, rngs=rngs)
    self.mlp = nnx.List([_dense(cfg, self.merged, self.merged, ("embed", "mlp"), rngs=rngs),
                         _dense(cfg, self.merged, cfg.hidden_size, ("mlp", "embed"), rngs=rngs)])

  def __call__(self, x):
    x = self.ln_q(x).reshape(-1, self.merged)
    x = jax.nn.gelu(self.mlp[0](x), approximate=False)
    return self.mlp[1](x)


def _run_block(block, x, cos, sin, segments):
  return block(x, cos, sin, segments)


class Qwen2VisionTransformer(nnx.Module):
  """transformers' `Qwen2VisionTransformerPretrainedModel`: flattened patches -> merged tokens."""

  def __init__(self, config: Qwen2VLVisionConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.patch_embed = Qwen2VLPatchEmbed(config, rngs=rngs)
    self.blocks = nnx.List([Qwen2VLVisionBlock(config, rngs=rngs) for _ in range(config.depth)])
    self.merger = Qwen2VLPatchMerger(config, rngs=rngs)

  def rotary(self, grid_thw) -> tuple[jax.Array, jax.Array]:
    """cos/sin (patches, head_dim) float32: rows rotate the first quarter-pairs, columns the next."""
    cfg = self.config
    pos = vision_position_ids(grid_thw, cfg.spatial_merge_size)
    dim = cfg.head_dim // 2
    inv = 1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    freqs = jnp.asarray(pos, jnp.float32)[:, :, None] * jnp.asarray(inv, jnp.float32)  # (N, 2, dim/2)
    freqs = freqs.reshape(pos.shape[0], -1)  # rows' then columns' frequencies
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)

  def __call__(self, pixel_values: jax.Array, grid_thw, *, output_hidden_states: bool = False):
    """pixel_values (patches, C*2*14*14) in the processor's order, grid_thw (N, 3) concrete ->
    merged tokens (patches / merge^2, hidden_size); with `output_hidden_states`, also the
    list [patch embeddings, after block 1, ..., after the last block] (before the merger)."""
    cfg = self.config
    grid = _grid_list(grid_thw)
    shape = tuple(np.shape(pixel_values))
    n = sum(t * h * w for t, h, w in grid)
    if len(shape) != 2 or shape != (n, cfg.patch_dim):
      raise ValueError(f"Qwen2-VL: pixel values must have shape ({n}, {cfg.patch_dim}) "
                       f"(patches of grid_thw {grid}, {cfg.in_channels} x {cfg.temporal_patch_size} "
                       f"x {cfg.patch_size} x {cfg.patch_size} each), got {shape}")
    segments = tuple(vision_segments(grid))
    cos, sin = self.rotary(grid)
    x = self.patch_embed(jnp.asarray(pixel_values).astype(cfg.dtype))
    x = constrain(x, ("activation_length", "activation_embed"))
    states = [x]
    for block in self.blocks:
      if cfg.remat:
        x = remat_call(lambda b, h, c, s: _run_block(b, h, c, s, segments), block, x, cos, sin)
      else:
        x = block(x, cos, sin, segments)
      states.append(x)
    merged = self.merger(x)
    return (merged, states) if output_hidden_states else merged


def with_vision_options(tower: Qwen2VisionTransformer, **options) -> Qwen2VisionTransformer:
  """`tower`'s weights under its config with `options` (cpu_kernels, remat, ...) replaced."""
  from aotd_jax.models.options import with_config  # pylint: disable=g-import-not-at-top
  return with_config(tower, dataclasses.replace(tower.config, **options))
