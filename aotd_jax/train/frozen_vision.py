"""Training a LLaVA-NeXT-Video with a frozen vision tower on cached tower features.

With `freeze_vision_tower` the tower's output for a frame never changes during training, yet
a plain train step runs the tower on every frame of every batch. Here the tower runs once
per distinct frame (`tower_features`), and the trainable part — projector and language
model — trains on those features (`CachedVisionLM`, a drop-in model for `Trainer`):

    feats = tower_features(llava, pixels)               # (frames, tokens, D_vision), once
    lm = CachedVisionLM(llava)                          # shares llava's projector and LM
    trainer = Trainer(lm, tx, mesh=mesh)
    trainer.train_step({"input_ids": ..., "attention_mask": ..., "label_mask": ...,
                        "video_features": feats_of_batch})   # (B, T * tokens, D_vision)
    trainer.sync_model()                                # llava now holds the trained weights

The logits are those of the full model on the same frames (tested against
`LlavaNextVideoForConditionalGeneration.__call__`), so what is trained is exactly what is
served.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.models.llava_next_video import (
  LlavaNextVideoForConditionalGeneration,
  _scatter_features,
)


def tower_features(
  model: LlavaNextVideoForConditionalGeneration, pixels: np.ndarray, *, batch: int = 256
) -> np.ndarray:
  """(N, 3, S, S) frames -> (N, tokens_per_frame, D_vision): the pooled tower features the
  projector reads (selected layer(s), class token dropped, spatially pooled), float32."""
  pixels = np.asarray(pixels)
  if pixels.ndim != 4:
    raise ValueError(f"tower_features: pixels must be (frames, 3, S, S), got {pixels.shape}")
  fn = nnx.jit(lambda m, x: m.vision_resampler(m._vision_features(x)))
  out = [
    np.asarray(jax.device_get(fn(model, jnp.asarray(pixels[i : i + batch]))), np.float32)
    for i in range(0, len(pixels), batch)
  ]
  return np.concatenate(out)


class CachedVisionLM(nnx.Module):
  """The projector and language model of a LLaVA-NeXT-Video, reading cached tower features.

  Shares (not copies) `model.multi_modal_projector` and `model.language_model`: training
  this module trains `model`. Only for a frozen tower (`freeze_vision_tower=True`), where
  cached features are exact.
  """

  def __init__(self, model: LlavaNextVideoForConditionalGeneration):
    if not model.options.freeze_vision_tower:
      raise ValueError(
        "CachedVisionLM: the model's vision tower is trainable "
        "(freeze_vision_tower=False); cached tower features would be stale"
      )
    self.multi_modal_projector = model.multi_modal_projector
    self.language_model = model.language_model
    self.video_token_index = int(model.config.video_token_index)

  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    video_features: jax.Array,
  ):
    """Logits (B, L, vocab) for `input_ids` whose `<video>` tokens take the projected
    `video_features` (B, frames * tokens_per_frame, D_vision), row-major as the full model."""
    embeds = self.language_model.embed(input_ids)
    feats = self.multi_modal_projector(video_features)
    embeds = _scatter_features(
      embeds, input_ids == self.video_token_index, feats.reshape(-1, feats.shape[-1])
    )
    return self.language_model(attention_mask=attention_mask, inputs_embeds=embeds)
