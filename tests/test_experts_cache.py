"""Identical expert calls are served from the memory / disk cache instead of the model."""

import json
import logging

import numpy as np

import experts
from experts.backends.protocols import Box, Window
from experts.cache import ToolCache, frames_key, make_key


class CountingDetector:
  """Finds 'bright' in frames whose mean pixel is > 100; counts frames it is asked about."""

  name = "counting-detector"

  def __init__(self):
    self.frames_seen = 0
    self.calls = 0

  def detect(self, clip, queries, *, threshold):
    self.calls += 1
    self.frames_seen += len(clip)
    out = []
    for f, frame in zip(clip.frame_ids, clip.frames):
      hit = "bright" in queries and frame.mean() > 100
      out.append([Box(int(f), "bright", 0.9, (1.0, 2.0, 3.0, 4.0))] if hit else [])
    return out


class CountingGrounder:
  name = "counting-grounder"

  def __init__(self):
    self.calls = 0

  def ground(self, clip, query, *, top_k=1):
    self.calls += 1
    return [Window(clip.start_frame + 1, clip.start_frame + 3, 0.8, query)]


def frames(n=8, bright=(2, 3, 6)):
  x = np.zeros((n, 8, 8, 3), np.uint8)
  x[list(bright)] = 200
  return x


def test_detection_is_cached_per_frame_across_tools_and_trims():
  det = CountingDetector()
  box = experts.Toolbox(detector=det)
  clip = experts.VideoClip(frames(), video_id="v")
  assert list(box.Find(clip, "bright").frame_ids) == [2, 3, 6]
  assert det.frames_seen == 8
  assert box.exist(clip, "bright") and box.Count(clip, "bright") == 1
  assert list(box.Filter_frames_with_obj(box.trim(clip, 3, 7), "bright").frame_ids) == [3, 6]
  assert det.frames_seen == 8 and det.calls == 1  # nothing recomputed
  assert box.records[-1].cache_hits == 4
  box.Find(clip, "dark")  # another query is another key
  assert det.frames_seen == 16


def test_grounding_cache_hit_for_identical_call_only():
  g = CountingGrounder()
  box = experts.Toolbox(grounder=g)
  clip = experts.VideoClip(frames(), video_id="v")
  a = box.Filter_frames_with_act(clip, "x jumps")
  b = box.Filter_frames_with_act(clip, "x jumps")
  assert (a.start_frame, a.end_frame) == (b.start_frame, b.end_frame) == (1, 3)
  assert g.calls == 1
  box.Filter_frames_with_act(box.trim(clip, 2, 8), "x jumps")  # other frames: new key
  assert g.calls == 2


def test_disk_cache_serves_a_new_process(tmp_path):
  first = CountingDetector()
  box = experts.Toolbox(detector=first, cache=ToolCache(str(tmp_path)))
  clip = experts.VideoClip(frames(), video_id="v")
  want = box.Find(clip, "bright").detections.to_json()
  assert (tmp_path / "counting-detector.jsonl").exists()
  second = CountingDetector()  # a resumed job: fresh model, same cache directory
  cache = ToolCache(str(tmp_path))
  box2 = experts.Toolbox(detector=second, cache=cache)
  assert box2.Find(clip, "bright").detections.to_json() == want
  assert second.frames_seen == 0 and cache.disk_hits == 8


def test_disk_cache_reports_and_skips_a_corrupt_line(tmp_path, caplog):
  box = experts.Toolbox(detector=CountingDetector(), cache=ToolCache(str(tmp_path)))
  clip = experts.VideoClip(frames(4, bright=(2,)), video_id="v")
  box.Find(clip, "bright")
  path = tmp_path / "counting-detector.jsonl"
  lines = path.read_text().splitlines()
  lines[1] = lines[1][: len(lines[1]) // 2]  # a job killed mid-write
  path.write_text("\n".join(lines) + "\n")
  det = CountingDetector()
  cache = ToolCache(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    experts.Toolbox(detector=det, cache=cache).Find(clip, "bright")
  assert cache.corrupt_lines == 1 and det.frames_seen == 1  # only the lost frame recomputed
  assert f"{path} line 2 unreadable" in caplog.text


def test_cache_can_be_disabled():
  det = CountingDetector()
  box = experts.Toolbox(detector=det, cache=ToolCache(enabled=False))
  clip = experts.VideoClip(frames(), video_id="v")
  box.Find(clip, "bright")
  box.Find(clip, "bright")
  assert det.frames_seen == 16


def test_anonymous_clips_are_keyed_by_content():
  det = CountingDetector()
  box = experts.Toolbox(detector=det)
  box.Find(experts.VideoClip(frames()), "bright")
  box.Find(experts.VideoClip(frames()), "bright")  # same pixels, no id: a hit
  assert det.frames_seen == 8
  box.Find(experts.VideoClip(frames(bright=(1,))), "bright")
  assert det.frames_seen == 16


def test_keys_name_model_video_frames_and_query():
  assert frames_key([3, 4, 5]) == "3:6"
  assert frames_key([]) == "empty"
  assert frames_key([1, 5]).startswith("ids:") and frames_key([1, 5]) != frames_key([1, 6])
  k = make_key("owlv2", "detect", "vid", "3:6", ["cup"], threshold=0.1)
  assert k.startswith("owlv2|detect|vid|3:6|") and json.loads(k.split("|", 4)[4]) == {
    "q": ["cup"],
    "threshold": 0.1,
  }
  assert k != make_key("owlv2", "detect", "vid", "3:6", ["cup"], threshold=0.2)


def test_select_answer_is_cached():
  class Selector:
    name = "sel"
    calls = 0

    def select(self, question, choices, info):
      Selector.calls += 1
      return "(B)"

  box = experts.Toolbox(selector=Selector())
  for _ in range(2):
    assert box.select_answer("q?", ["a", "b"], {"x": 1}) == "b"
  assert Selector.calls == 1
  box.select_answer("q?", ["a", "b"], {"x": 2})
  assert Selector.calls == 2
