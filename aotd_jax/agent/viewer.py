"""A static HTML report of a CoT run: program, tool calls with their frames, rationale, verdicts.

`render_report(records, path)` samples questions from a job's records and writes one
self-contained HTML file (no network, no external assets): per question the program, each
tool call with its arguments and result, the time windows it produced marked on a timeline
of the video, its boxes drawn over their frames (inline SVG over PNG data URIs when frames
are available, over a blank canvas otherwise), the rationale and both filter verdicts.
"""

from __future__ import annotations

import base64
import html
import json
import os
import random
import struct
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from aotd_jax.agent import cot, filters, programs

FrameSource = Callable[[Mapping, Sequence[int]], Mapping[int, np.ndarray]]
MAX_FRAMES_PER_CALL = 4
FRAME_PX = 192  # drawn width of a frame

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} h2{font-size:16px;margin:0 0 6px}
table.stats td,table.stats th{padding:2px 10px;text-align:right}
section.question{border:1px solid #ccc;border-radius:6px;padding:12px;margin:16px 0}
section.question.kept{border-left:6px solid #2a2} section.question.dropped{border-left:6px solid #c33}
.verdict{display:inline-block;padding:1px 8px;border-radius:10px;margin-right:6px;font-size:12px}
.verdict.pass{background:#d7f5d7} .verdict.fail{background:#f8d4d4}
pre.program{background:#f6f6f6;padding:8px;overflow-x:auto}
li.call{margin:8px 0} .args,.result{font-family:monospace;font-size:12px;color:#555}
svg.timeline{display:block;margin:4px 0} rect.window{fill:#f90;fill-opacity:.6}
svg.frame{margin:4px 6px 0 0;border:1px solid #999} rect.box{fill:none;stroke:#0af;stroke-width:2}
text.label{fill:#0af} .rationale{background:#eef5ff;padding:8px;border-radius:4px}
"""

# Counts what the browser actually laid out, so a headless dump proves the page rendered.
_SCRIPT = """
document.addEventListener('DOMContentLoaded', function () {
  var out = document.getElementById('rendered');
  var boxes = document.querySelectorAll('svg.frame rect.box');
  var drawn = 0;
  boxes.forEach(function (b) { if (b.getBBox().width > 0) drawn++; });
  out.textContent = 'questions=' + document.querySelectorAll('section.question').length +
      ' calls=' + document.querySelectorAll('li.call').length + ' boxes_drawn=' + drawn +
      ' windows=' + document.querySelectorAll('rect.window').length;
  out.dataset.done = 'yes';
});
"""


def png_data_uri(image: np.ndarray) -> str:
  """A (H, W, 3) uint8 image as a `data:image/png;base64,...` URI (no imaging library)."""
  image = np.ascontiguousarray(image, dtype=np.uint8)
  h, w = image.shape[:2]
  raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (
      struct.pack(">I", len(data))
      + kind
      + data
      + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  png = (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(raw, 6))
    + chunk(b"IEND", b"")
  )
  return "data:image/png;base64," + base64.b64encode(png).decode()


def video_frames(record: Mapping, frame_ids: Sequence[int]) -> Mapping[int, np.ndarray]:
  """The default frame source: decodes `record["video_path"]` (empty if it is missing)."""
  path = record.get("video_path")
  if not path or not os.path.exists(path) or not frame_ids:
    return {}
  from aotd_jax.data import video

  ids = sorted(set(int(i) for i in frame_ids))
  return dict(zip(ids, video.decode_frames(path, ids)))


def _e(value: Any) -> str:
  return html.escape(str(value), quote=True)


def _short_json(value: Any, limit: int = 400) -> str:
  text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
  return text if len(text) <= limit else text[:limit] + " ..."


def _frame_svg(frame_id: int, boxes: list[dict], image: np.ndarray | None) -> str:
  if image is not None:
    h, w = image.shape[:2]
  else:
    w = int(max([b["box"][2] for b in boxes] + [64]) + 4)
    h = int(max([b["box"][3] for b in boxes] + [64]) + 4)
  scale = FRAME_PX / w
  font = max(round(w / 18, 1), 3)  # ~10 px once scaled to FRAME_PX
  parts = [
    f'<svg class="frame" data-frame="{frame_id}" width="{FRAME_PX}" '
    f'height="{round(h * scale)}" viewBox="0 0 {w} {h}">'
  ]
  if image is not None:
    parts.append(f'<image href="{png_data_uri(image)}" width="{w}" height="{h}"/>')
  else:
    parts.append(f'<rect class="blank" width="{w}" height="{h}" fill="#ddd"/>')
  for b in boxes:
    x0, y0, x1, y1 = b["box"]
    parts.append(
      f'<rect class="box" data-label="{_e(b["label"])}" x="{x0:g}" y="{y0:g}" '
      f'width="{max(x1 - x0, 0.5):g}" height="{max(y1 - y0, 0.5):g}"/>'
      f'<text class="label" x="{x0:g}" y="{max(y0 - 1, font):g}" font-size="{font:g}">'
      f'{_e(b["label"])}</text>'
    )
  parts.append(
    f'<text x="2" y="{h - 2}" font-size="{font:g}" fill="#fff" stroke="#000" '
    f'stroke-width="{font / 30:.2f}">frame {frame_id}</text></svg>'
  )
  return "".join(parts)


def _timeline_svg(windows: list[tuple[int, int]], length: int) -> str:
  width = 480
  parts = [
    f'<svg class="timeline" width="{width}" height="14" data-frames="{length}">'
    f'<rect width="{width}" height="14" fill="#eee"/>'
  ]
  for start, end in windows:
    x = width * start / length
    parts.append(
      f'<rect class="window" data-start="{start}" data-end="{end}" x="{x:.1f}" '
      f'width="{max(width * (end - start) / length, 1):.1f}" height="14">'
      f'<title>{_e(cot.window_text((start, end)))}</title></rect>'
    )
  return "".join(parts) + "</svg>"


def _video_length(record: Mapping) -> int:
  """The largest frame number the record mentions (the timeline's extent)."""
  ends = [1]
  for call in cot.as_calls(record.get("trace")):
    for value in (call["args"], call["result"]):
      found = cot.evidence(value, max_boxes_per_object=10**6)
      ends += [e for _, e in found.windows] + [b["last_frame"] + 1 for b in found.boxes]
  return max(ends)


def _verdict_html(step: str, verdict: Mapping | None) -> str:
  verdict = verdict or {}
  ok = bool(verdict.get("passed"))
  return (
    f'<span class="verdict {"pass" if ok else "fail"}" data-step="{step}" '
    f'title="{_e(verdict.get("reason", ""))}">{step}: {"pass" if ok else "fail"} '
    f'({_e(verdict.get("by", "?"))})</span>'
  )


def _call_html(call: Mapping, record: Mapping, length: int, frames: FrameSource) -> str:
  found = cot.evidence(call["result"])
  by_frame: dict[int, list[dict]] = {}
  for b in found.boxes:
    by_frame.setdefault(b["frame"], []).append(b)
  shown = sorted(by_frame)[:MAX_FRAMES_PER_CALL]
  images = frames(record, shown) if shown else {}
  parts = [
    f'<li class="call" data-tool="{_e(call["name"])}"><b>{_e(call["name"])}</b> '
    f'<span class="args">{_e(_short_json(call["args"]))}</span><br>'
    f'<span class="result">&rarr; {_e(_short_json(call["result"]))}</span>'
  ]
  if found.windows:
    parts.append(_timeline_svg(found.windows, length))
  parts += [_frame_svg(f, by_frame[f], images.get(f)) for f in shown]
  return "".join(parts) + "</li>"


def _question_html(record: Mapping, frames: FrameSource) -> str:
  verdicts = record.get("verdicts", {})
  kept = bool(record.get("kept"))
  length = _video_length(record)
  choices = record.get("choices") or []
  calls = cot.as_calls(record.get("trace"))
  error = verdicts.get("parse_error") or verdicts.get("execution_error")
  parts = [
    f'<section class="question {"kept" if kept else "dropped"}" data-qid="{_e(record["qid"])}">',
    f'<h2>{_e(record["qid"])}: {_e(record.get("question", ""))}</h2>',
    f'<div class="choices">{_e(programs.format_choices(choices) or "(open-ended)")}'
    f' &mdash; gold: <b>{_e(record.get("answer", ""))}</b>, program: '
    f'<b class="prediction">{_e(record.get("prediction"))}</b></div>',
    f'<div class="verdicts">{_verdict_html("answer", verdicts.get("answer"))}'
    f'{_verdict_html("logic", verdicts.get("logic"))}</div>',
  ]
  if error:
    parts.append(f'<div class="error">{_e(error)}</div>')
  if record.get("program"):
    parts.append(f'<pre class="program">{_e(record["program"])}</pre>')
  if calls:
    parts.append(
      '<ol class="calls">' + "".join(_call_html(c, record, length, frames) for c in calls) + "</ol>"
    )
  if record.get("rationale"):
    parts.append(f'<div class="rationale">{_e(record["rationale"])}</div>')
  return "".join(parts) + "</section>"


def sample_records(records: Sequence[Mapping], num_samples: int, seed: int = 0) -> list[Mapping]:
  """A reproducible sample of records, in their original order."""
  if num_samples <= 0 or num_samples >= len(records):
    return list(records)
  keep = sorted(random.Random(seed).sample(range(len(records)), num_samples))
  return [records[i] for i in keep]


def render_report(
  records: Iterable[Mapping],
  path: str,
  *,
  num_samples: int = 20,
  seed: int = 0,
  frames: FrameSource | None = None,
  title: str = "AoTD CoT run",
) -> str:
  """Writes the HTML report for a sample of job records to `path`; returns `path`."""
  records = list(records)
  stats = filters.FilterStats()
  for r in records:
    stats.add_record(r)
  frames = frames or video_frames
  rows = "".join(
    f"<tr><th>{_e(k)}</th><td>{v}</td><td>{stats.rates().get(k, 1.0):.0%}</td></tr>"
    for k, v in (
      ("total", stats.total),
      ("parsed", stats.parsed),
      ("executed", stats.executed),
      ("answer", stats.answer_passed),
      ("logic", stats.logic_passed),
      ("refused", stats.refused),  # by the LLM server: not among the programs that did not parse
    )
  )
  body = "".join(_question_html(r, frames) for r in sample_records(records, num_samples, seed))
  page = (
    f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
    f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
    f"<h1>{_e(title)}</h1><table class=\"stats\"><tr><th>step</th><th>passed</th>"
    f"<th>rate</th></tr>{rows}</table><p id=\"rendered\"></p>{body}</body></html>"
  )
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(page)
  os.replace(tmp, path)
  return path
