"""How the paper scores a Video-LLM: multiple-choice accuracy (option letter or text parsed from
the output), open-ended score, and the grounding of generated rationales (boxes and frame
windows parsed from the text, IoU against ground truth, as measured on STAR)."""

from __future__ import annotations

import collections
import re
import string
from typing import Callable, Iterable, Mapping, Sequence

LETTERS = string.ascii_uppercase

_LETTER_PATTERNS = (
  re.compile(r"^\s*\(?([A-Z])\)?(?:[.:)\s]|$)"),  # "B", "(B)", "B.", "B) text"
  re.compile(r"(?:answer|option)\s*(?:is|:)?\s*\(?([A-Z])\)?\b", re.IGNORECASE),
)


def normalize(text: str) -> str:
  """Lower-case, drop punctuation and articles, squeeze spaces (SQuAD-style)."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def parse_choice(output: str, choices: Sequence[str]) -> int | None:
  """The option an output picks: its letter ("(B)", "B.", "The answer is B") or, failing that,
  the one choice whose normalised text appears in the output (None when ambiguous or absent)."""
  for pattern in _LETTER_PATTERNS:
    m = pattern.search(output.strip())
    if m and m.group(1).upper() in LETTERS[: len(choices)]:
      if pattern is _LETTER_PATTERNS[0] or m.group(1).isupper():
        return LETTERS.index(m.group(1).upper())
  norm = normalize(output)
  hits = [i for i, c in enumerate(choices) if normalize(c) and normalize(c) in norm]
  if len(hits) == 1:
    return hits[0]
  exact = [i for i, c in enumerate(choices) if normalize(c) == norm]
  return exact[0] if exact else None


def mc_accuracy(
  predictions: Iterable[int | None], answers: Iterable[int], types: Iterable[str] | None = None
) -> dict:
  """Accuracy overall and per question type (unparsable outputs count as wrong)."""
  preds, gold = list(predictions), list(answers)
  kinds = list(types) if types is not None else ["all"] * len(gold)
  per = collections.defaultdict(lambda: [0, 0])
  for p, g, t in zip(preds, gold, kinds):
    per[t][0] += int(p is not None and p == g)
    per[t][1] += 1
  correct = sum(c for c, _ in per.values())
  total = sum(n for _, n in per.values())
  return {
    "accuracy": correct / total if total else 0.0,
    "count": total,
    "per_type": {t: c / n for t, (c, n) in sorted(per.items())},
  }


def open_ended_score(
  outputs: Sequence[str], answers: Sequence[str], judge: Callable[[str, str], float] | None = None
) -> dict:
  """Normalised exact match, and the judge's mean score when a judge is given."""
  match = [normalize(o) == normalize(a) for o, a in zip(outputs, answers)]
  out = {"exact_match": sum(match) / len(match) if match else 0.0, "count": len(match)}
  if judge is not None:
    scores = [float(judge(o, a)) for o, a in zip(outputs, answers)]
    out["judge_score"] = sum(scores) / len(scores) if scores else 0.0
  return out


# -- rationale grounding --------------------------------------------------------------------------

_BOX = re.compile(
  r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]"
  r"\s*in\s+frame\s+(\d+)",
  re.IGNORECASE,
)
_WINDOW = re.compile(r"\bframes?\s+(\d+)(?:\s*(?:-|to|–)\s*(\d+))?", re.IGNORECASE)


def parse_boxes(text: str) -> list[tuple[int, list[float]]]:
  """`[x0, y0, x1, y1] in frame F` mentions in a rationale → [(F, box), ...]."""
  return [(int(m.group(5)), [float(m.group(i)) for i in range(1, 5)]) for m in _BOX.finditer(text)]


def parse_windows(text: str) -> list[tuple[int, int]]:
  """`frames A-B` / `frame A` mentions (not those of boxes) → end-exclusive windows."""
  box_frames = {m.start(5) for m in _BOX.finditer(text)}
  out = []
  for m in _WINDOW.finditer(text):
    if m.start(1) in box_frames:
      continue
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else a
    out.append((min(a, b), max(a, b) + 1))
  return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def window_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
  inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
  union = max(a[1], b[1]) - min(a[0], b[0])
  return inter / union if union > 0 else 0.0


def rationale_grounding(
  rationale: str,
  gt_boxes: Mapping[int, Sequence[Sequence[float]]],
  gt_windows: Sequence[tuple[int, int]],
) -> dict:
  """IoU of the boxes and windows a rationale states against ground truth.

  Each stated box is scored against the best ground-truth box of its frame (0 if the frame
  has none); each stated window against the best ground-truth window. Returns the means and
  the counts (None when the rationale states nothing of that kind).
  """
  boxes = parse_boxes(rationale)
  windows = parse_windows(rationale)
  b = [max((box_iou(box, g) for g in gt_boxes.get(f, ())), default=0.0) for f, box in boxes]
  w = [max((window_iou(win, g) for g in gt_windows), default=0.0) for win in windows]
  return {
    "box_iou": sum(b) / len(b) if b else None,
    "boxes": len(b),
    "window_iou": sum(w) / len(w) if w else None,
    "windows": len(w),
  }
