"""OWLv2 open-vocabulary detector (Flax NNX), ported from transformers' `modeling_owlv2`.

A CLIP backbone (`aotd_jax.models.clip`) whose patch tokens are merged with the class token
(post-LN, multiplied, LayerNorm), then three heads per patch: class embeddings compared with
text or image queries (`logit_shift` / `logit_scale`), boxes (an MLP plus the grid box bias,
sigmoid, cxcywh in [0, 1] of the padded square), and objectness.

Besides transformers' entry points (`__call__`, `image_guided_detection`) the model exposes
the two halves separately, `embed_text_queries` and `detect`, so that experts embed a query
once and run the jitted image side over batches of frames.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models import clip
from aotd_jax.models.clip import CLIPTextConfig, CLIPVisionConfig

# OWLv2 (owlv2-base-patch16) defaults where they differ from CLIP's.
OWL_TEXT_DEFAULTS = dict(max_position_embeddings=16, pad_token_id=0)
OWL_VISION_DEFAULTS = dict(image_size=768, patch_size=16)


@dataclasses.dataclass(frozen=True)
class Owlv2Config(clip.CLIPConfig):
  """HF `Owlv2Config`: CLIPConfig's fields with OWLv2's tower defaults."""

  text_config: CLIPTextConfig = CLIPTextConfig(**OWL_TEXT_DEFAULTS)
  vision_config: CLIPVisionConfig = CLIPVisionConfig(**OWL_VISION_DEFAULTS)


@struct.dataclass
class Owlv2ObjectDetectionOutput:
  logits: jax.Array  # (B, P, Q) class logits per patch and query
  pred_boxes: jax.Array  # (B, P, 4) cxcywh in [0, 1] of the padded square image
  objectness_logits: jax.Array  # (B, P)
  image_embeds: jax.Array  # (B, G, G, D) merged feature map
  text_embeds: jax.Array  # (B, Q, projection_dim) normalised query embeddings
  class_embeds: jax.Array  # (B, P, text hidden) normalised patch class embeddings


@struct.dataclass
class Owlv2ImageGuidedObjectDetectionOutput:
  logits: jax.Array  # (B, P, 1)
  target_pred_boxes: jax.Array  # (B, P, 4)
  query_pred_boxes: jax.Array  # (B, P, 4)
  image_embeds: jax.Array  # (B, G, G, D)
  query_image_embeds: jax.Array  # (B, G, G, D)
  class_embeds: jax.Array  # (B, P, text hidden)


def box_bias(grid_h: int, grid_w: int) -> np.ndarray:
  """Inverse-sigmoid prior of each patch's box: centre at the patch's corner grid point, size 1/grid."""
  xx, yy = np.meshgrid(
    np.arange(1, grid_w + 1, dtype=np.float32) / grid_w,
    np.arange(1, grid_h + 1, dtype=np.float32) / grid_h,
    indexing="xy",
  )
  coords = np.clip(np.stack([xx, yy], -1).reshape(-1, 2), 0.0, 1.0)
  coord_bias = np.log(coords + 1e-4) - np.log1p(-coords + 1e-4)
  size = np.broadcast_to(np.array([1.0 / grid_w, 1.0 / grid_h], np.float32), coords.shape)
  size_bias = np.log(size + 1e-4) - np.log1p(-size + 1e-4)
  return np.concatenate([coord_bias, size_bias], -1).astype(np.float32)


class Owlv2Model(nnx.Module):
  """The CLIP backbone of OWLv2 (text pooled at argmax(input_ids), as transformers)."""

  def __init__(self, config: Owlv2Config, options: ComputeOptions, *, rngs: nnx.Rngs):
    tc, vc, p = config.text_config, config.vision_config, config.projection_dim
    self.text_model = clip.CLIPTextTransformer(tc, options=options, rngs=rngs, pool_by_argmax=True)
    self.vision_model = clip.CLIPVisionTransformer(vc, options=options, rngs=rngs)
    self.visual_projection = clip.encoder_dense(
      vc, options, vc.hidden_size, p, ("embed", "mlp"), rngs=rngs, bias=False
    )
    self.text_projection = clip.encoder_dense(
      tc, options, tc.hidden_size, p, ("embed", "mlp"), rngs=rngs, bias=False
    )
    self.logit_scale = nnx.Param(
      jnp.asarray(config.logit_scale_init_value, jnp.dtype(options.param_dtype))
    )


class Owlv2BoxPredictionHead(nnx.Module):
  def __init__(
    self, config: Owlv2Config, options: ComputeOptions, out_dim: int = 4, *, rngs: nnx.Rngs
  ):
    vc = config.vision_config
    w = vc.hidden_size
    self.dense0 = clip.encoder_dense(vc, options, w, w, ("embed", "mlp"), rngs=rngs)
    self.dense1 = clip.encoder_dense(vc, options, w, w, ("mlp", "embed"), rngs=rngs)
    self.dense2 = clip.encoder_dense(vc, options, w, out_dim, ("embed", None), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    gelu = lambda t: jax.nn.gelu(t, approximate=False)
    return self.dense2(gelu(self.dense1(gelu(self.dense0(x)))))


class Owlv2ClassPredictionHead(nnx.Module):
  def __init__(self, config: Owlv2Config, options: ComputeOptions, *, rngs: nnx.Rngs):
    vc, d = config.vision_config, config.vision_config.hidden_size
    self.dense0 = clip.encoder_dense(
      vc, options, d, config.text_config.hidden_size, ("embed", "mlp"), rngs=rngs
    )
    self.logit_shift = clip.encoder_dense(vc, options, d, 1, ("embed", None), rngs=rngs)
    self.logit_scale = clip.encoder_dense(vc, options, d, 1, ("embed", None), rngs=rngs)

  def __call__(self, image_embeds, query_embeds=None, query_mask=None):
    """Returns (logits (B, P, Q) or None, normalised-or-raw class embeddings (B, P, D))."""
    class_embeds = self.dense0(image_embeds)
    if query_embeds is None:
      return None, class_embeds
    class_embeds = class_embeds / (jnp.linalg.norm(class_embeds, axis=-1, keepdims=True) + 1e-6)
    query_embeds = query_embeds / (jnp.linalg.norm(query_embeds, axis=-1, keepdims=True) + 1e-6)
    logits = jnp.einsum("...pd,...qd->...pq", class_embeds, query_embeds)
    scale = jax.nn.elu(self.logit_scale(image_embeds)) + 1
    logits = ((logits + self.logit_shift(image_embeds)) * scale).astype(jnp.float32)
    if query_mask is not None:
      logits = jnp.where(query_mask[..., None, :], logits, jnp.finfo(jnp.float32).min)
    return logits, class_embeds


class Owlv2ForObjectDetection(nnx.Module):
  """HF `Owlv2ForObjectDetection`: text-query and image-query open-vocabulary detection."""

  hf_architecture = "Owlv2ForObjectDetection"

  def __init__(
    self, config: Owlv2Config, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    vc = config.vision_config
    self.owlv2 = Owlv2Model(config, options, rngs=rngs)
    self.class_head = Owlv2ClassPredictionHead(config, options, rngs=rngs)
    self.box_head = Owlv2BoxPredictionHead(config, options, rngs=rngs)
    self.objectness_head = Owlv2BoxPredictionHead(config, options, out_dim=1, rngs=rngs)
    self.layer_norm = clip.encoder_layer_norm(vc, options, vc.hidden_size, rngs=rngs)
    self.grid = vc.image_size // vc.patch_size

  # ---- image side

  def image_embedder(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values (B, 3, S, S) -> merged feature map (B, G, G, D)."""
    vm = self.owlv2.vision_model
    last = vm(pixel_values).last_hidden_state
    x = vm.post_layernorm(last)
    # OWL-ViT drops the class token but multiplies it into every patch token.
    x = self.layer_norm(x[:, 1:, :] * x[:, :1, :])
    return x.reshape(x.shape[0], self.grid, self.grid, x.shape[-1])

  def box_predictor(self, image_feats: jax.Array) -> jax.Array:
    bias = jnp.asarray(box_bias(self.grid, self.grid))
    return jax.nn.sigmoid(self.box_head(image_feats).astype(jnp.float32) + bias)

  def objectness_predictor(self, image_feats: jax.Array) -> jax.Array:
    return self.objectness_head(jax.lax.stop_gradient(image_feats))[..., 0].astype(jnp.float32)

  # ---- text side

  def embed_text_queries(self, input_ids, attention_mask=None) -> jax.Array:
    """input_ids (N, L) -> L2-normalised projected text embeddings (N, projection_dim)."""
    pooled = self.owlv2.text_model(input_ids, attention_mask).pooler_output
    return clip.l2_normalize(self.owlv2.text_projection(pooled))

  def detect(self, pixel_values, query_embeds, query_mask=None) -> Owlv2ObjectDetectionOutput:
    """Detection against precomputed queries: query_embeds (B, Q, E) or (Q, E) shared by all images."""
    pixel_values = clip.check_pixel_values(pixel_values, self.config.vision_config)
    feature_map = self.image_embedder(pixel_values)
    b, gh, gw, d = feature_map.shape
    feats = feature_map.reshape(b, gh * gw, d)
    query_embeds = jnp.asarray(query_embeds)
    if query_embeds.ndim == 2:
      query_embeds = jnp.broadcast_to(query_embeds[None], (b, *query_embeds.shape))
    if query_mask is not None:
      query_mask = jnp.broadcast_to(jnp.asarray(query_mask, bool), query_embeds.shape[:2])
    logits, class_embeds = self.class_head(feats, query_embeds, query_mask)
    return Owlv2ObjectDetectionOutput(
      logits=logits,
      pred_boxes=self.box_predictor(feats),
      objectness_logits=self.objectness_predictor(feats),
      image_embeds=feature_map,
      text_embeds=query_embeds,
      class_embeds=class_embeds,
    )

  def __call__(self, input_ids, pixel_values, attention_mask=None) -> Owlv2ObjectDetectionOutput:
    """transformers' forward: input_ids (B*Q, L) hold Q queries per image, in image order.

    A query whose first token is 0 (padding query) gets the most negative logit everywhere.
    """
    input_ids = jnp.asarray(input_ids)
    pixel_values = clip.check_pixel_values(pixel_values, self.config.vision_config)
    b = pixel_values.shape[0]
    if input_ids.ndim != 2 or input_ids.shape[0] % b:
      raise ValueError(
        f"input_ids must have shape (batch * num_queries, length) with batch = "
        f"pixel_values batch {b}; got {tuple(input_ids.shape)}"
      )
    q = input_ids.shape[0] // b
    query_embeds = self.embed_text_queries(input_ids, attention_mask).reshape(b, q, -1)
    query_mask = input_ids.reshape(b, q, -1)[..., 0] > 0
    return self.detect(pixel_values, query_embeds, query_mask)

  def image_guided_detection(
    self, pixel_values, query_pixel_values
  ) -> Owlv2ImageGuidedObjectDetectionOutput:
    """One query image per target image: the query's most object-like patch is the query embedding."""
    vc = self.config.vision_config
    pixel_values = clip.check_pixel_values(pixel_values, vc)
    query_pixel_values = clip.check_pixel_values(query_pixel_values, vc, "query_pixel_values")
    if query_pixel_values.shape[0] != pixel_values.shape[0]:
      raise ValueError(
        f"query_pixel_values batch {query_pixel_values.shape[0]} must equal pixel_values "
        f"batch {pixel_values.shape[0]} (one query image per target image)"
      )
    query_map = self.image_embedder(query_pixel_values)
    b, gh, gw, d = query_map.shape
    query_feats = query_map.reshape(b, gh * gw, d)
    _, query_class = self.class_head(query_feats)
    query_boxes = self.box_predictor(query_feats)
    best = jnp.argmax(self.objectness_predictor(query_feats), axis=-1)
    query_embeds = query_class[jnp.arange(b), best][:, None, :]
    feature_map = self.image_embedder(pixel_values)
    feats = feature_map.reshape(b, gh * gw, d)
    logits, class_embeds = self.class_head(feats, query_embeds)
    return Owlv2ImageGuidedObjectDetectionOutput(
      logits=logits,
      target_pred_boxes=self.box_predictor(feats),
      query_pred_boxes=query_boxes,
      image_embeds=feature_map,
      query_image_embeds=query_map,
      class_embeds=class_embeds,
    )
