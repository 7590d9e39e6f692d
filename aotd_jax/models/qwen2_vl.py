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
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from aotd_jax.layers import attention as attention_lib
from aotd_jax.layers import rope
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.clip import activation, encoder_dense, encoder_layer_norm
from aotd_jax.models.llama import KVCache, LlamaConfig
from aotd_jax.models import pixel_norms
from aotd_jax.models.qwen2 import Qwen2ForCausalLM
from aotd_jax.models.remat import remat_call
from aotd_jax.sharding import constrain


# ------------------------------------------------------------------------------------- vision


@dataclasses.dataclass(frozen=True)
class Qwen2VLVisionConfig:
  """transformers' `Qwen2VLVisionConfig` fields (plus the fixed frame size, see `image_size`)."""

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
  # Ours, not transformers': the square size (pixels, a multiple of patch_size * merge) the AoTD
  # data pipeline and evaluation resize video frames to; transformers' processor picks a size
  # per video (`qwen2_vl_processing.smart_resize`), which a fixed-shape training batch cannot.
  image_size: int = 336

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(
        f"Qwen2VLVisionConfig: embed_dim {self.embed_dim} is not divisible by "
        f"num_heads {self.num_heads}"
      )
    if (self.embed_dim // self.num_heads) % 4:
      raise ValueError(
        f"Qwen2VLVisionConfig: head dim {self.embed_dim // self.num_heads} must be a "
        "multiple of 4 (2-D rotary embedding: half for rows, half for columns)"
      )
    activation(self.hidden_act)
    if self.image_size % (self.patch_size * self.spatial_merge_size):
      raise ValueError(
        f"Qwen2VLVisionConfig: image_size {self.image_size} must be a multiple of "
        f"patch_size * spatial_merge_size = {self.patch_size * self.spatial_merge_size}"
      )

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
    raise ValueError(
      "Qwen2-VL: grid_thw must be concrete (numpy or a tuple), not a traced array: "
      "it fixes the attention segments and the token count"
    )
  grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  return [tuple(int(v) for v in row) for row in grid]


def vision_position_ids(grid_thw, merge: int) -> np.ndarray:
  """(patches, 2) (row, column) of every patch in the processor's block-major order."""
  out = []
  for t, h, w in _grid_list(grid_thw):
    if h % merge or w % merge:
      raise ValueError(
        f"Qwen2-VL: grid {(t, h, w)} is not a multiple of spatial_merge_size {merge}"
      )
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

  def __init__(self, cfg: Qwen2VLVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.head_dim
    self.cpu_kernels = options.cpu_kernels
    self.qkv = encoder_dense(cfg, options, d, 3 * d, ("embed", "heads"), rngs=rngs)
    self.proj = encoder_dense(cfg, options, d, d, ("heads", "embed"), rngs=rngs)

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
      mask = jnp.broadcast_to(jnp.asarray(valid)[:, None, :], (s, longest, longest))
    out = attention_lib.attention(q, k, v, mask, cpu_kernels=self.cpu_kernels)
    if mask is None:
      out = out.reshape(n, d)
    else:
      out = out.reshape(s * longest, d)[jnp.asarray(np.flatnonzero(valid.reshape(-1)))]
    return self.proj(out)


class Qwen2VLVisionMlp(nnx.Module):
  def __init__(self, cfg: Qwen2VLVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    hidden = cfg.embed_dim * cfg.mlp_ratio
    self.act = activation(cfg.hidden_act)
    self.fc1 = encoder_dense(cfg, options, cfg.embed_dim, hidden, ("embed", "mlp"), rngs=rngs)
    self.fc2 = encoder_dense(cfg, options, hidden, cfg.embed_dim, ("mlp", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(constrain(self.act(self.fc1(x)), ("activation_length", "activation_mlp")))


class Qwen2VLVisionBlock(nnx.Module):
  """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, cfg: Qwen2VLVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.norm1 = encoder_layer_norm(cfg, options, cfg.embed_dim, rngs=rngs)
    self.norm2 = encoder_layer_norm(cfg, options, cfg.embed_dim, rngs=rngs)
    self.attn = Qwen2VLVisionAttention(cfg, options, rngs=rngs)
    self.mlp = Qwen2VLVisionMlp(cfg, options, rngs=rngs)

  def __call__(self, x, cos, sin, segments):
    x = x + self.attn(self.norm1(x), cos, sin, segments)
    x = x + self.mlp(self.norm2(x))
    return constrain(x, ("activation_length", "activation_embed"))


class Qwen2VLPatchEmbed(nnx.Module):
  """transformers' Conv3d (kernel = stride = (2, 14, 14), no bias) as one matmul over each
  flattened (channels, 2, 14, 14) patch."""

  def __init__(self, cfg: Qwen2VLVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.proj = encoder_dense(
      cfg, options, cfg.patch_dim, cfg.embed_dim, ("conv_in", "embed"), rngs=rngs, bias=False
    )

  def __call__(self, x):
    return self.proj(x)


class Qwen2VLPatchMerger(nnx.Module):
  """LayerNorm, then each block of merge^2 patches (consecutive rows) -> MLP -> one LM token."""

  def __init__(self, cfg: Qwen2VLVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    m = self.merged = cfg.embed_dim * cfg.spatial_merge_size**2
    self.ln_q = encoder_layer_norm(cfg, options, cfg.embed_dim, rngs=rngs)
    self.mlp = nnx.List(
      [
        encoder_dense(cfg, options, m, m, ("embed", "mlp"), rngs=rngs),
        encoder_dense(cfg, options, m, cfg.hidden_size, ("mlp", "embed"), rngs=rngs),
      ]
    )

  def __call__(self, x):
    x = self.ln_q(x).reshape(-1, self.merged)
    x = jax.nn.gelu(self.mlp[0](x), approximate=False)
    return self.mlp[1](x)


def _run_block(block, x, cos, sin, segments):
  return block(x, cos, sin, segments)


class Qwen2VisionTransformer(nnx.Module):
  """transformers' `Qwen2VisionTransformerPretrainedModel`: flattened patches -> merged tokens."""

  def __init__(
    self, config: Qwen2VLVisionConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.patch_embed = Qwen2VLPatchEmbed(config, options, rngs=rngs)
    self.blocks = nnx.List(
      [Qwen2VLVisionBlock(config, options, rngs=rngs) for _ in range(config.depth)]
    )
    self.merger = Qwen2VLPatchMerger(config, options, rngs=rngs)

  def rotary(self, grid_thw) -> tuple[jax.Array, jax.Array]:
    """cos/sin (patches, head_dim) float32: rows rotate the first quarter-pairs, columns the next."""
    cfg = self.config
    pos = vision_position_ids(grid_thw, cfg.spatial_merge_size)
    dim = cfg.head_dim // 2
    inv = 1.0 / (
      np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    )
    freqs = jnp.asarray(pos, jnp.float32)[:, :, None] * jnp.asarray(
      inv, jnp.float32
    )  # (N, 2, dim/2)
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
      raise ValueError(
        f"Qwen2-VL: pixel values must have shape ({n}, {cfg.patch_dim}) "
        f"(patches of grid_thw {grid}, {cfg.in_channels} x {cfg.temporal_patch_size} "
        f"x {cfg.patch_size} x {cfg.patch_size} each), got {shape}"
      )
    segments = tuple(vision_segments(grid))
    cos, sin = self.rotary(grid)
    opt = self.options
    x = self.patch_embed(jnp.asarray(pixel_values).astype(opt.dtype))
    x = constrain(x, ("activation_length", "activation_embed"))
    states = [x]
    for block in self.blocks:
      if opt.remat_enabled:
        x = remat_call(
          lambda b, h, c, s: _run_block(b, h, c, s, segments),
          block,
          x,
          cos,
          sin,
          policy=opt.checkpoint_policy(),
        )
      else:
        x = block(x, cos, sin, segments)
      states.append(x)
    merged = self.merger(x)
    return (merged, states) if output_hidden_states else merged


# ------------------------------------------------------------------------------ language model


@dataclasses.dataclass(frozen=True)
class Qwen2VLTextConfig(LlamaConfig):
  """A Qwen2 `LlamaConfig` (q/k/v biases) with M-RoPE: `mrope_section` splits the head's
  head_dim // 2 frequencies into (temporal, height, width) parts."""

  mrope_section: tuple = (16, 24, 24)

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "mrope_section", tuple(int(v) for v in self.mrope_section))
    if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
      raise ValueError(
        f"Qwen2VLTextConfig: mrope_section {list(self.mrope_section)} must be three "
        f"parts summing to head_dim // 2 = {self.head_dim // 2}"
      )
    if self.rope_scaling is not None:
      raise ValueError("Qwen2VLTextConfig: rope scaling is not supported with M-RoPE")


# transformers' `Qwen2VLTextConfig` defaults where they differ from `LlamaConfig`'s.
QWEN2_VL_TEXT_DEFAULTS = dict(
  vocab_size=152064,
  hidden_size=8192,
  intermediate_size=29568,
  num_hidden_layers=80,
  num_attention_heads=64,
  num_key_value_heads=8,
  max_position_embeddings=32768,
  rms_norm_eps=1e-5,
  rope_theta=1e6,
  bos_token_id=151643,
  eos_token_id=151645,
  pad_token_id=None,
)


def qwen2_vl_text_config(**fields) -> Qwen2VLTextConfig:
  """A `Qwen2VLTextConfig` with transformers' defaults and Qwen2's q/k/v biases."""
  return Qwen2VLTextConfig(**{**QWEN2_VL_TEXT_DEFAULTS, **fields, "qkv_bias": True})


def mrope_cos_sin(
  position_ids: jax.Array, head_dim: int, theta: float, section: Sequence[int], dtype
) -> tuple[jax.Array, jax.Array]:
  """cos/sin (B, L, head_dim) of M-RoPE: position_ids (3, B, L) or (B, L) (text: three equal)."""
  if position_ids.ndim == 2:
    position_ids = jnp.broadcast_to(position_ids[None], (3,) + position_ids.shape)
  inv = rope.inv_frequencies(head_dim, theta, None, 0)
  axis_of = np.repeat(np.arange(3), section)  # which of (t, h, w) rotates each frequency
  pos = position_ids.astype(jnp.float32)[jnp.asarray(axis_of)]  # (head_dim/2, B, L)
  freqs = jnp.moveaxis(pos, 0, -1) * inv
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class Qwen2VLTextForCausalLM(Qwen2ForCausalLM):
  """Qwen2-VL's language model: the Qwen2 decoder with M-RoPE. `position_ids` may be (3, B, L)
  (temporal, height, width) or (B, L) (the three equal, as for text)."""

  hf_architecture = "Qwen2VLForConditionalGeneration"

  def rope_tables(self, position_ids, dtype):
    cfg = self.config
    return mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, dtype)


# ---------------------------------------------------------------------------------- the VLM


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig:
  """transformers' `Qwen2VLConfig` fields (how to compute is `ComputeOptions`)."""

  vision_config: Qwen2VLVisionConfig = dataclasses.field(default_factory=Qwen2VLVisionConfig)
  text_config: Qwen2VLTextConfig = dataclasses.field(default_factory=qwen2_vl_text_config)
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  tie_word_embeddings: bool = False

  def __post_init__(self):
    text = self.text_config
    if not isinstance(text, Qwen2VLTextConfig):
      raise ValueError(
        f"Qwen2VLConfig: text_config must be a Qwen2VLTextConfig, got {type(text).__name__}"
      )
    if self.vision_config.hidden_size != text.hidden_size:
      raise ValueError(
        f"Qwen2VLConfig: vision_config.hidden_size {self.vision_config.hidden_size} "
        f"(the merger's output) must equal text_config.hidden_size {text.hidden_size}"
      )
    if self.tie_word_embeddings and not text.tie_word_embeddings:
      object.__setattr__(self, "text_config", dataclasses.replace(text, tie_word_embeddings=True))

  # The names the AoTD data pipeline, trainer and evaluation read (LLaVA students' interface).
  @property
  def video_token_index(self) -> int:
    return self.video_token_id

  @property
  def image_token_index(self) -> int:
    return self.image_token_id

  @property
  def video_token(self) -> str:
    """The placeholder text of one video feature token in Qwen2-VL's tokenizer."""
    return "<|video_pad|>"

  @property
  def video_resize(self) -> str:
    """Frames are resized straight to `vision_config.image_size` squared (fixed batch shapes)."""
    return "square"

  @property
  def pixel_normalization(self) -> pixel_norms.Normalization:
    """(image_mean, image_std) of the released Qwen2-VL processor: CLIP's."""
    return pixel_norms.CLIP

  def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(t, h, w) patch grid of a clip (an image is one frame): frames padded to a multiple of
    temporal_patch_size by repeating the last, as transformers' processor does."""
    vc = self.vision_config
    return (
      -(-num_frames // vc.temporal_patch_size),
      height // vc.patch_size,
      width // vc.patch_size,
    )

  def tokens(self, grid_thw) -> int:
    """LM tokens of one (t, h, w) grid after the merger."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // self.vision_config.spatial_merge_size**2

  def video_tokens(self, num_frames: int) -> int:
    """`<|video_pad|>` tokens of a clip of `num_frames` square frames of `vision_config.image_size`."""
    s = self.vision_config.image_size
    return self.tokens(self.grid(num_frames, s, s))


def trainable_filter(options: ComputeOptions):
  """The `nnx` filter of parameters to optimise: all, or all but the vision tower when frozen."""
  if options.freeze_vision_tower:
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("visual")))
  return nnx.Param


def rope_index(
  config: Qwen2VLConfig, input_ids, attention_mask=None, image_grid_thw=None, video_grid_thw=None
) -> tuple[np.ndarray, np.ndarray]:
  """M-RoPE position ids (3, B, L) and deltas (B,) for concrete ids, as transformers'
  `get_rope_index`: a run of image/video tokens takes (start + t, start + row, start + column)
  of its next grid; text after it continues at start + max(rows, columns) (transformers
  advances by the spatial extent only); text tokens count up by one. Padding gets 0.
  `delta = max position + 1 - real tokens`: decode step k of a row sits at its text position +
  delta."""
  ids = np.asarray(input_ids)
  b, l = ids.shape
  mask = (
    np.ones((b, l), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  )
  merge = config.vision_config.spatial_merge_size
  grids = {
    1: iter(_grid_list(image_grid_thw) if image_grid_thw is not None else []),
    2: iter(_grid_list(video_grid_thw) if video_grid_thw is not None else []),
  }
  kinds = np.where(ids == config.image_token_id, 1, np.where(ids == config.video_token_id, 2, 0))
  out = np.zeros((3, b, l), np.int64)
  deltas = np.zeros((b,), np.int64)
  for row in range(b):
    kind = kinds[row][mask[row]]
    parts, pos, i = [], 0, 0
    while i < len(kind):
      j = i
      while j < len(kind) and kind[j] == kind[i]:
        j += 1
      if kind[i] == 0:
        parts.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
        pos += j - i
      else:
        what = "image" if kind[i] == 1 else "video"
        try:
          t, h, w = next(grids[kind[i]])
        except StopIteration:
          raise ValueError(
            f"Qwen2-VL: row {row} has more {what} token runs than {what} grids"
          ) from None
        h, w = h // merge, w // merge
        if j - i != t * h * w:
          raise ValueError(
            f"Qwen2-VL: row {row} has a run of {j - i} {what} tokens where its grid "
            f"{(t, h * merge, w * merge)} makes {t * h * w}"
          )
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        parts.append(np.stack([tt, hh, ww]).reshape(3, -1) + pos)
        pos += max(h, w)
      i = j
    if parts:
      pos_row = np.concatenate(parts, axis=1)
      out[:, row, mask[row]] = pos_row
      deltas[row] = pos_row.max() + 1 - len(kind)
  return out, deltas


def rope_index_uniform(
  config: Qwen2VLConfig,
  input_ids: jax.Array,
  attention_mask: jax.Array,
  token_id: int,
  grid: tuple[int, int, int],
) -> jax.Array:
  """`rope_index` inside a jitted graph (traced ids) when every media run is one clip of the
  same `grid` (t, h, w): the trainer's batches (B clips of T square frames). (3, B, L) int32."""
  merge = config.vision_config.spatial_merge_size
  t, h, w = grid[0], grid[1] // merge, grid[2] // merge
  n = t * h * w
  valid = attention_mask.astype(bool)
  media = (input_ids == token_id) & valid
  text = valid & ~media
  texts_before = jnp.cumsum(text, axis=-1) - text  # real text tokens before each token
  media_before = jnp.cumsum(media, axis=-1) - media
  k = media_before  # for a media token: its index among the row's media tokens
  blocks = jnp.where(media, k // n, media_before // n)  # whole clips before a text token
  start = texts_before + blocks * max(h, w)
  o = k % n
  dims = jnp.stack([o // (h * w), (o % (h * w)) // w, o % w])  # (3, B, L)
  pos = start[None] + jnp.where(media[None], dims, 0)
  return jnp.where(valid[None], pos, 0).astype(jnp.int32)


def patchify_frames(
  config: Qwen2VLConfig, frames: jax.Array
) -> tuple[jax.Array, tuple[int, int, int]]:
  """(B, T, C, H, W) normalised frames -> ((B * t*h*w, C*2*P*P) patches in the processor's
  order, the (t, h, w) grid of each clip): transformers' video processor's `patchify`, frames
  padded to a multiple of temporal_patch_size by repeating the last."""
  vc = config.vision_config
  b, n, c, hh, ww = frames.shape
  tp, p, m = vc.temporal_patch_size, vc.patch_size, vc.spatial_merge_size
  if c != vc.in_channels or hh % (p * m) or ww % (p * m):
    raise ValueError(
      f"Qwen2-VL: video frames must be (batch, frames, {vc.in_channels}, H, W) with H "
      f"and W multiples of {p * m}, got {tuple(frames.shape)}"
    )
  if n % tp:
    frames = jnp.concatenate([frames, jnp.repeat(frames[:, -1:], tp - n % tp, axis=1)], axis=1)
  t, gh, gw = frames.shape[1] // tp, hh // p, ww // p
  x = frames.reshape(b, t, tp, c, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
  return x.reshape(b * t * gh * gw, c * tp * p * p), (t, gh, gw)


@struct.dataclass
class Qwen2VLOutput:
  """transformers' names: `logits`, `hidden_states` (LM), `cache`, `rope_deltas` (B,) (for
  decoding after this prompt), and the merged `image_hidden_states` / `video_hidden_states`."""

  logits: jax.Array
  hidden_states: tuple | None = None
  cache: KVCache | None = None
  rope_deltas: jax.Array | None = None
  image_hidden_states: jax.Array | None = None
  video_hidden_states: jax.Array | None = None


def _check_count(input_ids, token_id: int, n_features: int, what: str, grids) -> None:
  """Clear error when the prompt's placeholders and the features disagree (concrete ids only)."""
  if isinstance(input_ids, jax.core.Tracer):
    return
  n_tokens = int(np.sum(np.asarray(input_ids) == token_id))
  if n_tokens != n_features:
    raise ValueError(
      f"{what} features and {what} tokens do not match: input_ids hold {n_tokens} {what} tokens "
      f"(id {token_id}) but the {what} grids {grids} give {n_features} features. Expand each "
      f"{what} placeholder to t*h*w/4 tokens of its grid."
    )


class Qwen2VLForConditionalGeneration(nnx.Module):
  """Qwen2-VL with transformers' interface.

  `__call__(input_ids, attention_mask, pixel_values=, image_grid_thw=, pixel_values_videos=,
  video_grid_thw=, ...)`: media as the processor makes them (flattened patches and concrete
  grids), or `pixel_values_videos` as frames (B, T, C, H, W) (one clip per row, the AoTD
  pipeline's batches: patchified here, the grid read from the shape). Without `position_ids`,
  the M-RoPE positions come from the ids (`rope_index`; inside a jitted graph
  `rope_index_uniform`, for frames).
  """

  hf_architecture = "Qwen2VLForConditionalGeneration"

  def __init__(
    self, config: Qwen2VLConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.visual = Qwen2VisionTransformer(config.vision_config, options=options, rngs=rngs)
    self.language_model = Qwen2VLTextForCausalLM(config.text_config, options=options, rngs=rngs)

  def _features(self, pixels, grid):
    x = self.visual(pixels, grid)
    if self.options.freeze_vision_tower:
      x = jax.lax.stop_gradient(x)
    return x

  def get_image_features(self, pixel_values, image_grid_thw) -> jax.Array:
    """(patches, C*2*P*P), grids (N, 3) -> (tokens, hidden) of all images, in order."""
    return self._features(pixel_values, image_grid_thw)

  def get_video_features(self, pixel_values_videos, video_grid_thw=None):
    """Flattened patches with `video_grid_thw`, or frames (B, T, C, H, W) -> ((tokens, hidden),
    the grids as a list)."""
    if video_grid_thw is None:
      if np.ndim(pixel_values_videos) != 5:
        raise ValueError(
          "Qwen2-VL: pixel_values_videos without video_grid_thw must be frames "
          f"(batch, frames, channels, H, W), got shape {np.shape(pixel_values_videos)}"
        )
        # (flattened patches need their grids)
      patches, grid = patchify_frames(self.config, jnp.asarray(pixel_values_videos))
      grids = [grid] * int(np.shape(pixel_values_videos)[0])
      return self._features(patches, grids), grids
    grids = _grid_list(video_grid_thw)
    return self._features(pixel_values_videos, grids), grids

  def merge_embeddings(
    self,
    input_ids,
    *,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
  ):
    """(inputs_embeds (B, L, hidden), image features or None, video features or None, video grids)."""
    from aotd_jax.models.llava_next_video import _scatter_features  # pylint: disable=g-import-not-at-top

    cfg = self.config
    embeds = self.language_model.embed(input_ids)
    image_features = video_features = video_grids = None
    if pixel_values is not None:
      if image_grid_thw is None:
        raise ValueError("Qwen2-VL: pixel_values need image_grid_thw")
      grids = _grid_list(image_grid_thw)
      _check_count(input_ids, cfg.image_token_id, sum(cfg.tokens(g) for g in grids), "image", grids)
      image_features = self.get_image_features(pixel_values, grids)
      embeds = _scatter_features(embeds, input_ids == cfg.image_token_id, image_features)
    if pixel_values_videos is not None:
      if video_grid_thw is None and np.ndim(pixel_values_videos) == 5:
        b, n, _, hh, ww = np.shape(pixel_values_videos)
        video_grids = [cfg.grid(n, hh, ww)] * b
      else:
        video_grids = _grid_list(video_grid_thw) if video_grid_thw is not None else None
      if video_grids is not None:
        _check_count(
          input_ids,
          cfg.video_token_id,
          sum(cfg.tokens(g) for g in video_grids),
          "video",
          video_grids,
        )
      video_features, video_grids = self.get_video_features(pixel_values_videos, video_grid_thw)
      embeds = _scatter_features(embeds, input_ids == cfg.video_token_id, video_features)
    return embeds, image_features, video_features, video_grids

  def position_ids(self, input_ids, attention_mask, *, image_grid_thw=None, video_grids=None):
    """(3, B, L) M-RoPE positions and (B,) deltas; None, None for a text-only prompt."""
    if image_grid_thw is None and video_grids is None:
      return None, None
    if isinstance(input_ids, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer):
      if image_grid_thw is not None or len(set(video_grids)) != 1:
        raise ValueError(
          "Qwen2-VL: inside jit, M-RoPE positions are computed for videos of one "
          "grid only (frames (B, T, C, H, W)); pass position_ids for other inputs"
        )
      mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else attention_mask
      pos = rope_index_uniform(
        self.config, input_ids, mask, self.config.video_token_id, video_grids[0]
      )
      deltas = jnp.max(pos, axis=(0, 2)) + 1 - jnp.sum(mask, axis=-1)
      return pos, deltas
    pos, deltas = rope_index(self.config, input_ids, attention_mask, image_grid_thw, video_grids)
    return jnp.asarray(pos, jnp.int32), jnp.asarray(deltas, jnp.int32)

  def __call__(
    self,
    input_ids=None,
    attention_mask=None,
    *,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
    inputs_embeds=None,
    position_ids=None,
    cache: KVCache | None = None,
    output_hidden_states: bool = False,
    logits_to_keep: int = 0,
    prefill: bool = False,
  ) -> Qwen2VLOutput:
    """Logits (B, L, vocab) of the prompt with its images/videos merged in.

    Args:
      input_ids: (B, L) ids with `<|image_pad|>` / `<|video_pad|>` placeholders, one per merged
        token. attention_mask: (B, L), 1 for tokens, 0 for (left) padding; (B, slots) with a cache.
      pixel_values / image_grid_thw: the image processor's patches and (N, 3) grids.
      pixel_values_videos / video_grid_thw: the video processor's patches and grids, or frames
        (B, T, C, H, W) without a grid.
      position_ids: (3, B, L) or (B, L); default from the ids and grids (see the class doc).
      cache, output_hidden_states, logits_to_keep, prefill: as `LlamaForCausalLM`.
    """
    image_features = video_features = deltas = None
    if inputs_embeds is None:
      if input_ids is None:
        raise ValueError("Qwen2VLForConditionalGeneration: pass input_ids or inputs_embeds")
      input_ids = input_ids if isinstance(input_ids, jax.Array) else np.asarray(input_ids)
      inputs_embeds, image_features, video_features, video_grids = self.merge_embeddings(
        input_ids,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        pixel_values_videos=pixel_values_videos,
        video_grid_thw=video_grid_thw,
      )
      if position_ids is None and cache is None:
        position_ids, deltas = self.position_ids(
          input_ids, attention_mask, image_grid_thw=image_grid_thw, video_grids=video_grids
        )
    elif input_ids is not None:
      raise ValueError(
        "Qwen2VLForConditionalGeneration: pass exactly one of input_ids and inputs_embeds"
      )
    out = self.language_model(
      attention_mask=attention_mask,
      inputs_embeds=inputs_embeds,
      position_ids=position_ids,
      cache=cache,
      output_hidden_states=output_hidden_states,
      logits_to_keep=logits_to_keep,
      prefill=prefill,
    )
    return Qwen2VLOutput(
      logits=out.logits,
      hidden_states=out.hidden_states,
      cache=out.cache,
      rope_deltas=deltas,
      image_hidden_states=image_features,
      video_hidden_states=video_features,
    )

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
    return self.language_model.init_cache(batch_size, max_length, dtype)


# ------------------------------------------------------------------------------------ generation


def _static_grids(grid_thw):
  return None if grid_thw is None else tuple(_grid_list(grid_thw))


def _merge(
  graphdef, state, input_ids, pixel_values, pixel_values_videos, *, image_grid_thw, video_grid_thw
):
  model = nnx.merge(graphdef, state)
  return model.merge_embeddings(
    input_ids,
    pixel_values=pixel_values,
    image_grid_thw=image_grid_thw,
    pixel_values_videos=pixel_values_videos,
    video_grid_thw=video_grid_thw,
  )[0]


# One program per (graphdef, prompt bucket, media shapes, grids); `_cache_size()` counts them.
merge_jit = jax.jit(
  _merge, static_argnums=(0,), static_argnames=("image_grid_thw", "video_grid_thw")
)


def generate(
  model: Qwen2VLForConditionalGeneration,
  input_ids,
  attention_mask=None,
  *,
  pixel_values=None,
  image_grid_thw=None,
  pixel_values_videos=None,
  video_grid_thw=None,
  max_new_tokens: int,
  eos_token_id=None,
  pad_token_id: int | None = None,
  temperature: float = 0.0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  min_bucket: int = 16,
):
  """Image/video-conditioned generation for a left-padded batch (transformers' `generate`).

  The prompt's M-RoPE positions and deltas come from the concrete ids (`rope_index`); the prompt
  is left-padded to a length bucket, merged with the media features in one jitted call, then
  `aotd_jax.models.generate` runs the jitted prefill and KV-cache decode loop, each new token at
  its text position + the row's delta. Returns `GenerateOutput(sequences, lengths)`.
  """
  from aotd_jax.models import generate as generate_lib  # pylint: disable=g-import-not-at-top

  cfg = model.config
  text = cfg.text_config
  eos_token_id = text.eos_token_id if eos_token_id is None else eos_token_id
  pad_token_id = pad_token_id if pad_token_id is not None else (text.pad_token_id or 0)
  ids = np.asarray(input_ids, np.int32)
  if ids.ndim != 2:
    raise ValueError(f"generate: input_ids must be (batch, length), got shape {ids.shape}")
  b, length = ids.shape
  mask = (
    np.ones((b, length), np.int32)
    if attention_mask is None
    else np.asarray(attention_mask, np.int32)
  )
  if mask.shape != ids.shape:
    raise ValueError(
      f"generate: attention_mask shape {mask.shape} does not match input_ids {ids.shape}"
    )
  video_grids = _static_grids(video_grid_thw)
  if pixel_values_videos is not None and video_grids is None:
    if np.ndim(pixel_values_videos) != 5:
      raise ValueError(
        "generate: pixel_values_videos without video_grid_thw must be frames "
        f"(batch, frames, channels, H, W), got shape {np.shape(pixel_values_videos)}"
      )
    n, hh, ww = np.shape(pixel_values_videos)[1], *np.shape(pixel_values_videos)[3:]
    grids = tuple([cfg.grid(n, hh, ww)] * np.shape(pixel_values_videos)[0])
  else:
    grids = video_grids
  image_grids = _static_grids(image_grid_thw)
  if pixel_values is not None:
    if image_grids is None:
      raise ValueError("generate: pixel_values need image_grid_thw")
    _check_count(
      ids, cfg.image_token_id, sum(cfg.tokens(g) for g in image_grids), "image", image_grids
    )
  if grids is not None:
    _check_count(ids, cfg.video_token_id, sum(cfg.tokens(g) for g in grids), "video", grids)
  positions = deltas = None
  if image_grids is not None or grids is not None:
    positions, deltas = rope_index(cfg, ids, mask, image_grids, grids)
  width = generate_lib.prompt_bucket(length, min_bucket)
  ids = np.pad(ids, ((0, 0), (width - length, 0)), constant_values=pad_token_id)
  mask = np.pad(mask, ((0, 0), (width - length, 0)))
  if positions is not None:
    positions = np.pad(positions, ((0, 0), (0, 0), (width - length, 0)), constant_values=1)
  graphdef, state = nnx.split(model)
  embeds = merge_jit(
    graphdef,
    state,
    jnp.asarray(ids),
    None if pixel_values is None else jnp.asarray(pixel_values),
    None if pixel_values_videos is None else jnp.asarray(pixel_values_videos),
    image_grid_thw=image_grids,
    video_grid_thw=video_grids,
  )
  return generate_lib.generate(
    model.language_model,
    inputs_embeds=embeds,
    attention_mask=mask,
    max_new_tokens=max_new_tokens,
    eos_token_id=eos_token_id,
    pad_token_id=pad_token_id,
    temperature=temperature,
    top_p=top_p,
    rng=rng,
    min_bucket=min_bucket,
    position_ids=positions,
    position_deltas=deltas,
  )


def qwen2_vl_7b_config(**fields) -> Qwen2VLConfig:
  """`Qwen/Qwen2-VL-7B-Instruct`'s shapes (a 675M-parameter 32-block ViT, the Qwen2-7B LM; ~8.3B
  parameters) for random-weight benchmarks and shape checks; `fields` are other `Qwen2VLConfig`
  fields."""
  text = qwen2_vl_text_config(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    mrope_section=(16, 24, 24),
  )
  return Qwen2VLConfig(
    vision_config=Qwen2VLVisionConfig(hidden_size=3584), text_config=text, **fields
  )
