"""Paired comparisons of two students on the same test questions and seeds, with 95 % CIs.

`correct` arrays are (seeds, questions) of 0/1: student A's and student B's answers to the
same questions, trained with the same seeds (same data order). Two intervals on the mean
difference A - B:

- `paired_bootstrap`: resamples seeds and questions independently (a two-way bootstrap),
  so it covers both the test set's sampling and the training seeds' spread;
- `nested_bootstrap`: when each seed has its own test questions (its own world), resamples
  seeds, then each drawn seed's questions (a hierarchical bootstrap);
- `t_interval`: Student's t over the per-seed differences of accuracy (the seeds' spread
  only; needs two or more seeds).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LEVEL = 0.95
# Student's t, two-sided 95 % (the 0.975 quantile), for 1..30 degrees of freedom.
_T975 = (
  12.7062,
  4.3027,
  3.1824,
  2.7764,
  2.5706,
  2.4469,
  2.3646,
  2.3060,
  2.2622,
  2.2281,
  2.2010,
  2.1788,
  2.1604,
  2.1448,
  2.1314,
  2.1199,
  2.1098,
  2.1009,
  2.0930,
  2.0860,
  2.0796,
  2.0739,
  2.0687,
  2.0639,
  2.0595,
  2.0555,
  2.0518,
  2.0484,
  2.0452,
  2.0423,
)
_Z975 = 1.959964


def t975(df: int) -> float:
  """The 0.975 quantile of Student's t with `df` degrees of freedom (table to 30, then the
  Cornish-Fisher expansion, within 1e-4 there)."""
  if df < 1:
    raise ValueError(f"t975: df={df} must be >= 1")
  if df <= len(_T975):
    return _T975[df - 1]
  z = _Z975
  return (
    z
    + (z**3 + z) / (4 * df)
    + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
  )


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim == 1:
    a, b = a[None], b[None]
  if a.shape != b.shape or a.ndim != 2 or a.size == 0:
    raise ValueError(
      f"paired comparison: correctness arrays of shapes {a.shape} and {b.shape}; "
      "expected the same non-empty (seeds, questions)"
    )
  return a, b


def t_interval(diffs: Sequence[float]) -> dict:
  """Mean of the per-seed differences and its 95 % t interval ({mean, lo, hi, n})."""
  d = np.asarray(diffs, np.float64)
  if d.size < 2:
    raise ValueError(f"t_interval: {d.size} seed(s); an interval over seeds needs at least 2")
  mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
  half = t975(d.size - 1) * se
  return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(d.size)}


def paired_bootstrap(a, b, *, samples: int = 4000, seed: int = 0) -> dict:
  """Mean of A - B over seeds and questions, and its 95 % percentile interval from
  `samples` two-way resamples (seeds and questions drawn with replacement, independently).

  Returns {mean, lo, hi, seeds, questions, samples}.
  """
  a, b = _pair(a, b)
  d = a - b
  n_seeds, n_q = d.shape
  rng = np.random.default_rng(seed)
  # each resample = how often every seed / question is drawn (multinomial counts)
  ws = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples)
  wq = rng.multinomial(n_q, np.full(n_q, 1.0 / n_q), size=samples)
  stats = np.einsum("bs,sq,bq->b", ws, d, wq) / (n_seeds * n_q)
  lo, hi = np.quantile(stats, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
  return {
    "mean": float(d.mean()),
    "lo": float(lo),
    "hi": float(hi),
    "seeds": int(n_seeds),
    "questions": int(n_q),
    "samples": int(samples),
  }


def _pair_nested(a, b) -> list[np.ndarray]:
  """Per-seed differences A - B of the seeds' own (possibly differently long) questions."""
  if len(a) != len(b) or not len(a):
    raise ValueError(
      f"nested comparison: {len(a)} and {len(b)} seeds; expected the same non-zero number"
    )
  out = []
  for k, (x, y) in enumerate(zip(a, b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
      raise ValueError(
        f"nested comparison: seed {k}: correctness arrays of shapes {x.shape} "
        f"and {y.shape}; expected the same non-empty (questions,)"
      )
    out.append(x - y)
  return out


def nested_bootstrap(a, b, *, samples: int = 4000, seed: int = 0) -> dict:
  """Mean over seeds of the per-seed mean A - B, and its 95 % percentile interval from
  `samples` hierarchical resamples: seeds with replacement, then each seed's own questions
  with replacement. a, b: one 0/1 array per seed (lengths may differ between seeds).

  Returns {mean, lo, hi, seeds, questions (total), samples}.
  """
  diffs = _pair_nested(a, b)
  rng = np.random.default_rng(seed)
  n_seeds = len(diffs)
  # per seed, `samples` resampled means of its questions
  means = np.stack(
    [
      rng.multinomial(d.size, np.full(d.size, 1.0 / d.size), size=samples) @ d / d.size
      for d in diffs
    ],
    axis=1,
  )  # (samples, seeds)
  ws = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples)
  stats = (ws * means).sum(axis=1) / n_seeds
  lo, hi = np.quantile(stats, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
  return {
    "mean": float(np.mean([d.mean() for d in diffs])),
    "lo": float(lo),
    "hi": float(hi),
    "seeds": n_seeds,
    "questions": int(sum(d.size for d in diffs)),
    "samples": int(samples),
  }


def compare(a, b, *, samples: int = 4000, seed: int = 0, nested: bool = False) -> dict:
  """Both intervals for A - B: {mean, bootstrap: {...}, t: {...} | None, per_seed: [...]}.

  nested: each seed has its own test questions (`nested_bootstrap`); otherwise every seed
  answers the same questions (`paired_bootstrap`, a (seeds, questions) array).
  """
  if nested:
    per_seed = [float(d.mean()) for d in _pair_nested(a, b)]
    boot = nested_bootstrap(a, b, samples=samples, seed=seed)
  else:
    a, b = _pair(a, b)
    per_seed = (a.mean(axis=1) - b.mean(axis=1)).tolist()
    boot = paired_bootstrap(a, b, samples=samples, seed=seed)
  return {
    "mean": float(np.mean(per_seed)),
    "per_seed": per_seed,
    "bootstrap": boot,
    "nested": bool(nested),
    "t": t_interval(per_seed) if len(per_seed) > 1 else None,
  }


def fmt_interval(ci: dict | None, scale: float = 100.0) -> str:
  """'+1.2 [-3.4, +5.6]' (points), or '-' without an interval."""
  if not ci:
    return "-"
  return f"{scale * ci['mean']:+.1f} [{scale * ci['lo']:+.1f}, {scale * ci['hi']:+.1f}]"
