"""`Detector` on our Flax OWLv2: pre-processing, image tower and heads jitted over frame buckets.

Per call: the text queries are embedded once (and remembered), their number padded to a
power of two and masked, so the query count never forces a recompilation; the frames go
through one jitted function per bucket size — pad to a square, the anti-aliased resize as
two matrix products (the same matrices as `aotd_jax.models.owlv2_processing.preprocess`,
hence transformers' `Owlv2ImageProcessor`), CLIP normalisation, the image tower and the box
head — whose features stay on the device for the next query; a second jitted function (the
class head) scores them against the queries, and only the (B, P, Q) logits and boxes come
back to the host for thresholding and NMS.
"""

from __future__ import annotations

import threading
import types
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.models.generate import flat_state, merged
from experts.backends.protocols import Box
from experts.batching import DEFAULT_BUCKETS, BucketedJit, pad_rows, plan_chunks
from experts.feature_cache import FrameFeatureCache

Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def hf_tokenize(tokenizer, max_length: int) -> Tokenize:
  """A transformers tokenizer as `Tokenize`: padded to `max_length` as OWLv2's processor does."""

  def tokenize(texts):
    enc = tokenizer(
      list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)

  return tokenize


def device_preprocess(
  frames: jax.Array,
  image_size: int,
  *,
  pad_value: float = 0.0,
  mean: Sequence[float],
  std: Sequence[float],
) -> jax.Array:
  """(B, H, W, 3) uint8 -> (B, 3, S, S) float32 exactly as `owlv2_processing.preprocess`."""
  from aotd_jax.models import owlv2_processing as proc

  b, h, w, _ = frames.shape
  side = max(h, w)
  x = frames.astype(jnp.float32) * np.float32(1 / 255)
  if (h, w) != (side, side):
    x = jnp.pad(x, ((0, 0), (0, side - h), (0, side - w), (0, 0)), constant_values=pad_value)
  if side == image_size:  # the resize matrix is the identity: the same numbers, no matmuls
    y = jnp.transpose(x, (0, 3, 1, 2))
  else:
    r = jnp.asarray(proc.resize_matrix(side, image_size))
    y = jnp.einsum("oh,bhwc,pw->bcop", r, x, r)
    lo = x.min(axis=(1, 2, 3)).reshape(b, 1, 1, 1)
    hi = x.max(axis=(1, 2, 3)).reshape(b, 1, 1, 1)
    y = jnp.clip(y, lo, hi)  # scikit-image clips the interpolation to the input's range
  return (y - jnp.asarray(mean, jnp.float32)[:, None, None]) / jnp.asarray(std, jnp.float32)[
    :, None, None
  ]


class Owlv2Detector:
  """The `Detector` protocol on `aotd_jax.models.owlv2.Owlv2ForObjectDetection`.

  The image side (pre-processing, image tower, box head) runs once per chunk of frames and
  its features stay on the device (`experts.feature_cache.FrameFeatureCache`, an LRU of
  `feature_cache_mb` megabytes keyed by the clip's identity, frame size and the chunk's
  source frame ids): a program that asks for several objects in the same clip, or another
  question on the same frames, runs the image tower once and only the cheap class head per
  object. Frames are gathered and padded on the host, so the XLA compilations are
  one per bucket for the image side and one per (bucket, padded query count) for the head.

  Args:
    model: the Flax OWLv2 model.
    tokenize: texts -> (input_ids (N, L), attention_mask (N, L)), padded to a fixed L.
    name: the name used in cache keys and traces (include the weights, e.g. "owlv2:base").
    buckets: frame batch sizes the image side is compiled for.
    nms_threshold: per-label NMS IoU (None: none, as transformers).
    pad_value: square-padding value (transformers 0.0, the original OWLv2 0.5).
    feature_cache_mb: megabytes of image features (and box predictions) kept on the device
      (at B/16 960 px a 32-frame chunk holds ~355 MB).
    query_template: the text the detector embeds for a name, e.g. "a photo of a {}" (the
      official AoTD's, and OWL-ViT's training prompts); boxes keep the bare name as label.
    coalesce: run the image side through an `experts.coalesce.Coalescer`, so that `detect`
      calls from concurrent threads (a CoT job's programs) share one batch of frames.
    coalesce_wait_s: how long the coalescer waits for more requests after the first.
    normalization: (image_mean, image_std) after the 1/255 rescale (default CLIP's, the
      released OWLv2 processor's; `from_pretrained` reads the directory's processor file).
    scheduler: the device's `experts.scheduler.DeviceScheduler`: with `coalesce`, its
      coalescers share it (one batch at a time on the device; see experts/scheduler.py).

  Thread-safe: a chunk being computed for one thread is awaited, not recomputed, by another
  that asks for the same frames.
  """

  def __init__(
    self,
    model,
    tokenize: Tokenize,
    *,
    name: str = "owlv2",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    nms_threshold: float | None = 0.3,
    pad_value: float = 0.0,
    feature_cache_mb: float = 8192.0,
    query_template: str = "{}",
    coalesce: bool = False,
    coalesce_wait_s: float = 0.002,
    normalization: tuple | None = None,
    scheduler=None,
  ):
    from aotd_jax.models import owlv2_processing as proc

    if "{}" not in query_template:
      raise ValueError(f"query_template {query_template!r} must contain {{}} for the name")
    self.name, self.tokenize, self.nms_threshold = name, tokenize, nms_threshold
    self.query_template = query_template
    self.config = model.config  # the model's Owlv2Config
    self.options = model.options  # its ComputeOptions
    self.image_size = model.config.vision_config.image_size
    mean, std = normalization or (proc.OPENAI_CLIP_MEAN, proc.OPENAI_CLIP_STD)
    self.normalization = (tuple(mean), tuple(std))
    self._graphdef, state = nnx.split(model)
    self._state = flat_state(state)  # flattened once: jit would walk the nnx.State every call
    graphdef, size = self._graphdef, self.image_size

    def image_side(frames, state):
      m = merged(graphdef, state)
      pixel_values = device_preprocess(frames, size, pad_value=pad_value, mean=mean, std=std)
      fmap = m.image_embedder(pixel_values)
      feats = fmap.reshape(fmap.shape[0], -1, fmap.shape[-1])
      return feats, m.box_predictor(feats)

    def class_head(feats, state, query_embeds, query_mask):
      m = merged(graphdef, state)
      b = feats.shape[0]
      q = jnp.broadcast_to(query_embeds[None], (b, *query_embeds.shape))
      mask = jnp.broadcast_to(query_mask[None], q.shape[:2])
      return m.class_head(feats, q, mask)[0]

    def text_side(state, input_ids, attention_mask):
      return merged(graphdef, state).embed_text_queries(input_ids, attention_mask)

    self.image_fn = BucketedJit(image_side, buckets=buckets, name=f"{name}/image")
    self.head_fn = BucketedJit(class_head, buckets=buckets, name=f"{name}/head")
    self._text_fn = jax.jit(text_side)
    self._query_embeds: dict[str, np.ndarray] = {}
    if feature_cache_mb <= 0:
      raise ValueError(f"feature_cache_mb must be > 0, got {feature_cache_mb}")
    self.feature_cache = FrameFeatureCache(
      int(feature_cache_mb * 2**20), name=f"{name}/image-features"
    )
    self._lock = threading.Lock()  # guards _query_embeds
    self.coalescer = None
    if coalesce:
      from experts.coalesce import Coalescer

      self.coalescer = Coalescer(
        self.image_fn,
        wait_s=coalesce_wait_s,
        output="device",
        name=f"{name}/coalesce",
        scheduler=scheduler,
      )

  @classmethod
  def from_pretrained(
    cls,
    path: str,
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    matmul_precision: str = "default",
    cpu_kernels: bool = True,
    **kwargs,
  ) -> "Owlv2Detector":
    """Loads a HF OWLv2 directory (weights + tokenizer) with `aotd_jax.hf`;
    `matmul_precision="high"` runs its matmuls in bf16x3, `"highest"` in bf16x6 with float32's
    error (the AMX kernel on Intel CPUs);
    `cpu_kernels=False` keeps XLA's attention where aotd_jax's CPU kernel would run."""
    from aotd_jax import hf
    from aotd_jax.hf import processor_files
    from aotd_jax.layers.compute import ComputeOptions

    options = ComputeOptions(matmul_precision=matmul_precision, cpu_kernels=cpu_kernels)
    model = hf.from_pretrained(path, options=options)
    tokenize = hf_tokenize(
      hf.load_tokenizer(path), model.config.text_config.max_position_embeddings
    )
    kwargs.setdefault("normalization", processor_files.pixel_normalization(model.config, path))
    return cls(model, tokenize, name=f"owlv2:{path}", buckets=buckets, **kwargs)

  @property
  def feature_hits(self) -> int:
    """Chunks of image features found kept so far (`feature_cache.stats` has the rest)."""
    return self.feature_cache.stats.hits

  def clear_features(self) -> None:
    """Drops the image features kept on the device (e.g. between videos, or to time cold)."""
    self.feature_cache.clear()

  def close(self) -> None:
    """Stops the coalescer's worker thread (if any); the detector then runs calls directly."""
    if self.coalescer is not None:
      self.coalescer.close()
      self.coalescer = None

  def embed_queries(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(Qp, E) embeddings and (Qp,) mask, Qp = next power of two >= len(queries)."""
    with self._lock:
      new = [q for q in dict.fromkeys(queries) if q not in self._query_embeds]
    if new:
      ids, mask = self.tokenize([self.query_template.format(q) for q in new])
      n, pad = len(new), _pow2(len(new))  # bounded text-side compilations as well
      ids = np.concatenate([ids, np.repeat(ids[-1:], pad - n, 0)])
      mask = np.concatenate([mask, np.repeat(mask[-1:], pad - n, 0)])
      emb = np.asarray(self._text_fn(self._state, jnp.asarray(ids), jnp.asarray(mask)))
      with self._lock:
        for i, q in enumerate(new):
          self._query_embeds.setdefault(q, emb[i])
    qp = _pow2(len(queries))
    with self._lock:
      emb = np.stack([self._query_embeds[q] for q in queries])
    emb = np.concatenate([emb, np.zeros((qp - len(queries), emb.shape[-1]), emb.dtype)])
    return emb, np.arange(qp) < len(queries)

  def _image_chunk(self, key, frames: np.ndarray, size: int):
    """Device features and boxes of one padded chunk: kept, being computed by another thread
    (awaited, not recomputed), or computed (through the coalescer when there is one)."""
    coalescer = self.coalescer

    def compute(_):
      if coalescer is not None:
        return [coalescer(frames, self._state)]
      return [self.image_fn.run_chunk(pad_rows(frames, size), self._state)]

    # another thread computes it: through the coalescer, wait as blocked on it
    wait = coalescer.wait if coalescer is not None else lambda f: f.result()
    return self.feature_cache.fetch([key], compute, wait)[0]

  def raw_outputs(self, clip, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Host logits (T, P, Q) and pred_boxes (T, P, 4) of the clip's frames."""
    emb, mask = self.embed_queries(queries)
    host = clip.frames
    logits, boxes = [], []
    for start, stop, size in plan_chunks(len(clip), self.image_fn.buckets):
      key = (
        clip.identity,
        clip.height,
        clip.width,
        tuple(int(f) for f in clip.frame_ids[start:stop]),
      )
      feats, pred = self._image_chunk(key, host[start:stop], size)
      lg = self.head_fn.run_chunk(feats, self._state, emb, mask)
      logits.append(np.asarray(lg)[: stop - start, :, : len(queries)])
      boxes.append(np.asarray(pred)[: stop - start])
    return np.concatenate(logits), np.concatenate(boxes)

  def detect(self, clip, queries: Sequence[str], *, threshold: float) -> list[list[Box]]:
    """Boxes per frame of `clip` scoring > threshold, in source-frame pixels."""
    from aotd_jax.models import owlv2_processing as proc

    if not len(clip):
      return []
    logits, boxes = self.raw_outputs(clip, list(queries))
    outputs = types.SimpleNamespace(logits=logits, pred_boxes=boxes)
    sizes = [(clip.height, clip.width)] * len(clip)
    results = proc.post_process_object_detection(outputs, threshold, sizes, self.nms_threshold)
    limit = [clip.width, clip.height] * 2
    # whole arrays to Python numbers at once: per-box numpy calls cost ~20 us a box, and a
    # clip's frames can hold hundreds of boxes over the threshold
    return [
      [
        Box(fid, queries[l], sc, tuple(b))
        for sc, l, b in zip(
          r["scores"].tolist(), r["labels"].tolist(), np.clip(r["boxes"], 0, limit).tolist()
        )
      ]
      for fid, r in zip(np.asarray(clip.frame_ids).tolist(), results)
    ]
