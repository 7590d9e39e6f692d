"""OWLv2 pre- and post-processing, matching transformers' `Owlv2ImageProcessor`.

Pre-processing: rescale to [0, 1], pad to a square at the bottom/right, resize with
scikit-image's anti-aliased linear resize (Gaussian blur with sigma = (factor - 1) / 2, then
`ndimage.zoom(order=1, grid_mode=True, mode="mirror")`, clipped to the input range), normalise
with CLIP's mean/std. Both the blur and the linear zoom are separable linear maps, so each is
one (out, in) matrix per axis size, built once and cached: an image is `R @ x @ R.T` per channel.

Padding value: transformers (4.x and 5.x, PIL and torchvision back ends) pads with 0.0 after
rescaling (black); the original OWLv2 code pads with 0.5 grey. `pad_value` defaults to
transformers' 0.0 so that features match the HF pipeline; pass 0.5 for the original.

Post-processing: sigmoid of the best query's logit per box, threshold, optional NMS, boxes
xyxy in pixels of the original frame (the padded square is max(h, w) on each side).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from aotd_jax.models.pixel_norms import CLIP_MEAN as OPENAI_CLIP_MEAN
from aotd_jax.models.pixel_norms import CLIP_STD as OPENAI_CLIP_STD


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
  """scipy.ndimage's 'mirror' boundary (d c b | a b c d | c b a) for integer indices."""
  if n == 1:
    return np.zeros_like(idx)
  period = 2 * (n - 1)
  idx = np.mod(idx, period)
  return np.where(idx > n - 1, period - idx, idx)


def _blur_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
  """(n, n) matrix of scipy's `gaussian_filter1d(mode='mirror')`; identity when sigma is 0."""
  if sigma <= 1e-15:
    return np.eye(n)
  radius = int(truncate * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 / (sigma * sigma) * offsets.astype(np.float64) ** 2)
  weights /= weights.sum()
  m = np.zeros((n, n))
  rows = np.arange(n)[:, None]
  np.add.at(
    m,
    (np.broadcast_to(rows, (n, offsets.size)), _mirror(rows + offsets[None], n)),
    np.broadcast_to(weights, (n, offsets.size)),
  )
  return m


def _zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of scipy's `zoom(order=1, grid_mode=True, mode='mirror')` on one axis."""
  x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # pixel-area-aligned sample points
  lo = np.floor(x)
  w = x - lo
  lo = lo.astype(np.int64)
  m = np.zeros((n_out, n_in))
  rows = np.arange(n_out)
  np.add.at(m, (rows, _mirror(lo, n_in)), 1.0 - w)
  np.add.at(m, (rows, _mirror(lo + 1, n_in)), w)
  return m


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """The anti-aliased linear resize of one axis as an (n_out, n_in) float32 matrix."""
  sigma = max(0.0, (n_in / n_out - 1) / 2)
  return (_zoom_matrix(n_in, n_out) @ _blur_matrix(n_in, sigma)).astype(np.float32)


def _check_image(image: Any, i: int) -> np.ndarray:
  arr = np.asarray(image)
  if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f"images[{i}] must be an (H, W, 3) RGB array, got shape {arr.shape}")
  if arr.dtype != np.uint8:
    raise ValueError(f"images[{i}] must be uint8 (0..255), got dtype {arr.dtype}")
  return arr


def preprocess(
  images: Sequence[np.ndarray],
  size: int = 960,
  *,
  pad_value: float = 0.0,
  image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
  image_std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
  """Uint8 (H, W, 3) frames -> `pixel_values` (B, 3, size, size) float32, as `Owlv2ImageProcessor`.

  Args:
    images: a list of RGB frames (sizes may differ) or a (B, H, W, 3) uint8 array.
    size: the model's `vision_config.image_size` (960 for owlv2-base-patch16-ensemble).
    pad_value: value of the bottom/right padding in [0, 1] units (transformers: 0.0).
  """
  if isinstance(size, (tuple, list)) or int(size) < 1:
    raise ValueError(f"size must be a positive int (square output side), got {size!r}")
  if len(images) == 0:
    raise ValueError("images is empty: nothing to preprocess")
  mean = np.asarray(image_mean, np.float32)
  std = np.asarray(image_std, np.float32)
  out = np.empty((len(images), 3, size, size), np.float32)
  for i, image in enumerate(images):
    x = _check_image(image, i).astype(np.float32) * np.float32(1 / 255)
    h, w, _ = x.shape
    side = max(h, w)
    if (h, w) != (side, side):
      x = np.pad(x, ((0, side - h), (0, side - w), (0, 0)), constant_values=pad_value)
    r = resize_matrix(side, size)
    y = np.einsum("oh,hwc,pw->cop", r, x, r, optimize=True)
    y = np.clip(y, x.min(), x.max())  # skimage clips the interpolation to the input's range
    out[i] = (y - mean[:, None, None]) / std[:, None, None]
  return out


def center_to_corners(boxes: np.ndarray) -> np.ndarray:
  """(cx, cy, w, h) -> (x0, y0, x1, y1), same float ops as transformers."""
  cx, cy, w, h = np.moveaxis(boxes, -1, 0)
  return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def _check_target_sizes(target_sizes, batch: int) -> np.ndarray | None:
  if target_sizes is None:
    return None
  sizes = np.asarray(target_sizes)
  if sizes.ndim != 2 or sizes.shape != (batch, 2):
    raise ValueError(
      f"target_sizes must be {batch} (height, width) pairs, one per image; got shape {sizes.shape}"
    )
  return sizes


def _scale(boxes: np.ndarray, hw) -> np.ndarray:
  # The model saw the frame padded to a max(h, w) square, so both axes scale by the long side.
  return boxes * np.float32(max(int(hw[0]), int(hw[1])))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU matrix (N, M) of xyxy boxes."""
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  union = area(a)[:, None] + area(b)[None] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(
  boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
  """Greedy per-label NMS; returns kept indices in descending score order."""
  order = np.argsort(-scores, kind="stable")
  keep = []
  suppressed = np.zeros(len(scores), bool)
  iou = box_iou(boxes, boxes)
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= (iou[i] > iou_threshold) & (labels == labels[i])
  return np.asarray(keep, np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def post_process_object_detection(
  outputs, threshold: float = 0.1, target_sizes=None, nms_threshold: float | None = None
) -> list[dict[str, np.ndarray]]:
  """Model outputs -> per image {"scores" (N,), "labels" (N,) query index, "boxes" (N, 4) xyxy}.

  As transformers' `Owlv2ImageProcessor.post_process_object_detection` (score = sigmoid of the
  best query's logit per box, kept when > threshold, boxes scaled by the original frame's long
  side), plus optional per-label NMS at IoU `nms_threshold` (transformers has none here).
  Without NMS the kept boxes stay in patch order, as transformers returns them.
  """
  logits = np.asarray(outputs.logits, np.float32)
  boxes = center_to_corners(np.asarray(outputs.pred_boxes, np.float32))
  sizes = _check_target_sizes(target_sizes, len(logits))
  if nms_threshold is not None and not 0.0 <= nms_threshold <= 1.0:
    raise ValueError(f"nms_threshold must be in [0, 1] or None, got {nms_threshold}")
  results = []
  for b in range(len(logits)):
    scores = _sigmoid(logits[b].max(-1))
    labels = logits[b].argmax(-1)
    bx = boxes[b] if sizes is None else _scale(boxes[b], sizes[b])
    keep = np.nonzero(scores > threshold)[0]
    if nms_threshold is not None and keep.size:
      keep = keep[nms(bx[keep], scores[keep], labels[keep], nms_threshold)]
    results.append({"scores": scores[keep], "labels": labels[keep], "boxes": bx[keep]})
  return results


def post_process_image_guided_detection(
  outputs, threshold: float = 0.0, nms_threshold: float = 0.3, target_sizes=None
) -> list[dict[str, Any]]:
  """As transformers' `post_process_image_guided_detection`: class-agnostic NMS, then scores
  rescaled to [0, 1] relative to the image's best box (alpha), boxes with alpha > 0 kept."""
  logits = np.asarray(outputs.logits, np.float32)
  boxes = center_to_corners(np.asarray(outputs.target_pred_boxes, np.float32))
  sizes = _check_target_sizes(target_sizes, len(logits))
  results = []
  for b in range(len(logits)):
    scores = _sigmoid(logits[b].max(-1))
    if nms_threshold < 1.0:
      iou = box_iou(boxes[b], boxes[b])
      for i in np.argsort(-scores, kind="stable"):
        if not scores[i]:
          continue
        row = iou[i].copy()
        row[i] = -1.0
        scores[row > nms_threshold] = 0.0
    bx = boxes[b] if sizes is None else _scale(boxes[b], sizes[b])
    if not np.any(scores):
      continue  # transformers skips such images (its result list is then shorter than the batch)
    scores[scores < threshold] = 0.0
    top = scores.max() + np.float32(1e-6)
    alphas = np.clip((scores - top * np.float32(0.1)) / (top * np.float32(0.9)), 0.0, 1.0)
    keep = alphas > 0
    results.append({"scores": alphas[keep], "labels": None, "boxes": bx[keep]})
  return results
