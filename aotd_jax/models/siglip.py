"""SigLIP vision tower (Flax NNX), ported from transformers' `modeling_siglip` (LLaVA-OneVision's).

A pre-LN ViT like CLIP's, and built from the same encoder (`aotd_jax.models.clip.CLIPEncoder`):
the differences are in the embeddings (a patch conv with a bias, no class token, no pre-encoder
LayerNorm) and the activation (`gelu_pytorch_tanh`). `hidden_states[i]` is the input of layer
i (0 = embeddings) and the last is the encoder output before `post_layernorm`, as transformers
reports them, so a Video-LLM can pick `vision_feature_layer`. The attention-pooling head
(`vision_use_head=True`, SigLIP's contrastive image embedding) is not built: LLaVA-OneVision's
tower has none.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
from flax import nnx

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.clip import (
  CLIPEncoder,
  CLIPVisionOutput,
  activation,
  check_pixel_values,
  encoder_layer_norm,
)
from aotd_jax.sharding import constrain


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
  """HF `SiglipVisionConfig` fields."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 16
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6
  attention_dropout: float = 0.0
  vision_use_head: bool = False
  # Init scale of our fresh weights (transformers' own init differs; parity tests load weights).
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.vision_use_head:
      raise ValueError(
        "SiglipVisionConfig: vision_use_head=True (the attention-pooling head) is "
        "not supported; Video-LLM towers (LLaVA-OneVision) have none"
      )
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"SiglipVisionConfig: hidden_size {self.hidden_size} is not divisible by "
        f"num_attention_heads {self.num_attention_heads}"
      )
    activation(self.hidden_act)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


class SiglipVisionEmbeddings(nnx.Module):
  """Patch conv (with bias) + learned position embeddings; no class token."""

  def __init__(self, cfg: SiglipVisionConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.config = cfg
    self.options = options
    d, p = cfg.hidden_size, cfg.patch_size
    init = nnx.initializers.normal(cfg.initializer_range)
    self.patch_embedding = nnx.Conv(
      cfg.num_channels,
      d,
      kernel_size=(p, p),
      strides=(p, p),
      padding="VALID",
      use_bias=True,
      dtype=options.dtype,
      param_dtype=options.param_dtype,
      kernel_init=nnx.with_partitioning(init, ("conv_in", "conv_in", "conv_out", "embed")),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
      rngs=rngs,
    )
    self.position_embedding = nnx.Embed(
      cfg.num_patches,
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
    return patches.reshape(b, gh * gw, d) + self.position_embedding.embedding[...].astype(
      patches.dtype
    )


class SiglipVisionTransformer(nnx.Module):
  """Embeddings -> CLIP-style encoder -> post_layernorm; `pooler_output` is None (no head)."""

  def __init__(
    self, config: SiglipVisionConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.embeddings = SiglipVisionEmbeddings(config, options, rngs=rngs)
    self.encoder = CLIPEncoder(config, options, rngs=rngs)
    self.post_layernorm = encoder_layer_norm(config, options, config.hidden_size, rngs=rngs)

  def __call__(
    self, pixel_values: jax.Array, output_hidden_states: bool = False
  ) -> CLIPVisionOutput:
    """pixel_values (B, C, S, S) -> last_hidden_state (B, P, D) after post_layernorm."""
    x = self.embeddings(check_pixel_values(pixel_values, self.config))
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    last, states = self.encoder(x)
    return CLIPVisionOutput(
      self.post_layernorm(last), None, tuple(states) if output_hidden_states else None
    )


class SiglipVisionModel(nnx.Module):
  """HF `SiglipVisionModel` without the pooling head (LLaVA-OneVision's vision tower)."""

  hf_architecture = "SiglipVisionModel"

  def __init__(
    self, config: SiglipVisionConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.vision_model = SiglipVisionTransformer(config, options=options, rngs=rngs)

  def __call__(
    self, pixel_values: jax.Array, output_hidden_states: bool = False
  ) -> CLIPVisionOutput:
    return self.vision_model(pixel_values, output_hidden_states)
