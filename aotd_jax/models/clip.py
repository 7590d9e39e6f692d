"""CLIP vision and text towers (Flax NNX), ported from transformers' `modeling_clip`.

The vision tower (`CLIPVisionTransformer`) is a pre-LN ViT: patch conv, class token, learned
position embeddings, `pre_layrnorm`, encoder layers, `post_layernorm` on the class token. It
returns every hidden state so that LLaVA can pick `vision_feature_layer` (-1, -2 or a list).
The text tower is causal with EOS pooling. OWLv2 reuses both (`aotd_jax.models.owlv2`).
Submodule names mirror transformers' so the HF name table (`aotd_jax.hf.clip`) is regular.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from aotd_jax.layers import attention as attention_lib
from aotd_jax.layers import dense as dense_lib
from aotd_jax.layers import norms
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.remat import remat_call
from aotd_jax.sharding import constrain


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """HF `CLIPVisionConfig` fields."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  attention_dropout: float = 0.0
  initializer_range: float = 0.02
  initializer_factor: float = 1.0

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """HF `CLIPTextConfig` fields."""

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  attention_dropout: float = 0.0
  initializer_range: float = 0.02
  initializer_factor: float = 1.0
  pad_token_id: int | None = 1
  bos_token_id: int | None = 49406
  eos_token_id: int | None = 49407


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """HF `CLIPConfig`: the two tower configs, the shared projection size and the logit scale."""

  text_config: CLIPTextConfig = CLIPTextConfig()
  vision_config: CLIPVisionConfig = CLIPVisionConfig()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592
  initializer_factor: float = 1.0


@struct.dataclass
class CLIPVisionOutput:
  last_hidden_state: jax.Array
  pooler_output: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class CLIPTextOutput:
  last_hidden_state: jax.Array
  pooler_output: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class CLIPOutput:
  logits_per_image: jax.Array
  logits_per_text: jax.Array
  text_embeds: jax.Array
  image_embeds: jax.Array
  text_model_output: CLIPTextOutput
  vision_model_output: CLIPVisionOutput


def activation(name: str):
  """transformers' ACT2FN for the activations CLIP-family configs use."""
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"hidden_act={name!r} is not supported (quick_gelu, gelu, gelu_new, relu)")


def encoder_dense(
  cfg,
  options: ComputeOptions,
  din: int,
  dout: int,
  axes: tuple[str, str],
  *,
  rngs: nnx.Rngs,
  bias: bool = True,
) -> nnx.Linear:
  """A dense layer of a CLIP-family encoder (normal(`cfg.initializer_range`) init)."""
  return dense_lib.dense_for(
    options,
    din,
    dout,
    axes,
    rngs=rngs,
    bias=bias,
    kernel_init=nnx.initializers.normal(cfg.initializer_range),
  )


def encoder_layer_norm(cfg, options: ComputeOptions, dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """A LayerNorm of a CLIP-family encoder (`cfg.layer_norm_eps`)."""
  return norms.layer_norm(
    dim, cfg.layer_norm_eps, rngs=rngs, dtype=options.dtype, param_dtype=options.param_dtype
  )


class CLIPAttention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections (transformers' layout)."""

  def __init__(self, cfg, options: ComputeOptions, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    if d % cfg.num_attention_heads:
      raise ValueError(
        f"hidden_size {d} is not divisible by num_attention_heads {cfg.num_attention_heads}"
      )
    self.num_heads = cfg.num_attention_heads
    self.head_dim = d // self.num_heads
    self.cpu_kernels = options.cpu_kernels
    self.q_proj = encoder_dense(cfg, options, d, d, ("embed", "heads"), rngs=rngs)
    self.k_proj = encoder_dense(cfg, options, d, d, ("embed", "heads"), rngs=rngs)
    self.v_proj = encoder_dense(cfg, options, d, d, ("embed", "heads"), rngs=rngs)
    self.out_proj = encoder_dense(cfg, options, d, d, ("heads", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    b, l, d = x.shape
    split = lambda t: t.reshape(b, l, self.num_heads, self.head_dim)
    q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
    return self.out_proj(attention_lib.attention(q, k, v, mask, cpu_kernels=self.cpu_kernels))


class CLIPMLP(nnx.Module):
  def __init__(self, cfg, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.act = activation(cfg.hidden_act)
    d, m = cfg.hidden_size, cfg.intermediate_size
    self.fc1 = encoder_dense(cfg, options, d, m, ("embed", "mlp"), rngs=rngs)
    self.fc2 = encoder_dense(cfg, options, m, d, ("mlp", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = constrain(
      self.act(self.fc1(x)), ("activation_batch", "activation_length", "activation_mlp")
    )
    return self.fc2(h)


class CLIPEncoderLayer(nnx.Module):
  """Pre-LN transformer block."""

  def __init__(self, cfg, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.layer_norm1 = encoder_layer_norm(cfg, options, cfg.hidden_size, rngs=rngs)
    self.self_attn = CLIPAttention(cfg, options, rngs=rngs)
    self.layer_norm2 = encoder_layer_norm(cfg, options, cfg.hidden_size, rngs=rngs)
    self.mlp = CLIPMLP(cfg, options, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x), mask)
    x = x + self.mlp(self.layer_norm2(x))
    return constrain(x, ("activation_batch", "activation_length", "activation_embed"))


class CLIPEncoder(nnx.Module):
  def __init__(self, cfg, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.options = options
    self.layers = nnx.List(
      [CLIPEncoderLayer(cfg, options, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
    )

  def __call__(
    self, x: jax.Array, mask: jax.Array | None = None
  ) -> tuple[jax.Array, list[jax.Array]]:
    """Returns the last hidden state and the list [input, after layer 1, ..., after layer N]."""
    states = [x]
    opt = self.options
    for layer in self.layers:
      if opt.remat_enabled:
        x = remat_call(lambda m, h, a: m(h, a), layer, x, mask, policy=opt.checkpoint_policy())
      else:
        x = layer(x, mask)
      states.append(x)
    return x, states


class CLIPVisionEmbeddings(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.config = cfg
    self.options = options
    d, p = cfg.hidden_size, cfg.patch_size
    init = nnx.initializers.normal(cfg.initializer_range)
    self.class_embedding = nnx.Param(
      init(rngs.params(), (d,), jnp.dtype(options.param_dtype)), sharding=("embed",)
    )
    self.patch_embedding = nnx.Conv(
      cfg.num_channels,
      d,
      kernel_size=(p, p),
      strides=(p, p),
      padding="VALID",
      use_bias=False,
      dtype=options.dtype,
      param_dtype=options.param_dtype,
      kernel_init=nnx.with_partitioning(init, ("conv_in", "conv_in", "conv_out", "embed")),
      rngs=rngs,
    )
    self.position_embedding = nnx.Embed(
      cfg.num_patches + 1,
      d,
      dtype=options.dtype,
      param_dtype=options.param_dtype,
      embedding_init=nnx.with_partitioning(init, (None, "embed")),
      rngs=rngs,
    )

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.options.dtype)  # NCHW -> NHWC
    patches = self.patch_embedding(x)
    b, gh, gw, d = patches.shape
    patches = patches.reshape(b, gh * gw, d)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, d))
    return jnp.concatenate([cls, patches], axis=1) + self.position_embedding.embedding[...].astype(
      patches.dtype
    )


def check_pixel_values(
  pixel_values: Any, cfg: CLIPVisionConfig, name: str = "pixel_values"
) -> jax.Array:
  """Validates a (B, C, S, S) image batch against the config, with a message naming the input."""
  shape = tuple(getattr(pixel_values, "shape", ()))
  want = (cfg.num_channels, cfg.image_size, cfg.image_size)
  if len(shape) != 4 or shape[1:] != want:
    raise ValueError(
      f"{name} must have shape (batch, {want[0]}, {want[1]}, {want[2]}) "
      f"(channels first, as transformers), got {shape}"
    )
  return jnp.asarray(pixel_values)


class CLIPVisionTransformer(nnx.Module):
  """CLIP's ViT; `hidden_states[i]` is the input of layer i (0 = embeddings after pre-LN)."""

  def __init__(
    self, config: CLIPVisionConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.embeddings = CLIPVisionEmbeddings(config, options, rngs=rngs)
    self.pre_layrnorm = encoder_layer_norm(config, options, config.hidden_size, rngs=rngs)
    self.encoder = CLIPEncoder(config, options, rngs=rngs)
    self.post_layernorm = encoder_layer_norm(config, options, config.hidden_size, rngs=rngs)

  def __call__(
    self, pixel_values: jax.Array, output_hidden_states: bool = False
  ) -> CLIPVisionOutput:
    """pixel_values (B, C, S, S) -> last_hidden_state (B, 1+P, D), pooler_output (B, D)."""
    x = check_pixel_values(pixel_values, self.config)
    x = self.pre_layrnorm(self.embeddings(x))
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    last, states = self.encoder(x)
    pooled = self.post_layernorm(last[:, 0, :])
    return CLIPVisionOutput(last, pooled, tuple(states) if output_hidden_states else None)


class CLIPTextEmbeddings(nnx.Module):
  def __init__(self, cfg: CLIPTextConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(cfg.initializer_range)
    kw = dict(dtype=options.dtype, param_dtype=options.param_dtype, rngs=rngs)
    self.token_embedding = nnx.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
      **kw,
    )
    self.position_embedding = nnx.Embed(
      cfg.max_position_embeddings,
      cfg.hidden_size,
      embedding_init=nnx.with_partitioning(init, (None, "embed")),
      **kw,
    )

  def __call__(self, input_ids: jax.Array, position_ids: jax.Array | None = None) -> jax.Array:
    if position_ids is None:
      position_ids = jnp.arange(input_ids.shape[-1])[None]
    return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPTextTransformer(nnx.Module):
  """CLIP's causal text encoder.

  Pooling follows transformers: the hidden state at the highest token id when
  `eos_token_id == 2` (legacy configs) or `pool_by_argmax` (OWL-ViT/OWLv2), else at the first
  `eos_token_id`.
  """

  def __init__(
    self,
    config: CLIPTextConfig,
    *,
    options: ComputeOptions = ComputeOptions(),
    rngs: nnx.Rngs,
    pool_by_argmax: bool = False,
  ):
    self.config = config
    self.options = options
    self.pool_by_argmax = pool_by_argmax
    self.embeddings = CLIPTextEmbeddings(config, options, rngs=rngs)
    self.encoder = CLIPEncoder(config, options, rngs=rngs)
    self.final_layer_norm = encoder_layer_norm(config, options, config.hidden_size, rngs=rngs)

  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    output_hidden_states: bool = False,
  ) -> CLIPTextOutput:
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    b, l = input_ids.shape
    if l > self.config.max_position_embeddings:
      raise ValueError(
        f"input_ids length {l} exceeds max_position_embeddings "
        f"{self.config.max_position_embeddings}"
      )
    mask = jnp.tril(jnp.ones((l, l), bool))[None]
    if attention_mask is not None:
      attention_mask = jnp.asarray(attention_mask)
      if attention_mask.shape != input_ids.shape:
        raise ValueError(
          f"attention_mask shape {tuple(attention_mask.shape)} does not match "
          f"input_ids shape {tuple(input_ids.shape)}"
        )
      mask = mask & (attention_mask[:, None, :] > 0)
    x = self.embeddings(input_ids, position_ids)
    last, states = self.encoder(x, mask)
    last = self.final_layer_norm(last)
    if self.pool_by_argmax or self.config.eos_token_id == 2:
      idx = jnp.argmax(input_ids, axis=-1)
    else:
      idx = jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)
    pooled = last[jnp.arange(b), idx]
    return CLIPTextOutput(last, pooled, tuple(states) if output_hidden_states else None)


class CLIPVisionModel(nnx.Module):
  """HF `CLIPVisionModel`: the vision tower alone (used as LLaVA's vision tower)."""

  hf_architecture = "CLIPVisionModel"

  def __init__(
    self, config: CLIPVisionConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.vision_model = CLIPVisionTransformer(config, options=options, rngs=rngs)

  def __call__(
    self, pixel_values: jax.Array, output_hidden_states: bool = False
  ) -> CLIPVisionOutput:
    return self.vision_model(pixel_values, output_hidden_states)


class CLIPTextModel(nnx.Module):
  """HF `CLIPTextModel`: the text tower alone."""

  hf_architecture = "CLIPTextModel"

  def __init__(
    self, config: CLIPTextConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.text_model = CLIPTextTransformer(config, options=options, rngs=rngs)

  def __call__(
    self, input_ids, attention_mask=None, position_ids=None, output_hidden_states: bool = False
  ) -> CLIPTextOutput:
    return self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIPModel(nnx.Module):
  """HF `CLIPModel`: both towers, projections and the contrastive logit scale."""

  hf_architecture = "CLIPModel"

  def __init__(
    self, config: CLIPConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    tc, vc, p = config.text_config, config.vision_config, config.projection_dim
    self.text_model = CLIPTextTransformer(tc, options=options, rngs=rngs)
    self.vision_model = CLIPVisionTransformer(vc, options=options, rngs=rngs)
    self.visual_projection = encoder_dense(
      vc, options, vc.hidden_size, p, ("embed", "mlp"), rngs=rngs, bias=False
    )
    self.text_projection = encoder_dense(
      tc, options, tc.hidden_size, p, ("embed", "mlp"), rngs=rngs, bias=False
    )
    self.logit_scale = nnx.Param(
      jnp.asarray(config.logit_scale_init_value, jnp.dtype(options.param_dtype))
    )

  def get_text_features(self, input_ids, attention_mask=None, position_ids=None) -> jax.Array:
    """Projected (not normalised) pooled text features, (B, projection_dim)."""
    return self.text_projection(
      self.text_model(input_ids, attention_mask, position_ids).pooler_output
    )

  def get_image_features(self, pixel_values) -> jax.Array:
    """Projected (not normalised) pooled image features, (B, projection_dim)."""
    return self.visual_projection(self.vision_model(pixel_values).pooler_output)

  def __call__(
    self,
    input_ids,
    pixel_values,
    attention_mask=None,
    position_ids=None,
    output_hidden_states: bool = False,
  ) -> CLIPOutput:
    vis = self.vision_model(pixel_values, output_hidden_states)
    txt = self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)
    image_embeds = l2_normalize(self.visual_projection(vis.pooler_output))
    text_embeds = l2_normalize(self.text_projection(txt.pooler_output))
    logits_per_text = (text_embeds @ image_embeds.T) * jnp.exp(self.logit_scale[...])
    return CLIPOutput(logits_per_text.T, logits_per_text, text_embeds, image_embeds, txt, vis)
