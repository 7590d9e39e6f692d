"""LLaVA-NeXT-Video (the AoTD student) in Flax NNX, ported from transformers.

CLIP vision tower -> selected hidden layer(s) -> (videos: 2-D spatial pooling) -> two-layer
projector -> features scattered into the Llama token embeddings at the `<video>` / `<image>`
placeholders -> Llama LM. Images use LLaVA-NeXT's any-resolution tiles with `image_newline`.
Submodules follow transformers' older layout (`vision_tower`, `multi_modal_projector`,
`vision_resampler`, `image_newline`, `language_model` = a full `LlamaForCausalLM`), so the
language model can be handed to `aotd_jax.models.generate` as is; `aotd_jax.hf.llava_next_video`
reads and writes both transformers key layouts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.layers.dense import dense_for
from aotd_jax.models import generate as generate_lib
from aotd_jax.models import llava_anyres, pixel_norms
from aotd_jax.models.clip import CLIPVisionConfig, CLIPVisionModel, activation
from aotd_jax.models.llama import KVCache, LlamaConfig, LlamaForCausalLM
from aotd_jax.sharding import constrain

POOL_MODES = ("average", "max", "conv")
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


@dataclasses.dataclass(frozen=True)
class LlavaNextVideoConfig:
  """transformers' `LlavaNextVideoConfig` fields (how to compute is `ComputeOptions`)."""

  vision_config: CLIPVisionConfig = dataclasses.field(
    default_factory=lambda: CLIPVisionConfig(
      hidden_size=1024,
      intermediate_size=4096,
      patch_size=14,
      image_size=336,
      num_hidden_layers=24,
      num_attention_heads=16,
      projection_dim=768,
    )
  )
  text_config: LlamaConfig = dataclasses.field(default_factory=LlamaConfig)
  image_token_index: int = 32001
  video_token_index: int = 32000
  projector_hidden_act: str = "gelu"
  vision_feature_select_strategy: str = "default"
  vision_feature_layer: Any = -2
  multimodal_projector_bias: bool = True
  tie_word_embeddings: bool = False
  image_grid_pinpoints: Any = DEFAULT_PINPOINTS
  spatial_pool_mode: str = "average"
  spatial_pool_stride: int = 2
  spatial_pool_out_channels: int | None = None
  image_seq_length: int = 576
  video_seq_length: int = 288

  def __post_init__(self):
    layer = self.vision_feature_layer
    if isinstance(layer, (list, tuple)):
      object.__setattr__(self, "vision_feature_layer", tuple(int(i) for i in layer))
    object.__setattr__(
      self,
      "image_grid_pinpoints",
      tuple(tuple(int(v) for v in p) for p in self.image_grid_pinpoints),
    )
    if self.spatial_pool_mode not in POOL_MODES:
      raise ValueError(
        f"LlavaNextVideoConfig: spatial_pool_mode={self.spatial_pool_mode!r} is not "
        f"supported; use one of {', '.join(POOL_MODES)}"
      )
    if self.spatial_pool_stride < 1:
      raise ValueError(
        f"LlavaNextVideoConfig: spatial_pool_stride must be >= 1, got {self.spatial_pool_stride}"
      )
    if self.vision_feature_select_strategy not in ("default", "full"):
      raise ValueError(
        "LlavaNextVideoConfig: vision_feature_select_strategy must be 'default' or "
        f"'full', got {self.vision_feature_select_strategy!r}"
      )
    if self.spatial_pool_mode == "conv" and len(self.feature_layers) > 1:
      raise ValueError(
        "LlavaNextVideoConfig: spatial_pool_mode='conv' takes one vision_feature_layer "
        f"(its conv has vision hidden_size input channels), got {self.vision_feature_layer}"
      )
    depth = self.vision_config.num_hidden_layers
    for i in self.feature_layers:
      if not -(depth + 1) <= i <= depth:
        raise ValueError(
          f"LlavaNextVideoConfig: vision_feature_layer {i} is out of range for a "
          f"{depth}-layer vision tower (hidden states -{depth + 1}..{depth})"
        )
    activation(self.projector_hidden_act)  # raises a clear error for an unknown activation
    if self.tie_word_embeddings and not self.text_config.tie_word_embeddings:
      object.__setattr__(
        self, "text_config", dataclasses.replace(self.text_config, tie_word_embeddings=True)
      )

  @property
  def feature_layers(self) -> tuple[int, ...]:
    layer = self.vision_feature_layer
    return (layer,) if isinstance(layer, int) else tuple(layer)

  @property
  def video_resize(self) -> str:
    """How the processor resizes frames (`video_processing.preprocess_video`'s `resize`)."""
    return "shortest_edge"

  @property
  def pixel_normalization(self) -> pixel_norms.Normalization:
    """(image_mean, image_std) of the released processor (llava-hf's: CLIP's); a checkpoint's
    own processor files override it (`aotd_jax.hf.processor_files.pixel_normalization`)."""
    return pixel_norms.CLIP

  @property
  def patches_per_side(self) -> int:
    return self.vision_config.image_size // self.vision_config.patch_size

  def video_tokens_per_frame(self) -> int:
    """Feature tokens one frame becomes after pooling (transformers' model, not its processor)."""
    side = llava_anyres.pooled_side(self.patches_per_side, self.spatial_pool_stride)
    return side * side

  def video_tokens(self, num_frames: int) -> int:
    """Feature tokens (`<video>` placeholders) of one clip of `num_frames` frames."""
    return num_frames * self.video_tokens_per_frame()

  def image_tokens(self, image_size: Sequence[int]) -> int:
    """Feature tokens of one any-res image of original (H, W) `image_size`."""
    return llava_anyres.num_image_tokens(
      image_size,
      image_grid_pinpoints=self.image_grid_pinpoints,
      tile_size=self.vision_config.image_size,
      patch_size=self.vision_config.patch_size,
      vision_feature_select_strategy=self.vision_feature_select_strategy,
    )


def trainable_filter(options: ComputeOptions):
  """The `nnx` filter of parameters to optimise: all, or all but the vision tower when frozen."""
  if options.freeze_vision_tower:
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vision_tower")))
  return nnx.Param


@struct.dataclass
class LlavaNextVideoOutput:
  """transformers' output names: `logits`, `hidden_states` (LM), `cache`, and the projected
  `image_hidden_states` / `video_hidden_states` features that were merged."""

  logits: jax.Array
  hidden_states: tuple | None = None
  cache: KVCache | None = None
  image_hidden_states: jax.Array | None = None
  video_hidden_states: jax.Array | None = None


class LlavaNextVideoMultiModalProjector(nnx.Module):
  """linear_2(act(linear_1(x))): vision features (concatenated layers) -> LM hidden size."""

  def __init__(self, cfg: LlavaNextVideoConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    din = cfg.vision_config.hidden_size * len(cfg.feature_layers)
    dout, bias = cfg.text_config.hidden_size, cfg.multimodal_projector_bias
    self.linear_1 = dense_for(options, din, dout, ("embed", "mlp"), rngs=rngs, bias=bias)
    self.linear_2 = dense_for(options, dout, dout, ("mlp", "embed"), rngs=rngs, bias=bias)
    self.act = activation(cfg.projector_hidden_act)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(self.act(self.linear_1(x)))


class LlavaNextVideoPooler(nnx.Module):
  """Spatial pooling of each frame's patch grid (kernel = stride, no padding)."""

  def __init__(self, cfg: LlavaNextVideoConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.mode = cfg.spatial_pool_mode
    self.stride = cfg.spatial_pool_stride
    if self.mode == "conv":
      d = cfg.vision_config.hidden_size
      s = self.stride
      self.pool = nnx.Conv(
        d,
        cfg.spatial_pool_out_channels or d,
        kernel_size=(s, s),
        strides=(s, s),
        padding="VALID",
        dtype=jnp.dtype(options.dtype),
        param_dtype=jnp.dtype(options.param_dtype),
        kernel_init=nnx.with_partitioning(
          nnx.initializers.lecun_normal(), ("conv_in", "conv_in", "embed", "conv_out")
        ),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("conv_out",)),
        rngs=rngs,
      )

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, side*side, D) -> (N, side'*side', D), row-major like transformers' NCHW pooling."""
    n, p, d = x.shape
    side = math.isqrt(p)
    if side * side != p:
      raise ValueError(
        f"video pooling needs a square patch grid, got {p} tokens per frame "
        "(vision_feature_select_strategy='full' keeps the class token: use 'default')"
      )
    x = x.reshape(n, side, side, d)
    s = self.stride
    if self.mode == "conv":
      y = self.pool(x)
    else:
      out = llava_anyres.pooled_side(side, s)
      y = x[:, : out * s, : out * s].reshape(n, out, s, out, s, d)
      y = y.mean(axis=(2, 4)) if self.mode == "average" else y.max(axis=(2, 4))
    return y.reshape(n, -1, y.shape[-1])


def _scatter_features(embeds: jax.Array, mask: jax.Array, features: jax.Array) -> jax.Array:
  """Writes `features` (N, D) into `embeds` (B, L, D) where `mask`, in row-major order
  (transformers' `masked_scatter`)."""
  b, l, d = embeds.shape
  flat_mask = mask.reshape(-1)
  idx = jnp.clip(jnp.cumsum(flat_mask.astype(jnp.int32)) - 1, 0, max(features.shape[0] - 1, 0))
  gathered = jnp.take(features.astype(embeds.dtype), idx, axis=0)
  out = jnp.where(flat_mask[:, None], gathered, embeds.reshape(-1, d))
  return out.reshape(b, l, d)


def _check_count(input_ids, token_id: int, n_features: int, what: str, detail: str) -> None:
  """Clear error when the prompt's placeholders and the features disagree. Runs on concrete ids
  before any vision compute (eager calls, `generate`); under `jit` the ids are abstract, so the
  data pipeline must have expanded the placeholders (`video_processing.expand_media_tokens`)."""
  if isinstance(input_ids, jax.core.Tracer):
    return
  n_tokens = int(np.sum(np.asarray(input_ids) == token_id))
  if n_tokens != n_features:
    raise ValueError(
      f"{what} features and {what} tokens do not match: input_ids hold {n_tokens} {what} tokens "
      f"(id {token_id}) but the {what} inputs give {n_features} features ({detail}). "
      f"Expand each <{what}> placeholder to that many tokens, e.g. with "
      "aotd_jax.data.video_processing.expand_media_tokens."
    )


def check_media_tokens(
  config: LlavaNextVideoConfig, input_ids, *, video_shape=None, image_sizes=None
) -> None:
  """Raises a ValueError naming both counts when `input_ids` (concrete) hold a different number
  of `<video>` / `<image>` tokens than clips of `video_shape` (B, T, ...) / images of
  `image_sizes` make features."""
  if video_shape is not None:
    b, t = tuple(video_shape)[:2]
    per = config.video_tokens_per_frame()
    extra = config.video_tokens(t) - t * per  # e.g. LLaVA-OneVision's newline after each clip
    _check_count(
      input_ids,
      config.video_token_index,
      b * config.video_tokens(t),
      "video",
      f"{b} clip(s) x {t} frames x {per} tokens per frame"
      + (f" + {extra} per clip" if extra else ""),
    )
  if image_sizes is not None:
    sizes = np.asarray(image_sizes).reshape(-1, 2)
    _check_count(
      input_ids,
      config.image_token_index,
      sum(config.image_tokens(s) for s in sizes),
      "image",
      f"{len(sizes)} image(s) of sizes {sizes.tolist()}",
    )


def check_video_features(config: LlavaNextVideoConfig, input_ids, shape) -> None:
  """Raises a ValueError when precomputed video features of `shape` (clips, tokens, hidden)
  are not what `get_video_features` gives, or when the concrete `input_ids` hold another
  number of `<video>` tokens."""
  hidden = config.text_config.hidden_size
  if len(shape) != 3 or shape[-1] != hidden:
    raise ValueError(
      f"video_features must have shape (clips, tokens, {hidden}) (get_video_features' output), "
      f"got {tuple(shape)}"
    )
  _check_count(
    input_ids,
    config.video_token_index,
    shape[0] * shape[1],
    "video",
    f"{shape[0]} clip(s) x {shape[1]} feature tokens given",
  )


class LlavaNextVideoForConditionalGeneration(nnx.Module):
  """LLaVA-NeXT-Video with transformers' interface (inputs named and laid out as in transformers)."""

  hf_architecture = "LlavaNextVideoForConditionalGeneration"

  def __init__(
    self,
    config: LlavaNextVideoConfig,
    *,
    options: ComputeOptions = ComputeOptions(),
    rngs: nnx.Rngs,
  ):
    self.config = config
    self.options = options
    self.vision_tower = CLIPVisionModel(config.vision_config, options=options, rngs=rngs)
    self.multi_modal_projector = LlavaNextVideoMultiModalProjector(config, options, rngs=rngs)
    d = config.text_config.hidden_size
    init = nnx.initializers.normal(1.0 / math.sqrt(d))
    self.image_newline = nnx.Param(
      init(rngs.params(), (d,), jnp.dtype(options.param_dtype)), out_sharding=("embed",)
    )
    self.vision_resampler = LlavaNextVideoPooler(config, options, rngs=rngs)
    self.language_model = LlamaForCausalLM(config.text_config, options=options, rngs=rngs)

  # -------------------------------------------------------------------------- vision features

  def _vision_features(self, pixel_values: jax.Array) -> jax.Array:
    """(N, 3, S, S) -> selected hidden layer(s), class token dropped for 'default': (N, P, D*)."""
    cfg = self.config
    states = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    x = jnp.concatenate([states[i] for i in cfg.feature_layers], axis=-1)
    if cfg.vision_feature_select_strategy == "default":
      x = x[:, 1:]
    if self.options.freeze_vision_tower:
      x = jax.lax.stop_gradient(x)  # no backward pass through a frozen tower
    return constrain(x, ("activation_batch", "activation_length", "activation_embed"))

  def _check_video_shape(self, pixel_values_videos) -> tuple[int, ...]:
    vc = self.config.vision_config
    shape = tuple(np.shape(pixel_values_videos))
    if len(shape) != 5 or shape[2:] != (vc.num_channels, vc.image_size, vc.image_size):
      raise ValueError(
        f"pixel_values_videos must have shape (batch, frames, {vc.num_channels}, {vc.image_size}, "
        f"{vc.image_size}) (channels first, as transformers), got {shape}"
      )
    return shape

  def get_video_features(self, pixel_values_videos: jax.Array) -> jax.Array:
    """(B, T, 3, S, S) -> (B, T * tokens_per_frame, hidden): pooled, projected frame features."""
    shape = self._check_video_shape(pixel_values_videos)
    if self.config.vision_feature_select_strategy == "full":
      side = self.config.patches_per_side
      raise ValueError(
        f"video pooling needs a square patch grid, got {side * side + 1} tokens per "
        "frame: vision_feature_select_strategy='full' keeps the class token "
        "(transformers fails here too); use 'default'"
      )
    b, t = shape[:2]
    x = jnp.asarray(pixel_values_videos).reshape((b * t,) + shape[2:])
    x = self.vision_resampler(self._vision_features(x))
    x = self.multi_modal_projector(x)
    return x.reshape(b, -1, x.shape[-1])

  def _image_tiles(self, pixel_values, image_sizes) -> tuple[list, list[int], jax.Array]:
    """(sizes, tiles per image, (sum(tiles), 3, S, S) tiles) of an any-res image batch given
    as (images, tiles>=max, 3, S, S) or already flat; `image_sizes` (N, 2) must be concrete."""
    cfg = self.config
    vc = cfg.vision_config
    sizes = [tuple(int(v) for v in s) for s in np.asarray(image_sizes).reshape(-1, 2)]
    tiles = [
      llava_anyres.anyres_num_tiles(s, cfg.image_grid_pinpoints, vc.image_size) for s in sizes
    ]
    shape = tuple(np.shape(pixel_values))
    tile_shape = (vc.num_channels, vc.image_size, vc.image_size)
    if (
      len(shape) == 5
      and shape[2:] == tile_shape
      and shape[0] == len(sizes)
      and shape[1] >= max(tiles)
    ):
      pixel_values = jnp.concatenate(
        [jnp.asarray(pixel_values)[i, :n] for i, n in enumerate(tiles)]
      )
    elif not (len(shape) == 4 and shape[1:] == tile_shape and shape[0] == sum(tiles)):
      raise ValueError(
        f"pixel_values must have shape (images, tiles>={max(tiles, default=0)}, {', '.join(map(str, tile_shape))}) "
        f"or ({sum(tiles)}, {', '.join(map(str, tile_shape))}) for image_sizes {sizes}, got {shape}"
      )
    return sizes, tiles, jnp.asarray(pixel_values)

  def _unpadded_grid(self, features: jax.Array, size) -> jax.Array:
    """An image's grid-tile features (rows*cols, side*side, D) -> the (H, W, D) feature map of
    the image itself: tiles stitched row-major, the letterbox padding cropped off."""
    cfg = self.config
    side = cfg.patches_per_side
    rows, cols = llava_anyres.anyres_grid_shape(
      size, cfg.image_grid_pinpoints, cfg.vision_config.image_size
    )
    d = features.shape[-1]
    grid = features.reshape(rows, cols, side, side, d).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * side, cols * side, d)
    top, bottom, left, right = llava_anyres.unpadded_extent(size, grid.shape[:2])
    return grid[top:bottom, left:right]

  def get_image_features(self, pixel_values: jax.Array, image_sizes) -> list[jax.Array]:
    """Any-res tiles -> one (tokens_i, hidden) array per image: base tile, then the unpadded
    grid with an `image_newline` after every row. `image_sizes` (N, 2) must be concrete."""
    cfg = self.config
    sizes, tiles, pixel_values = self._image_tiles(pixel_values, image_sizes)
    if cfg.vision_feature_select_strategy == "full" and max(tiles) > 1:
      raise ValueError(
        f"any-res image tiles give {cfg.patches_per_side**2 + 1} tokens each, not a square grid: "
        "vision_feature_select_strategy='full' keeps the class token (transformers fails here "
        "too); use 'default'"
      )
    feats = self.multi_modal_projector(self._vision_features(pixel_values))
    newline = self.image_newline[...].astype(feats.dtype)
    out, start = [], 0
    for size, n in zip(sizes, tiles):
      f = feats[start : start + n]
      start += n
      if n == 1:
        out.append(jnp.concatenate([f[0], newline[None]], axis=0))
        continue
      grid = self._unpadded_grid(f[1:], size)
      d = grid.shape[-1]
      grid = jnp.concatenate([grid, jnp.broadcast_to(newline, (grid.shape[0], 1, d))], axis=1)
      out.append(jnp.concatenate([f[0], grid.reshape(-1, d)], axis=0))
    return out

  # -------------------------------------------------------------------------- merging

  def merge_embeddings(
    self,
    input_ids: jax.Array,
    *,
    pixel_values=None,
    image_sizes=None,
    pixel_values_videos=None,
    video_features=None,
  ):
    """Token embeddings with image/video features written at their placeholder tokens.

    `video_features`: (clips, tokens, hidden) `get_video_features(pixel_values_videos)`
    computed before (a caller that keeps them between prompts on the same frames), instead of
    `pixel_values_videos`; the embeddings are the same numbers either way.

    Returns (inputs_embeds (B, L, hidden), image_features or None, video_features or None).
    """
    cfg = self.config
    if pixel_values is not None and image_sizes is None:
      raise ValueError("pixel_values need image_sizes (the original (height, width) of each image)")
    if pixel_values_videos is not None and video_features is not None:
      raise ValueError("merge_embeddings: pass pixel_values_videos or video_features, not both")
    if pixel_values_videos is not None:
      self._check_video_shape(pixel_values_videos)
    check_media_tokens(
      cfg,
      input_ids,
      image_sizes=None if pixel_values is None else image_sizes,
      video_shape=None if pixel_values_videos is None else np.shape(pixel_values_videos),
    )
    if video_features is not None:
      check_video_features(cfg, input_ids, np.shape(video_features))
    embeds = self.language_model.embed(input_ids)
    image_features = None
    if pixel_values is not None:
      image_features = jnp.concatenate(self.get_image_features(pixel_values, image_sizes), axis=0)
      embeds = _scatter_features(embeds, input_ids == cfg.image_token_index, image_features)
    if pixel_values_videos is not None:
      video_features = self.get_video_features(pixel_values_videos)
    if video_features is not None:
      video_features = jnp.asarray(video_features)
      video_features = video_features.reshape(-1, video_features.shape[-1])
      embeds = _scatter_features(embeds, input_ids == cfg.video_token_index, video_features)
    return embeds, image_features, video_features

  def __call__(
    self,
    input_ids=None,
    attention_mask=None,
    *,
    pixel_values=None,
    image_sizes=None,
    pixel_values_videos=None,
    inputs_embeds=None,
    position_ids=None,
    cache: KVCache | None = None,
    output_hidden_states: bool = False,
    logits_to_keep: int = 0,
    prefill: bool = False,
  ) -> LlavaNextVideoOutput:
    """Logits (B, L, vocab) of the prompt with its images/videos merged in.

    Args:
      input_ids: (B, L) token ids with `image_token_index` / `video_token_index` placeholders,
        one per feature token (see `LlavaNextVideoConfig.video_tokens_per_frame`).
      attention_mask: (B, L) 1 for tokens, 0 for (left) padding; (B, cache slots) with a cache.
      pixel_values: (images, tiles, 3, S, S) any-res tiles, with `image_sizes` (images, 2).
      pixel_values_videos: (clips, frames, 3, S, S).
      inputs_embeds: (B, L, hidden) instead of `input_ids` (no media merging then).
      position_ids, cache, output_hidden_states, logits_to_keep, prefill: as `LlamaForCausalLM`.
    """
    image_features = video_features = None
    if inputs_embeds is None:
      if input_ids is None:
        raise ValueError("LlavaNextVideoForConditionalGeneration: pass input_ids or inputs_embeds")
      input_ids = input_ids if isinstance(input_ids, jax.Array) else np.asarray(input_ids)
      inputs_embeds, image_features, video_features = self.merge_embeddings(
        input_ids,
        pixel_values=pixel_values,
        image_sizes=image_sizes,
        pixel_values_videos=pixel_values_videos,
      )
    elif input_ids is not None:
      raise ValueError(
        "LlavaNextVideoForConditionalGeneration: pass exactly one of input_ids and inputs_embeds"
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
    return LlavaNextVideoOutput(
      logits=out.logits,
      hidden_states=out.hidden_states,
      cache=out.cache,
      image_hidden_states=image_features,
      video_hidden_states=video_features,
    )

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
    return self.language_model.init_cache(batch_size, max_length, dtype)


# ------------------------------------------------------------------------------------ generation


def _merge(
  graphdef, state, input_ids, pixel_values, pixel_values_videos, video_features=None, *, image_sizes
):
  model = generate_lib.merged(graphdef, state)
  return model.merge_embeddings(
    input_ids,
    pixel_values=pixel_values,
    image_sizes=image_sizes,
    pixel_values_videos=pixel_values_videos,
    video_features=video_features,
  )[0]


# One program per (graphdef, prompt bucket, media shapes, image sizes); `_cache_size()` counts them.
merge_jit = jax.jit(_merge, static_argnums=(0,), static_argnames=("image_sizes",))


def generation_splits(model: LlavaNextVideoForConditionalGeneration) -> tuple:
  """(`nnx.split(model)`, `nnx.split(model.language_model)`), their graphdefs as
  `generate.StaticGraphDef` (hashed once) and states as `generate.FlatState` (flattened once):
  what `generate(splits=...)` reuses; valid while the model's weights stay as they are."""
  (graphdef, state), (language, language_state) = nnx.split(model), nnx.split(model.language_model)
  return (
    (generate_lib.static_graphdef(graphdef), generate_lib.flat_state(state)),
    (generate_lib.static_graphdef(language), generate_lib.flat_state(language_state)),
  )


def generate(
  model: LlavaNextVideoForConditionalGeneration,
  input_ids,
  attention_mask=None,
  *,
  pixel_values_videos=None,
  pixel_values=None,
  image_sizes=None,
  video_features=None,
  max_new_tokens: int,
  eos_token_id=None,
  pad_token_id: int | None = None,
  temperature: float = 0.0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  min_bucket: int = 16,
  splits: tuple | None = None,
) -> generate_lib.GenerateOutput:
  """Video/image-conditioned generation for a left-padded batch.

  The prompt is left-padded to a length bucket (`generate.prompt_bucket`), its embeddings are merged with the media
  features in one jitted call, then `aotd_jax.models.generate` runs the jitted prefill and
  KV-cache decode loop on the language model. Compiles once per (batch, bucket, media shapes,
  max_new_tokens); prompts of other lengths in the same bucket reuse the programs.

  `splits`: `generation_splits(model)`, kept by a caller that generates many times on fixed
  weights (splitting the graph twice per call costs ~8 ms of Python at the cpu benchmark's
  size, more at 7B, and hashing a plain graphdef for jit ~1.2 ms, ~10 ms at 7B); default:
  split now.

  `video_features`: (clips, tokens, hidden) `model.get_video_features(pixel_values_videos)`
  computed before, instead of `pixel_values_videos` (the experts keep them per frame set
  between prompts: the same tokens as from the pixels).

  Returns `GenerateOutput(sequences (B, max_new_tokens), lengths (B,))` of new tokens.
  """
  text = model.config.text_config
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
  # Check the placeholder counts eagerly (shapes only) before anything compiles.
  if pixel_values is not None and image_sizes is None:
    raise ValueError("generate: pixel_values need image_sizes")
  if pixel_values_videos is not None and video_features is not None:
    raise ValueError("generate: pass pixel_values_videos or video_features, not both")
  if pixel_values_videos is not None:
    model._check_video_shape(pixel_values_videos)
  check_media_tokens(
    model.config,
    ids,
    image_sizes=None if pixel_values is None else image_sizes,
    video_shape=None if pixel_values_videos is None else np.shape(pixel_values_videos),
  )
  if video_features is not None:
    check_video_features(model.config, ids, np.shape(video_features))
  width = generate_lib.prompt_bucket(length, min_bucket)
  ids = np.pad(ids, ((0, 0), (width - length, 0)), constant_values=pad_token_id)
  mask = np.pad(mask, ((0, 0), (width - length, 0)))
  static_sizes = (
    None
    if image_sizes is None
    else tuple(tuple(int(v) for v in s) for s in np.asarray(image_sizes).reshape(-1, 2))
  )
  (graphdef, state), language_split = splits or (nnx.split(model), None)
  embeds = merge_jit(
    generate_lib.static_graphdef(graphdef),
    state,
    jnp.asarray(ids),
    None if pixel_values is None else jnp.asarray(pixel_values),
    None if pixel_values_videos is None else jnp.asarray(pixel_values_videos),
    None if video_features is None else jnp.asarray(video_features),
    image_sizes=static_sizes,
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
    split=language_split,
  )
