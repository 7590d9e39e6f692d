"""`Detector` on our Flax OWLv2: pre-processing, image tower and heads jitted over frame buckets.

Per call: the text queries are embedded once (and remembered), their number padded to a
power of two and masked, so the query count never forces a recompilation; the frames, already
on the device, go through one jitted function per bucket size — pad to a square, the
anti-aliased resize as two matrix products (the same matrices as
`aotd_jax.models.owlv2_processing.preprocess`, hence transformers' `Owlv2ImageProcessor`),
CLIP normalisation, the image tower and the detection heads — and only the (B, P, Q) logits
and boxes come back to the host for thresholding and NMS.
"""
from __future__ import annotations

import types
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experts.backends.protocols import Box
from experts.batching import DEFAULT_BUCKETS, BucketedJit

Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def hf_tokenize(tokenizer, max_length: int) -> Tokenize:
  """A transformers tokenizer as `Tokenize`: padded to `max_length` as OWLv2's processor does."""
  def tokenize(texts):
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="np")
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)
  return tokenize


def device_preprocess(frames: jax.Array, image_size: int, *, pad_value: float = 0.0,
                      mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """(B, H, W, 3) uint8 -> (B, 3, S, S) float32 exactly as `owlv2_processing.preprocess`."""
  from aotd_jax.models import owlv2_processing as proc
  b, h, w, _ = frames.shape
  side = max(h, w)
  x = frames.astype(jnp.float32) * np.float32(1 / 255)
  if (h, w) != (side, side):
    x = jnp.pad(x, ((0, 0), (0, side - h), (0, side - w), (0, 0)), constant_values=pad_value)
  r = jnp.asarray(proc.resize_matrix(side, image_size))
  y = jnp.einsum("oh,bhwc,pw->bcop", r, x, r)
  lo = x.min(axis=(1, 2, 3)).reshape(b, 1, 1, 1)
  hi = x.max(axis=(1, 2, 3)).reshape(b, 1, 1, 1)
  y = jnp.clip(y, lo, hi)  # scikit-image clips the interpolation to the input's range
  return (y - jnp.asarray(mean, jnp.float32)[:, None, None]) / jnp.asarray(std, jnp.float32)[:, None, None]


class Owlv2Detector:
  """The `Detector` protocol on `aotd_jax.models.owlv2.Owlv2ForObjectDetection`.

  Args:
    model: the Flax OWLv2 model.
    tokenize: texts -> (input_ids (N, L), attention_mask (N, L)), padded to a fixed L.
    name: the name used in cache keys and traces (include the weights, e.g. "owlv2:base").
    buckets: frame batch sizes the image side is compiled for.
    nms_threshold: per-label NMS IoU (None: none, as transformers).
    pad_value: square-padding value (transformers 0.0, the original OWLv2 0.5).
  """

  def __init__(self, model, tokenize: Tokenize, *, name: str = "owlv2",
               buckets: Sequence[int] = DEFAULT_BUCKETS, nms_threshold: float | None = 0.3,
               pad_value: float = 0.0):
    from aotd_jax.models import owlv2_processing as proc
    self.name, self.tokenize, self.nms_threshold = name, tokenize, nms_threshold
    self.image_size = model.config.vision_config.image_size
    self._graphdef, self._state = nnx.split(model)
    graphdef, size = self._graphdef, self.image_size

    def image_side(frames, state, query_embeds, query_mask):
      m = nnx.merge(graphdef, state)
      pixel_values = device_preprocess(frames, size, pad_value=pad_value,
                                       mean=proc.OPENAI_CLIP_MEAN, std=proc.OPENAI_CLIP_STD)
      out = m.detect(pixel_values, query_embeds, query_mask)
      return out.logits, out.pred_boxes

    def text_side(state, input_ids, attention_mask):
      return nnx.merge(graphdef, state).embed_text_queries(input_ids, attention_mask)

    self.image_fn = BucketedJit(image_side, buckets=buckets, name=f"{name}/image")
    self._text_fn = jax.jit(text_side)
    self._query_embeds: dict[str, jax.Array] = {}

  @classmethod
  def from_pretrained(cls, path: str, *, buckets: Sequence[int] = DEFAULT_BUCKETS,
                      **kwargs) -> "Owlv2Detector":
    """Loads a HF OWLv2 directory (weights + tokenizer) with `aotd_jax.hf`."""
    from aotd_jax import hf
    model = hf.from_pretrained(path)
    tokenize = hf_tokenize(hf.load_tokenizer(path),
                           model.config.text_config.max_position_embeddings)
    return cls(model, tokenize, name=f"owlv2:{path}", buckets=buckets, **kwargs)

  def embed_queries(self, queries: Sequence[str]) -> tuple[jax.Array, jax.Array]:
    """(Qp, E) embeddings and (Qp,) mask, Qp = next power of two >= len(queries)."""
    new = [q for q in dict.fromkeys(queries) if q not in self._query_embeds]
    if new:
      ids, mask = self.tokenize(new)
      n = len(new)
      pad = _pow2(n)  # bounded text-side compilations as well
      ids = np.concatenate([ids, np.repeat(ids[-1:], pad - n, 0)])
      mask = np.concatenate([mask, np.repeat(mask[-1:], pad - n, 0)])
      emb = self._text_fn(self._state, jnp.asarray(ids), jnp.asarray(mask))
      for i, q in enumerate(new):
        self._query_embeds[q] = emb[i]
    qp = _pow2(len(queries))
    emb = jnp.stack([self._query_embeds[q] for q in queries])
    emb = jnp.concatenate([emb, jnp.zeros((qp - len(queries), emb.shape[-1]), emb.dtype)])
    return emb, jnp.arange(qp) < len(queries)

  def raw_outputs(self, frames: jax.Array, queries: Sequence[str]):
    """Logits (T, P, Q) and pred_boxes (T, P, 4) for device frames (T, H, W, 3) uint8."""
    emb, mask = self.embed_queries(queries)
    logits, boxes = self.image_fn(frames, self._state, emb, mask)
    return logits[..., :len(queries)], boxes

  def detect(self, clip, queries: Sequence[str], *, threshold: float) -> list[list[Box]]:
    """Boxes per frame of `clip` scoring > threshold, in source-frame pixels."""
    from aotd_jax.models import owlv2_processing as proc
    if not len(clip):
      return []
    logits, boxes = self.raw_outputs(clip.device_frames(), list(queries))
    outputs = types.SimpleNamespace(logits=np.asarray(logits), pred_boxes=np.asarray(boxes))
    sizes = [(clip.height, clip.width)] * len(clip)
    results = proc.post_process_object_detection(outputs, threshold, sizes, self.nms_threshold)
    out = []
    for fid, r in zip(clip.frame_ids, results):
      out.append([Box(int(fid), queries[int(l)], float(s),
                      tuple(float(v) for v in np.clip(b, 0, [clip.width, clip.height] * 2)))
                  for s, l, b in zip(r["scores"], r["labels"], r["boxes"])])
    return out

