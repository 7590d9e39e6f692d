"""CLIP features as UniVTG expects them: one image embedding per clip, text token states.

Frames are sampled one per clip (`univtg_postprocess.clip_frame_indices`) and preprocessed as
CLIP's processor does (`video_processing.preprocess_video`); the model is our
`aotd_jax.models.clip.CLIPModel`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.data.video_processing import preprocess_video
from aotd_jax.models.univtg_postprocess import clip_frame_indices


@nnx.jit
def _image_features(clip_model, pixels):
  return clip_model.get_image_features(pixels)


@nnx.jit
def _text_states(text_model, input_ids, attention_mask):
  return text_model(input_ids, attention_mask).last_hidden_state


def clip_video_features(
  clip_model,
  frames: np.ndarray,
  fps: float,
  *,
  clip_length: float = 2.0,
  image_size: int | None = None,
  batch_size: int = 32,
) -> np.ndarray:
  """(L, projection_dim) CLIP image embeddings, one per clip, as UniVTG's CLIP block expects.

  clip_model: our `aotd_jax.models.clip.CLIPModel` (its `get_image_features`). Frames are
  resized (shortest edge) and centre-cropped to the vision tower's size and CLIP-normalised.
  Not normalised here: `univtg_postprocess.batch_inputs` L2-normalises every block.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
  size = image_size or clip_model.config.vision_config.image_size
  picked = frames[clip_frame_indices(len(frames), fps, clip_length)]
  pixels = preprocess_video(picked, shortest_edge=size, crop_size=size)
  n = len(pixels)
  batch_size = min(batch_size, n)
  # Pad the last batch: one compilation per (batch_size, size), whatever the video length.
  pixels = np.concatenate([pixels, np.zeros((-n % batch_size,) + pixels.shape[1:], pixels.dtype)])
  out = [
    np.asarray(_image_features(clip_model, jnp.asarray(pixels[i : i + batch_size])))
    for i in range(0, len(pixels), batch_size)
  ]
  return np.concatenate(out, axis=0)[:n].astype(np.float32)


def clip_text_features(
  clip_model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None
) -> list[np.ndarray]:
  """Per query, (Lt_valid, hidden) CLIP text token states after the final LayerNorm.

  UniVTG uses the text tower's `last_hidden_state` (not the pooled projection), keeping
  the valid tokens only. clip_model: our `CLIPModel` or `CLIPTextModel`.
  """
  input_ids = np.asarray(input_ids)
  if attention_mask is None:
    attention_mask = np.ones_like(input_ids)
  hidden = np.asarray(
    _text_states(clip_model.text_model, jnp.asarray(input_ids), jnp.asarray(attention_mask))
  )
  return [hidden[i, np.asarray(attention_mask[i]) > 0] for i in range(len(hidden))]
