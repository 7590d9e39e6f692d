"""The static HTML trace report, rendered by headless Chromium."""

import html.parser
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from aotd_jax.agent import viewer


def clip(start, end):
  return {"type": "VideoClip", "video_id": "v1", "start_frame": start, "end_frame": end}


def record(qid, kept, *, boxes=True):
  calls = [
    {
      "name": "Filter_frames_with_act",
      "args": {"video_clip": clip(0, 40), "action": "jump"},
      "result": {
        "value": clip(8, 20),
        "windows": [{"start_frame": 8, "end_frame": 20, "score": 0.9, "query": "jump"}],
      },
    }
  ]
  if boxes:
    calls.append(
      {
        "name": "Find",
        "args": {"video_clip": clip(8, 20), "object_name": "ball"},
        "result": {
          "type": "Detections",
          "object": "ball",
          "frames": [9, 12],
          "boxes": [
            {"frame": 9, "label": "ball", "score": 0.8, "box": [4, 6, 20, 22]},
            {"frame": 12, "label": "ball <b>", "score": 0.7, "box": [30, 6, 46, 22]},
          ],
        },
      }
    )
  return {
    "qid": qid,
    "question": "What did the ball do? <script>alert(1)</script>",
    "choices": ["Jumped.", "Spun."],
    "answer": "Jumped.",
    "prediction": "Jumped.",
    "kept": kept,
    "program": "def execute_command(video_clip, query, possible_answers):\n    return 'Jumped.'\n",
    "rationale": "The ball jumps in frames 8-19. So the answer is Jumped." if kept else None,
    "video_path": None,
    "trace": {"calls": calls},
    "verdicts": {
      "parsed": True,
      "executed": True,
      "answer": {"passed": True, "reason": "predicted (A), gold (A)", "by": "match"},
      "logic": {"passed": kept, "reason": "r", "by": "rule" if kept else "skip"},
    },
  }


def frames_of(record, frame_ids):
  return {f: np.full((48, 64, 3), 40 * (f % 5), np.uint8) for f in frame_ids}


class Elements(html.parser.HTMLParser):
  """Tag + attributes of every element in a document."""

  def __init__(self):
    super().__init__()
    self.elements = []

  def handle_starttag(self, tag, attrs):
    self.elements.append((tag, dict(attrs)))

  def find(self, tag, cls=None, **attrs):
    return [
      a
      for t, a in self.elements
      if t == tag
      and (cls is None or cls in a.get("class", "").split())
      and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
    ]


def test_png_data_uri_is_a_valid_png():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  import base64

  data = base64.b64decode(viewer.png_data_uri(image).split(",", 1)[1])
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
  rows = zlib.decompress(idat)
  assert rows == b"".join(b"\x00" + image[y].tobytes() for y in range(2))


def test_sampling_is_reproducible_and_ordered():
  records = [record(f"q{i}", i % 2 == 0) for i in range(10)]
  a = viewer.sample_records(records, 4, seed=3)
  assert a == viewer.sample_records(records, 4, seed=3) and len(a) == 4
  assert [r["qid"] for r in a] == sorted((r["qid"] for r in a), key=lambda q: int(q[1:]))
  assert viewer.sample_records(records, 0) == records


def test_report_renders_in_headless_chromium(tmp_path):
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if browser is None:
    pytest.skip("chromium not installed (make test installs it: apt-get install -y chromium)")
  records = [record("q0", True), record("q1", False), record("q2", True, boxes=False)]
  path = viewer.render_report(
    records, str(tmp_path / "report.html"), frames=frames_of, title="toy run"
  )
  result = subprocess.run(
    [
      browser,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--dump-dom",
      f"file://{path}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  dom = result.stdout
  # The inline script ran in the browser and measured the laid-out SVG boxes.
  assert re.search(
    r'<p id="rendered" data-done="yes">questions=3 calls=5 boxes_drawn=4 '
    r'windows=3</p>',
    dom,
  ), dom[:2000]
  doc = Elements()
  doc.feed(dom)
  sections = doc.find("section", "question")
  assert [s["data-qid"] for s in sections] == ["q0", "q1", "q2"]
  assert [s["class"] for s in sections] == ["question kept", "question dropped", "question kept"]
  assert len(doc.find("pre", "program")) == 3 and len(doc.find("div", "rationale")) == 2
  assert len(doc.find("li", "call", data_tool="Find")) == 2
  windows = doc.find("rect", "window")
  assert {(w["data-start"], w["data-end"]) for w in windows} == {("8", "20")}
  frames = doc.find("svg", "frame")
  assert [f["data-frame"] for f in frames] == ["9", "12", "9", "12"]
  images = doc.find("image")
  assert len(images) == 4 and all(i["href"].startswith("data:image/png;base64,") for i in images)
  boxes = doc.find("rect", "box")
  assert boxes[0]["x"] == "4" and boxes[0]["width"] == "16" and boxes[1]["data-label"] == "ball <b>"
  verdicts = doc.find("span", "verdict")
  assert [(v["data-step"], v["class"]) for v in verdicts[:2]] == [
    ("answer", "verdict pass"),
    ("logic", "verdict pass"),
  ]
  assert verdicts[3]["class"] == "verdict fail"
  assert "<script>alert(1)</script>" not in dom.split("</script>", 1)[1]  # text is escaped


def test_report_without_frames_draws_boxes_on_blank_canvas(tmp_path):
  path = viewer.render_report([record("q0", True)], str(tmp_path / "r.html"), num_samples=1)
  page = open(path).read()
  assert page.count('class="blank"') == 2 and page.count('class="box"') == 2
  assert "<image" not in page


def test_report_counts_refused_prompts_in_their_own_row(tmp_path):
  """A question whose prompt the LLM server refused (`verdicts.refused`, as the CoT job records
  it: no program, no trace) is shown in the stats table's own row, not as a parse failure."""
  refused = {
    "qid": "q1",
    "question": "What?",
    "choices": ["a", "b"],
    "answer": "a",
    "prediction": None,
    "kept": False,
    "program": None,
    "rationale": None,
    "video_path": None,
    "trace": None,
    "verdicts": {"parsed": False, "refused": "the LLM server refused ... HTTP 400"},
  }
  path = viewer.render_report([record("q0", True), refused], str(tmp_path / "r.html"))
  page = open(path).read()
  assert "<tr><th>refused</th><td>1</td><td>50%</td></tr>" in page
  assert "<tr><th>parsed</th><td>1</td><td>50%</td></tr>" in page
