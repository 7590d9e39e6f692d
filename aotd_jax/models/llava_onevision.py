"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`) in Flax NNX, ported from transformers.

SigLIP vision tower (`aotd_jax.models.siglip`) -> selected hidden layer(s) -> two-layer projector
-> features scattered into the Qwen2 token embeddings (`aotd_jax.models.qwen2`, the Llama
decoder with q/k/v biases) at the `<image>` / `<video>` placeholders. It is LLaVA-NeXT-Video's
model (`aotd_jax.models.llava_next_video`, whose merging, checks, KV-cache generation and
trainer integration it inherits) with three differences, all transformers':

- videos: each frame's features are projected *then* resized 2x bilinearly (side -> ceil(side/2),
  PyTorch's `interpolate(mode="bilinear")`), and one `image_newline` closes each clip;
- images: LLaVA-NeXT's any-resolution tiles with the `anyres_max_N` cap (an unpadded grid of
  more than ~N tiles is resized bilinearly down to about N tiles' worth of features);
- no class token (`vision_feature_select_strategy="full"` is the default).

Submodules follow transformers' older layout (`vision_tower`, `multi_modal_projector`,
`image_newline`, `language_model` = a full `Qwen2ForCausalLM`); `aotd_jax.hf.llava_onevision`
reads and writes both transformers key layouts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models import llava_anyres, pixel_norms
from aotd_jax.models import llava_next_video as lnv
from aotd_jax.models.llama import LlamaConfig
from aotd_jax.models.qwen2 import Qwen2ForCausalLM, qwen2_config
from aotd_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel

# transformers' LlavaOnevisionConfig default: (height, width) multiples of 384 up to 6 x 6 tiles.
DEFAULT_PINPOINTS = tuple((h * 384, w * 384) for h in range(1, 7) for w in range(1, 7))
# `generate` is LLaVA-NeXT-Video's: it reads the model's own checks and merging.
generate = lnv.generate
trainable_filter = lnv.trainable_filter


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig(lnv.LlavaNextVideoConfig):
  """transformers' `LlavaOnevisionConfig` fields (as `LlavaNextVideoConfig`, whose spatial-pool
  fields are unused)."""

  vision_config: SiglipVisionConfig = dataclasses.field(
    default_factory=lambda: SiglipVisionConfig(
      hidden_size=1152,
      intermediate_size=4304,
      patch_size=14,
      image_size=384,
      num_hidden_layers=26,
      num_attention_heads=16,
      vision_use_head=False,
    )
  )
  text_config: LlamaConfig = dataclasses.field(default_factory=qwen2_config)
  image_token_index: int = 151646
  video_token_index: int = 151647
  vision_feature_select_strategy: str = "full"
  vision_feature_layer: Any = -1
  image_grid_pinpoints: Any = DEFAULT_PINPOINTS
  vision_aspect_ratio: str = "anyres_max_9"

  def __post_init__(self):
    super().__post_init__()
    llava_anyres.parse_anyres_max(self.vision_aspect_ratio)
    if not self.text_config.qkv_bias:
      object.__setattr__(self, "text_config", dataclasses.replace(self.text_config, qkv_bias=True))

  @property
  def video_resize(self) -> str:
    """LLaVA-OneVision's processor resizes frames straight to image_size x image_size."""
    return "square"

  @property
  def pixel_normalization(self) -> pixel_norms.Normalization:
    """SigLIP's 0.5 / 0.5: the released llava-hf OneVision processor's (not CLIP's)."""
    return pixel_norms.SIGLIP

  @property
  def max_tiles(self) -> int:
    return llava_anyres.parse_anyres_max(self.vision_aspect_ratio)

  def video_tokens_per_frame(self) -> int:
    """Feature tokens of one frame after the 2x bilinear resize (ceil(side / 2) squared)."""
    side = -(-self.patches_per_side // 2)
    return side * side

  def video_tokens(self, num_frames: int) -> int:
    """Feature tokens of one clip: its frames' tokens, then one `image_newline`."""
    return num_frames * self.video_tokens_per_frame() + 1

  def image_tokens(self, image_size: Sequence[int]) -> int:
    vc = self.vision_config
    return llava_anyres.onevision_image_tokens(
      image_size,
      image_grid_pinpoints=self.image_grid_pinpoints,
      tile_size=vc.image_size,
      patch_size=vc.patch_size,
      max_tiles=self.max_tiles,
      vision_feature_select_strategy=self.vision_feature_select_strategy,
    )


def _resize_bilinear(x: jax.Array, rows: int, cols: int) -> jax.Array:
  """(..., H, W, D) -> (..., rows, cols, D), as PyTorch's bilinear `interpolate` (two matmuls)."""
  mh = jnp.asarray(llava_anyres.bilinear_matrix(x.shape[-3], rows), x.dtype)
  mw = jnp.asarray(llava_anyres.bilinear_matrix(x.shape[-2], cols), x.dtype)
  x = jnp.einsum("oh,...hwd->...owd", mh, x)
  return jnp.einsum("pw,...hwd->...hpd", mw, x)


class LlavaOnevisionForConditionalGeneration(lnv.LlavaNextVideoForConditionalGeneration):
  """LLaVA-OneVision with transformers' interface (inputs named and laid out as in transformers).

  `__call__(input_ids, attention_mask, pixel_values=, image_sizes=, pixel_values_videos=, ...)`,
  `init_cache` and `merge_embeddings` are LLaVA-NeXT-Video's; each clip of T frames takes
  `config.video_tokens(T)` `<video>` tokens (T x ceil(side/2)^2 + 1).
  """

  hf_architecture = "LlavaOnevisionForConditionalGeneration"

  def __init__(
    self,
    config: LlavaOnevisionConfig,
    *,
    options: ComputeOptions = ComputeOptions(),
    rngs: nnx.Rngs,
  ):
    self.config = config
    self.options = options
    self.vision_tower = SiglipVisionModel(config.vision_config, options=options, rngs=rngs)
    self.multi_modal_projector = lnv.LlavaNextVideoMultiModalProjector(config, options, rngs=rngs)
    d = config.text_config.hidden_size
    init = nnx.initializers.normal(1.0 / math.sqrt(d))
    self.image_newline = nnx.Param(
      init(rngs.params(), (d,), jnp.dtype(options.param_dtype)), out_sharding=("embed",)
    )
    self.language_model = Qwen2ForCausalLM(config.text_config, options=options, rngs=rngs)

  def _grid(self, x: jax.Array) -> jax.Array:
    """(N, side*side, D) -> (N, side, side, D), with a clear error for a non-square count."""
    n, p, d = x.shape
    side = self.config.patches_per_side
    if p != side * side:
      raise ValueError(
        f"LLaVA-OneVision needs a square patch grid of {side}x{side} tokens per "
        f"frame/tile, got {p} (vision_feature_select_strategy="
        f"{self.config.vision_feature_select_strategy!r} drops the first patch "
        "of a SigLIP tower, which has no class token: use 'full')"
      )
    return x.reshape(n, side, side, d)

  def get_video_features(self, pixel_values_videos: jax.Array) -> jax.Array:
    """(B, T, 3, S, S) -> (B, T * ceil(side/2)^2 + 1, hidden): projected, 2x bilinearly
    resized frame features, then one `image_newline` per clip."""
    shape = self._check_video_shape(pixel_values_videos)
    b, t = shape[:2]
    x = jnp.asarray(pixel_values_videos).reshape((b * t,) + shape[2:])
    grid = self._grid(self.multi_modal_projector(self._vision_features(x)))
    half = -(-grid.shape[1] // 2)
    x = _resize_bilinear(grid, half, half).reshape(b, -1, grid.shape[-1])
    newline = jnp.broadcast_to(self.image_newline[...].astype(x.dtype), (b, 1, x.shape[-1]))
    return jnp.concatenate([x, newline], axis=1)

  def get_image_features(self, pixel_values: jax.Array, image_sizes) -> list[jax.Array]:
    """Any-res tiles -> one (tokens_i, hidden) array per image: the base tile, then the unpadded
    grid (resized down under `anyres_max_N`) with an `image_newline` after every row; a one-tile
    image is its tile then one newline. `image_sizes` (N, 2) must be concrete."""
    cfg = self.config
    sizes, tiles, pixel_values = self._image_tiles(pixel_values, image_sizes)
    feats = self.multi_modal_projector(self._vision_features(pixel_values))
    newline = self.image_newline[...].astype(feats.dtype)
    out, start = [], 0
    for size, n in zip(sizes, tiles):
      f = feats[start : start + n]
      start += n
      if n == 1:
        out.append(jnp.concatenate([f[0], newline[None]], axis=0))
        continue
      d = f.shape[-1]
      base = self._grid(f[:1]).reshape(-1, d)
      grid = self._unpadded_grid(f[1:], size)
      h, w = llava_anyres.anyres_max_extent(
        grid.shape[0], grid.shape[1], cfg.patches_per_side, cfg.max_tiles
      )
      if (h, w) != grid.shape[:2]:
        grid = _resize_bilinear(grid, h, w)
      grid = jnp.concatenate([grid, jnp.broadcast_to(newline, (h, 1, d))], axis=1)
      out.append(jnp.concatenate([base, grid.reshape(-1, d)], axis=0))
    return out


def onevision_7b_config(**fields) -> LlavaOnevisionConfig:
  """`llava-hf/llava-onevision-qwen2-7b-ov-hf`'s shapes (SigLIP-so400m tower of 26 layers,
  Qwen2-7B LM; ~8.0B parameters) for random-weight benchmarks and shape checks; `fields`
  are other `LlavaOnevisionConfig` fields."""
  text = qwen2_config(
    vocab_size=152128,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    bos_token_id=151643,
    eos_token_id=151645,
    pad_token_id=151643,
  )
  return LlavaOnevisionConfig(text_config=text, **fields)
