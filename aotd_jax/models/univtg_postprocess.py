"""Everything around the UniVTG network: inputs, the clips' frame indices, training targets
and losses, and the post-processing of its dense predictions into top-k moments with temporal
NMS. The CLIP features themselves are computed in `aotd_jax.data.univtg_features`.

Conventions of the official code (showlab/UniVTG, `main/dataset.py`, `main/inference_mr.py`,
`main_gradio.py`), kept so that released checkpoints behave as published:
- a video of `L` clips of `clip_length` seconds; features of each block L2-normalised; the
  temporal endpoint features (TEF) of clip i are `(i / L, (i + 1) / L)`;
- clip i's anchor ("timestamp") is `(i + clip_length / 2) / L` in units of the video length.
  (This equals the clip centre only for clip_length = 1; the official models were trained
  with it, so we keep it.) A moment predicted at clip i is
  `(anchor_i + pred_spans[i]) * duration`, scored by `pred_logits[i]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aotd_jax.models.univtg import UniVTGOutput, cosine_similarity

# Loss weights of the released pre-training script (scripts/pretrain.sh).
DEFAULT_LOSS_WEIGHTS = {
  "loss_b": 10.0,
  "loss_g": 1.0,
  "loss_f": 10.0,
  "loss_s_intra": 0.1,
  "loss_s_inter": 0.1,
}

# ------------------------------------------------------------------------------ inputs


def temporal_endpoint_features(num_clips: int) -> np.ndarray:
  """(L, 2) float32: start and end of each clip as a fraction of the video."""
  st = np.arange(num_clips, dtype=np.float32) / num_clips
  return np.stack([st, st + 1.0 / num_clips], axis=1)


def clip_anchors(num_clips: int, clip_length: float) -> np.ndarray:
  """(L,) float32 anchor of each clip, as the official `timestamp` (see the module doc)."""
  return ((np.arange(num_clips, dtype=np.float32) + clip_length / 2) / num_clips).astype(np.float32)


def _l2(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _pad(seqs: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
  out = np.zeros((len(seqs), length, seqs[0].shape[-1]), np.float32)
  mask = np.zeros((len(seqs), length), np.float32)
  for i, s in enumerate(seqs):
    out[i, : len(s)], mask[i, : len(s)] = s, 1.0
  return out, mask


def batch_inputs(
  videos: Sequence[np.ndarray | Sequence[np.ndarray]],
  queries: Sequence[np.ndarray],
  *,
  use_tef: bool = True,
  normalize: bool = True,
  pad_video_to: int | None = None,
  pad_text_to: int | None = None,
) -> dict:
  """Model inputs for a batch: `src_vid`, `src_vid_mask`, `src_txt`, `src_txt_mask` (numpy).

  videos: per video, one (L, D) array or a list of feature blocks [(L, D1), (L, D2), ...]
  (e.g. SlowFast then CLIP), each L2-normalised, cut to the shortest, TEF appended.
  queries: per query, (Lt, Dt) token features (L2-normalised per token as official).
  pad_*_to: pad to a fixed length (bucket) so a jitted model compiles once.
  """
  if len(videos) != len(queries) or not videos:
    raise ValueError(
      f"need as many queries as videos (>0), got {len(videos)} videos and {len(queries)} queries"
    )
  vids = []
  for i, v in enumerate(videos):
    blocks = [np.asarray(b, np.float32) for b in ([v] if isinstance(v, np.ndarray) else v)]
    if any(b.ndim != 2 or len(b) == 0 for b in blocks):
      raise ValueError(
        f"video {i}: feature blocks must be non-empty (L, D) arrays, got "
        f"{[b.shape for b in blocks]}"
      )
    n = min(len(b) for b in blocks)
    feats = [(_l2(b[:n]) if normalize else b[:n]) for b in blocks]
    if use_tef:
      feats.append(temporal_endpoint_features(n))
    vids.append(np.concatenate(feats, axis=1))
  txts = []
  for i, q in enumerate(queries):
    q = np.asarray(q, np.float32)
    if q.ndim != 2 or len(q) == 0:
      raise ValueError(
        f"query {i}: token features must be a non-empty (Lt, D) array, got {q.shape}"
      )
    txts.append(_l2(q) if normalize else q)
  lv = max(len(v) for v in vids) if pad_video_to is None else pad_video_to
  lt = max(len(t) for t in txts) if pad_text_to is None else pad_text_to
  if any(len(v) > lv for v in vids) or any(len(t) > lt for t in txts):
    raise ValueError(
      f"pad_video_to={pad_video_to} / pad_text_to={pad_text_to} is shorter than "
      "the longest video / query"
    )
  src_vid, src_vid_mask = _pad(vids, lv)
  src_txt, src_txt_mask = _pad(txts, lt)
  return {
    "src_vid": src_vid,
    "src_vid_mask": src_vid_mask,
    "src_txt": src_txt,
    "src_txt_mask": src_txt_mask,
  }


# ------------------------------------------------------------------------------ clips


def clip_frame_indices(num_frames: int, fps: float, clip_length: float) -> np.ndarray:
  """One frame per clip, at t = k * clip_length (the official ffmpeg `fps=1/clip_length`)."""
  n = max(1, int(round(num_frames / (fps * clip_length))))
  return np.minimum(np.round(np.arange(n) * clip_length * fps).astype(np.int64), num_frames - 1)


def clip_row_indices(times: np.ndarray, span_seconds: float, clip_length: float) -> np.ndarray:
  """One row per clip of `clip_length` seconds, for rows taken at `times` (seconds from the first).

  The rows of a clip need not be consecutive frames (a question clip samples a long window):
  clip k reads the row at t = k * clip_length, found by interpolating the row index over
  `times` and rounding. For consecutive frames this is `clip_frame_indices`.
  """
  times = np.asarray(times, dtype=np.float64)
  n = max(1, int(round(span_seconds / clip_length)))
  rows = np.interp(np.arange(n) * clip_length, times, np.arange(len(times)))
  return np.minimum(np.round(rows).astype(np.int64), len(times) - 1)


# ------------------------------------------------------------------------------ targets


def moment_targets(
  windows: Sequence[Sequence[Sequence[float]]],
  num_clips: Sequence[int],
  clip_length: float,
  *,
  pad_to: int | None = None,
  rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
  """Training targets for moment retrieval, as the official `DatasetMR` builds them.

  windows: per sample, a list of [start, end] seconds; num_clips: per sample, its valid L.
  Returns (B, L, ...) arrays: `timestamp` (anchors, x2), `timestamp_mask` (valid clips),
  `timestamp_window` (clips whose anchor lies in a moment), `span_labels_nn` (that moment,
  normalised), `saliency_scores` (= timestamp_window) and `saliency_pos_labels` (B,): one
  random positive clip per sample.
  """
  rng = rng or np.random.default_rng(0)
  big_l = max(num_clips) if pad_to is None else pad_to
  b = len(num_clips)
  out = {
    "timestamp": np.zeros((b, big_l, 2), np.float32),
    "timestamp_mask": np.zeros((b, big_l), np.float32),
    "timestamp_window": np.zeros((b, big_l), np.float32),
    "span_labels_nn": np.zeros((b, big_l, 2), np.float32),
    "saliency_pos_labels": np.zeros((b,), np.int32),
  }
  for i, (wins, n) in enumerate(zip(windows, num_clips)):
    wins = np.asarray(wins, np.float32).reshape(-1, 2)
    if n > big_l or n < 1 or len(wins) == 0 or np.any(wins[:, 1] < wins[:, 0]):
      raise ValueError(
        f"sample {i}: need 1 <= num_clips <= {big_l} and windows with "
        f"start <= end, got num_clips={n}, windows={wins.tolist()}"
      )
    anchor = clip_anchors(n, clip_length)
    wts = wins / (n * clip_length)
    nn = np.zeros((n, 2), np.float32)
    inside = (anchor[:, None] >= wts[None, :, 0]) & (anchor[:, None] <= wts[None, :, 1])
    if not inside.any():
      nn[:] = wts[0]  # official fallback (short moments, e.g. ActivityNet)
    for w in range(len(wts)):
      nn[inside[:, w]] = wts[w]
    window = (anchor >= nn[:, 0]) & (anchor <= nn[:, 1])
    if not window.any():
      window[min(max(int(wins[0, 0] / clip_length), 0), n - 1)] = True
    out["timestamp"][i, :n] = anchor[:, None]
    out["timestamp_mask"][i, :n] = 1.0
    out["timestamp_window"][i, :n] = window
    out["span_labels_nn"][i, :n] = nn
    out["saliency_pos_labels"][i] = rng.choice(np.flatnonzero(window))
  out["saliency_scores"] = out["timestamp_window"].copy()
  return out


# ------------------------------------------------------------------------------ losses


def _giou_pairs(a: jax.Array, b: jax.Array) -> jax.Array:
  """Generalised temporal IoU of matching rows of (..., 2) spans."""
  inter = jnp.clip(jnp.minimum(a[..., 1], b[..., 1]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
  union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
  iou = inter / jnp.maximum(union, 1e-12)
  hull = jnp.clip(jnp.maximum(a[..., 1], b[..., 1]) - jnp.minimum(a[..., 0], b[..., 0]), 0)
  return iou - (hull - union) / jnp.maximum(hull, 1e-12)


def _smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
  d = jnp.abs(x - y)
  return jnp.where(d < 1.0, 0.5 * d * d, d - 0.5)


def univtg_losses(
  out: UniVTGOutput,
  targets: dict,
  *,
  weights: dict | None = None,
  eos_coef: float = 0.1,
  temperature: float = 0.07,
) -> tuple[jax.Array, dict]:
  """The official criterion (spans, labels, saliency): returns (weighted total, parts).

  loss_b: smooth-L1 of predicted vs target (start, end) on clips inside the moment;
  loss_g: 1 - GIoU there; loss_f: foreground BCE (background weighted by eos_coef);
  loss_s_inter / loss_s_intra: contrastive saliency across / within videos.
  """
  weights = DEFAULT_LOSS_WEIGHTS if weights is None else weights
  mask = jnp.asarray(targets["timestamp_mask"])
  window = jnp.asarray(targets["timestamp_window"])
  src_spans = jnp.asarray(targets["timestamp"]) + out.pred_spans
  gt = jnp.asarray(targets["span_labels_nn"])
  n_win = jnp.maximum(window.sum(), 1.0)
  loss_b = (_smooth_l1(src_spans, gt) * window[..., None]).sum() / n_win
  loss_g = ((1.0 - _giou_pairs(src_spans, gt)) * window).sum() / n_win

  prob = jnp.clip(out.pred_logits[..., 0], 1e-12, 1 - 1e-7)
  bce = -(window * jnp.log(prob) + (1 - window) * jnp.log(1 - prob))
  w = jnp.where(window > 0, 1.0, eos_coef) * mask
  loss_f = (bce * w).sum() / jnp.maximum(mask.sum(), 1.0)

  vid, txt = out.vid_mem_proj.astype(jnp.float32), out.txt_mem_proj[:, 0].astype(jnp.float32)
  pos = jnp.asarray(targets["saliency_pos_labels"])
  rows = jnp.arange(vid.shape[0])
  pos_feats = vid[rows, pos]
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
  sim = unit(pos_feats) @ unit(txt).T / temperature
  loss_inter = -(
    jnp.diag(jax.nn.log_softmax(sim, axis=1)).mean()
    + jnp.diag(jax.nn.log_softmax(sim.T, axis=1)).mean()
  )
  scores = jnp.asarray(targets["saliency_scores"])
  neg = (scores < scores[rows, pos][:, None]).at[rows, pos].set(True)
  valid = neg & (mask > 0)
  sim_in = cosine_similarity(vid, txt[:, None]) + jnp.where(valid, 0.0, -103.27893)
  loss_i = jax.nn.log_softmax(sim_in / temperature, axis=1)[rows, pos].mean()
  loss_j = jax.nn.log_softmax(sim_in.T / temperature, axis=1)[pos, rows].mean()
  loss_intra = -(loss_i + loss_j)

  parts = {
    "loss_b": loss_b,
    "loss_g": loss_g,
    "loss_f": loss_f,
    "loss_s_inter": loss_inter,
    "loss_s_intra": loss_intra,
  }
  total = sum(weights.get(k, 0.0) * v for k, v in parts.items())
  return total, parts


# ------------------------------------------------------------------------------ post-processing


def temporal_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """IoU of two [start, end] windows (true union)."""
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


def _hull_iou(a, b) -> float:
  # The official NMS divides by the hull (max end - min start), not the union.
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  hull = max(a[1], b[1]) - min(a[0], b[0])
  return inter / hull if hull > 0 else 0.0


def temporal_nms(
  windows: Sequence[Sequence[float]], nms_thd: float, max_after_nms: int = 100
) -> list[list[float]]:
  """Greedy NMS of [start, end, score] rows, as the official `temporal_nms`."""
  rest = sorted((list(map(float, w)) for w in windows), key=lambda w: -w[2])
  kept = []
  while rest and len(kept) < max_after_nms:
    best = rest.pop(0)
    kept.append(best)
    rest = [w for w in rest if _hull_iou(best, w) <= nms_thd]
  return kept


@dataclasses.dataclass
class MomentPrediction:
  """Per query: `pred_relevant_windows` [[start_s, end_s, score], ...] best first (official
  name), `pred_saliency_scores` per valid clip, and `duration` in seconds."""

  pred_relevant_windows: list[list[float]]
  pred_saliency_scores: list[float]
  duration: float

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def decode_moments(
  out: UniVTGOutput,
  *,
  clip_length: float,
  durations: Sequence[float] | None = None,
  nms_thd: float | None = 0.7,
  max_before_nms: int = 10,
  top_k: int = 5,
) -> list[MomentPrediction]:
  """Dense predictions -> top-k moments per query (seconds), with temporal NMS.

  durations: per video in seconds (default: valid clips x clip_length). Windows are
  clamped to [0, duration]; padded clips score 0 and are never returned.
  """
  logits = np.asarray(out.pred_logits)[..., 0]
  spans = np.asarray(out.pred_spans)
  sal = np.asarray(out.saliency_scores)
  mask = np.asarray(out.src_vid_mask) > 0
  results = []
  for i in range(len(logits)):
    n = int(mask[i].sum())
    if n == 0:
      results.append(MomentPrediction([], [], 0.0))
      continue
    duration = float(durations[i]) if durations is not None else n * clip_length
    # Official inference uses anchors from the *valid* length and scales by the duration.
    win = (clip_anchors(n, clip_length)[:, None] + spans[i, :n]) * duration
    win = np.clip(win, 0.0, duration)
    rows = [[float(s), float(e), float(c)] for (s, e), c in zip(win, logits[i, :n])]
    rows.sort(key=lambda r: -r[2])
    if nms_thd is not None:
      rows = temporal_nms(rows[:max_before_nms], nms_thd, max_after_nms=top_k)
    results.append(
      MomentPrediction(
        [[round(v, 4) for v in r] for r in rows[:top_k]], [float(s) for s in sal[i, :n]], duration
      )
    )
  return results


def highlight_clips(pred: MomentPrediction, clip_length: float, k: int = 1) -> list[float]:
  """Start times (seconds) of the k most salient clips (the highlight-detection answer)."""
  order = np.argsort(-np.asarray(pred.pred_saliency_scores), kind="stable")[:k]
  return [float(i * clip_length) for i in order]
