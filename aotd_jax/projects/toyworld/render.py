"""Toy world, part 1: clip specs, sampling and rendering with per-frame ground truth.

A clip is a handful of coloured shapes on a plain background. Events happen one at a time
(globally sequential slots), so "before", "after" and "next" have one right answer. Ground
truth boxes are measured on each object's own rasterised mask, so they match the pixels.

World rule (makes Prediction questions answerable): an object that is touched moves away in
the next slot.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
  "red": (220, 40, 40),
  "green": (40, 170, 60),
  "blue": (50, 80, 220),
  "yellow": (230, 200, 30),
}
ACTIONS = ("move", "jump", "spin", "grow", "appear", "disappear", "touch")
BACKGROUND = (235, 235, 235)
PAST = {
  "move": "moved",
  "jump": "jumped",
  "spin": "spun",
  "grow": "grew",
  "appear": "appeared",
  "disappear": "disappeared",
  "touch": "touched",
}
PRESENT = {
  "move": "moves",
  "jump": "jumps",
  "spin": "spins",
  "grow": "grows",
  "appear": "appears",
  "disappear": "disappears",
  "touch": "touches",
}


@dataclasses.dataclass(frozen=True)
class ToyObject:
  """One shape: identity and initial state (pixels; `radius` is the circumscribed size)."""

  shape: str
  colour: str
  x: float
  y: float
  radius: float
  angle: float = 0.0

  @property
  def name(self) -> str:
    return f"{self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class ToyEvent:
  """One action of `object` (index) over frames [start, end] inclusive.

  `target` is the touched object's index (touch only); `params` holds the end state
  (`x`, `y` for move/touch, `height` for jump, `factor` for grow).
  """

  action: str
  object: int
  start: int
  end: int
  target: int | None = None
  params: tuple[tuple[str, float], ...] = ()

  def param(self, key: str) -> float:
    return dict(self.params)[key]


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything needed to render a clip, deterministically."""

  objects: tuple[ToyObject, ...]
  events: tuple[ToyEvent, ...]
  size: int = 64
  num_frames: int = 24
  fps: int = 8

  def to_json(self) -> dict[str, Any]:
    return {
      "size": self.size,
      "num_frames": self.num_frames,
      "fps": self.fps,
      "objects": [dataclasses.asdict(o) for o in self.objects],
      "events": [dict(dataclasses.asdict(e), params=dict(e.params)) for e in self.events],
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "ClipSpec":
    return cls(
      objects=tuple(ToyObject(**o) for o in d["objects"]),
      events=tuple(
        ToyEvent(**dict(e, params=tuple(sorted(e["params"].items())))) for e in d["events"]
      ),
      size=d["size"],
      num_frames=d["num_frames"],
      fps=d["fps"],
    )


@dataclasses.dataclass
class ClipTruth:
  """Ground truth of a rendered clip.

  boxes: (T, N, 4) float32 xyxy pixel extents (x2/y2 exclusive), NaN where not visible.
  visible: (T, N) bool. names: object names ("red circle"). events: dicts with `action`,
  `object`, `target` (names or None), `start_frame`, `end_frame`.
  """

  video_id: str
  fps: int
  size: int
  names: list[str]
  boxes: np.ndarray
  visible: np.ndarray
  events: list[dict[str, Any]]

  @property
  def num_frames(self) -> int:
    return int(self.boxes.shape[0])

  def to_json(self) -> dict[str, Any]:
    boxes = [
      [
        None if not self.visible[t, i] else [float(v) for v in self.boxes[t, i]]
        for i in range(len(self.names))
      ]
      for t in range(self.num_frames)
    ]
    return {
      "video_id": self.video_id,
      "fps": self.fps,
      "size": self.size,
      "num_frames": self.num_frames,
      "objects": self.names,
      "events": self.events,
      "boxes": boxes,
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "ClipTruth":
    t, n = d["num_frames"], len(d["objects"])
    boxes = np.full((t, n, 4), np.nan, np.float32)
    for ti, row in enumerate(d["boxes"]):
      for i, b in enumerate(row):
        if b is not None:
          boxes[ti, i] = b
    return cls(
      video_id=d["video_id"],
      fps=d["fps"],
      size=d["size"],
      names=list(d["objects"]),
      boxes=boxes,
      visible=~np.isnan(boxes[..., 0]),
      events=list(d["events"]),
    )


# ----------------------------------------------------------------------------- rendering


def _shape_mask(
  shape: str, cx: float, cy: float, r: float, angle: float, size: int
) -> tuple[np.ndarray, int, int]:
  """Mask of one shape on the window that bounds it; returns (mask, x0, y0)."""
  reach = int(math.ceil(r * 1.25)) + 1
  x0, y0 = max(int(cx) - reach, 0), max(int(cy) - reach, 0)
  x1, y1 = min(int(cx) + reach + 1, size), min(int(cy) + reach + 1, size)
  if x1 <= x0 or y1 <= y0:
    return np.zeros((0, 0), bool), x0, y0
  dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
  dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
  if shape == "circle":
    return dx * dx + dy * dy <= r * r, x0, y0
  c, s = math.cos(angle), math.sin(angle)
  u, v = dx * c + dy * s, -dx * s + dy * c
  if shape == "square":
    h = 0.82 * r
    return (np.abs(u) <= h) & (np.abs(v) <= h), x0, y0
  # Equilateral triangle, apex up at angle 0: inside iff on the inner side of all 3 edges.
  big_r = 1.15 * r
  mask = np.ones(u.shape, bool)
  for k in range(3):
    a = -math.pi / 2 + k * 2 * math.pi / 3
    mask &= -(u * math.cos(a) + v * math.sin(a)) <= big_r / 2
  return mask, x0, y0


def object_states(spec: ClipSpec) -> dict[str, np.ndarray]:
  """Per-frame state arrays (T, N): x, y, radius, angle, visible."""
  t_all, n = spec.num_frames, len(spec.objects)
  st = {
    k: np.tile(np.array([getattr(o, k) for o in spec.objects], np.float64), (t_all, 1))
    for k in ("x", "y", "radius", "angle")
  }
  st["visible"] = np.ones((t_all, n), bool)
  frames = np.arange(t_all)
  for ev in sorted(spec.events, key=lambda e: e.start):
    i, s, e = ev.object, ev.start, ev.end
    p = np.clip((frames - s) / max(e - s, 1), 0.0, 1.0)[s:]
    base = {k: st[k][s, i] for k in ("x", "y", "radius", "angle")}
    if ev.action in ("move", "touch"):
      st["x"][s:, i] = base["x"] + p * (ev.param("x") - base["x"])
      st["y"][s:, i] = base["y"] + p * (ev.param("y") - base["y"])
    elif ev.action == "jump":
      st["y"][s:, i] = base["y"] - ev.param("height") * np.sin(np.pi * p)
    elif ev.action == "spin":
      st["angle"][s:, i] = base["angle"] + 2 * np.pi * p
    elif ev.action == "grow":
      st["radius"][s:, i] = base["radius"] * (1 + (ev.param("factor") - 1) * p)
    elif ev.action == "appear":
      st["visible"][:s, i] = False
      st["radius"][s:, i] = base["radius"] * (0.3 + 0.7 * p)
    elif ev.action == "disappear":
      st["radius"][s:, i] = base["radius"] * (1 - 0.7 * p)
      st["visible"][e + 1 :, i] = False
    else:
      raise ValueError(f"unknown action {ev.action!r} in event {ev}")
  return st


def render_clip(
  spec: ClipSpec | dict[str, Any], video_id: str = "clip"
) -> tuple[np.ndarray, ClipTruth]:
  """Renders `spec` (a ClipSpec or its `to_json()` dict) to frames (T, H, W, 3) uint8 and truth.

  Objects are drawn in index order (later ones occlude earlier ones); each box is the
  extent of the object's own mask, so an occluded object keeps its full box.
  """
  if isinstance(spec, dict):
    spec = ClipSpec.from_json(spec)
  st = object_states(spec)
  t_all, n, size = spec.num_frames, len(spec.objects), spec.size
  frames = np.empty((t_all, size, size, 3), np.uint8)
  frames[:] = np.array(BACKGROUND, np.uint8)
  boxes = np.full((t_all, n, 4), np.nan, np.float32)
  for t in range(t_all):
    for i, obj in enumerate(spec.objects):
      if not st["visible"][t, i]:
        continue
      mask, x0, y0 = _shape_mask(
        obj.shape, st["x"][t, i], st["y"][t, i], st["radius"][t, i], st["angle"][t, i], size
      )
      ys, xs = np.nonzero(mask)
      if ys.size == 0:
        continue
      frames[t, y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = COLOURS[obj.colour]
      boxes[t, i] = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
  names = [o.name for o in spec.objects]
  events = [
    {
      "action": e.action,
      "object": names[e.object],
      "target": None if e.target is None else names[e.target],
      "start_frame": int(e.start),
      "end_frame": int(e.end),
    }
    for e in sorted(spec.events, key=lambda e: e.start)
  ]
  truth = ClipTruth(
    video_id=video_id,
    fps=spec.fps,
    size=size,
    names=names,
    boxes=boxes,
    visible=~np.isnan(boxes[..., 0]),
    events=events,
  )
  return frames, truth


# ----------------------------------------------------------------------------- sampling


def _extent(r: float) -> float:
  """Half-extent bound of any shape of size r at any angle."""
  return 1.2 * r + 1


def _free_spot(
  rng: np.random.Generator,
  size: int,
  r: float,
  others: Sequence[tuple[float, float, float]],
  tries: int = 30,
):
  """A centre for an object of size r inside the frame, clear of `others` (x, y, r)."""
  lo, hi = _extent(r), size - _extent(r)
  for _ in range(tries):
    x, y = rng.uniform(lo, hi, size=2)
    if all(math.hypot(x - ox, y - oy) > _extent(r) + _extent(orr) + 2 for ox, oy, orr in others):
      return float(x), float(y)
  return None


def sample_clip_spec(
  rng: np.random.Generator,
  *,
  size: int = 64,
  num_frames: int = 24,
  fps: int = 8,
  allowed=None,
  prefer=None,
  force_object=None,
) -> ClipSpec:
  """Samples a clip: 2–4 objects of distinct colours, 2–4 sequential events.

  allowed(shape, colour, action) -> bool filters (object, action) choices (held-out
  combinations); prefer(...) marks choices to take with probability 1/2 when available;
  force_object=(shape, colour) puts that object in the clip.
  """
  allowed = allowed or (lambda *_: True)
  n_obj = int(rng.integers(2, 5))
  colours = list(rng.permutation(list(COLOURS)))[:n_obj]
  kinds = [(str(rng.choice(SHAPES)), str(c)) for c in colours]
  if force_object is not None and force_object not in kinds:
    kinds = [k for k in kinds if k[1] != force_object[1]][: n_obj - 1] + [force_object]
    kinds = [kinds[j] for j in rng.permutation(len(kinds))]
  objs, placed = [], []
  for shape, colour in kinds:
    r = float(rng.uniform(0.09, 0.13) * size)
    spot = _free_spot(rng, size, r, placed, tries=100) or (size / 2, size / 2)
    placed.append((spot[0], spot[1], r))
    objs.append(ToyObject(shape, colour, spot[0], spot[1], r, float(rng.uniform(0, 0.5))))

  # Simulate state slot by slot so every event is feasible where it happens.
  cur = {i: dict(x=o.x, y=o.y, r=o.radius) for i, o in enumerate(objs)}
  status = ["fresh"] * len(objs)  # fresh (unused, may still "appear"), shown, gone
  n_slots = int(rng.integers(2, min(4, num_frames // 5) + 1))
  slot = num_frames // n_slots
  events: list[ToyEvent] = []
  forced_move = None
  for k in range(n_slots):
    s0 = k * slot
    dur = int(rng.integers(max(3, (2 * slot) // 3), slot + 1))
    start = s0 + int(rng.integers(0, slot - dur + 1))
    end = start + dur - 1
    last = k == n_slots - 1
    cands = []
    for i, o in enumerate(objs):
      if status[i] == "gone":
        continue
      others = [
        (cur[j]["x"], cur[j]["y"], cur[j]["r"]) for j in cur if j != i and status[j] != "gone"
      ]
      if forced_move is not None and i != forced_move:
        continue
      for a in ACTIONS if forced_move is None else ("move",):
        if not allowed(o.shape, o.colour, a):
          continue
        p = None
        if a == "appear":
          p = () if status[i] == "fresh" and forced_move is None else None
        elif a == "spin":
          p = () if o.shape != "circle" else None
        elif a == "jump":
          h = min(cur[i]["y"] - _extent(cur[i]["r"]), 0.3 * size)
          p = (("height", float(h)),) if h >= 4 else None
        elif a == "grow":
          f = 1.5
          e2 = _extent(cur[i]["r"] * f)
          ok = (
            cur[i]["r"] * f <= 0.2 * size
            and e2 <= cur[i]["x"] <= size - e2
            and e2 <= cur[i]["y"] <= size - e2
          )
          p = (("factor", f),) if ok else None
        elif a == "move":
          spot = _free_spot(rng, size, cur[i]["r"], others)
          p = (("x", spot[0]), ("y", spot[1])) if spot else None
        elif a == "disappear":
          p = ()
        elif a == "touch" and forced_move is None:
          p = _touch_candidates(objs, cur, status, i, size, last, allowed)
        if p is not None:
          if a == "touch":
            cands.extend(("touch", i, tgt, pp) for tgt, pp in p)
          else:
            cands.append((a, i, None, p))
    if not cands:
      break
    pref = [c for c in cands if prefer and prefer(objs[c[1]].shape, objs[c[1]].colour, c[0])]
    pool = pref if pref and rng.random() < 0.5 else cands
    # Choose the action first, so actions with many (object, target) options do not dominate.
    acts = sorted({c[0] for c in pool}, key=ACTIONS.index)
    act = acts[int(rng.integers(len(acts)))]
    pool = [c for c in pool if c[0] == act]
    a, i, tgt, params = pool[int(rng.integers(len(pool)))]
    events.append(ToyEvent(a, i, start, end, tgt, tuple(params)))
    forced_move = None
    if status[i] == "fresh":
      status[i] = "shown"
    if a in ("move", "touch"):
      cur[i]["x"], cur[i]["y"] = dict(params)["x"], dict(params)["y"]
    elif a == "grow":
      cur[i]["r"] *= dict(params)["factor"]
    elif a == "disappear":
      status[i] = "gone"
    if tgt is not None:
      status[tgt] = "shown" if status[tgt] == "fresh" else status[tgt]
      if not last:
        forced_move = tgt  # the world rule: the touched object moves away next
  return ClipSpec(tuple(objs), tuple(events), size=size, num_frames=num_frames, fps=fps)


def _mask_box(obj: ToyObject, x: float, y: float, r: float, size: int):
  """Pixel extent (x1, y1, x2, y2) of `obj` drawn at (x, y) with size r, unclipped."""
  big = int(4 * r) + 8
  mask, x0, y0 = _shape_mask(obj.shape, big / 2 + (x % 1), big / 2 + (y % 1), r, obj.angle, big)
  ys, xs = np.nonzero(mask)
  dx, dy = x - (big / 2 + (x % 1)), y - (big / 2 + (y % 1))
  return (x0 + xs.min() + dx, y0 + ys.min() + dy, x0 + xs.max() + 1 + dx, y0 + ys.max() + 1 + dy)


def _touch_candidates(objs, cur, status, i, size, last, allowed):
  """(target, params) pairs: object i slides horizontally until its box meets the target's."""
  out = []
  bi = _mask_box(objs[i], cur[i]["x"], cur[i]["y"], cur[i]["r"], size)
  left, right = cur[i]["x"] - bi[0], bi[2] - cur[i]["x"]
  half_h = max(cur[i]["y"] - bi[1], bi[3] - cur[i]["y"])
  for j in cur:
    if j == i or status[j] == "gone":
      continue
    if not last and not allowed(objs[j].shape, objs[j].colour, "move"):
      continue  # the touched object must be able to move away next
    bj = _mask_box(objs[j], cur[j]["x"], cur[j]["y"], cur[j]["r"], size)
    y = float(np.clip(cur[j]["y"], half_h + 1, size - half_h - 1))
    prefer_right = cur[i]["x"] >= cur[j]["x"]
    for from_right in (prefer_right, not prefer_right):
      x = bj[2] + left - 0.5 if from_right else bj[0] - right + 0.5
      if left + 1 <= x <= size - right - 1:
        out.append((j, (("x", float(x)), ("y", y))))
        break
  return out
