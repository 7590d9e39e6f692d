"""Toy world: determinism, boxes vs pixels, question consistency, held-out splits, mp4s."""

import ast
import json
import re

import numpy as np
import pytest

from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.render import COLOURS

API = {
  "Query_Objs",
  "Query_Actions",
  "Filter_frames_with_act",
  "Filter_frames_with_obj",
  "trim",
  "Find",
  "exist",
  "select_answer",
  "Video_summary",
  "Count",
}
# Written out here (not imported) so the test checks the generator, not itself.
PAST = {
  "moved": "move",
  "jumped": "jump",
  "spun": "spin",
  "grew": "grow",
  "appeared": "appear",
  "disappeared": "disappear",
  "touched": "touch",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  paths = toyworld.generate_world(out, seed=3, num_train=40, num_val=6, num_test=10)
  return out, paths


def test_render_is_deterministic_by_seed():
  f1, g1, s1 = toyworld.generate_clip(5, "train", 2)
  f2, g2, s2 = toyworld.generate_clip(5, "train", 2)
  f3, _, _ = toyworld.generate_clip(6, "train", 2)
  assert s1 == s2 and np.array_equal(f1, f2) and g1.events == g2.events
  np.testing.assert_array_equal(g1.boxes, g2.boxes)
  assert not np.array_equal(f1, f3)
  assert f1.dtype == np.uint8 and f1.shape == (24, 64, 64, 3)


def test_generate_world_is_deterministic(world, tmp_path):
  out, paths = world
  again = toyworld.generate_world(
    tmp_path, seed=3, num_train=40, num_val=6, num_test=10, write_videos=False
  )
  for split in ("train", "val", "test"):
    assert open(paths[split]).read() == open(again[split]).read()
  assert open(out / "ground_truth.json").read() == open(tmp_path / "ground_truth.json").read()


def test_boxes_match_rendered_pixels():
  for i in range(25):
    frames, gt, spec = toyworld.generate_clip(1, "train", i)
    for t in range(gt.num_frames):
      for k, obj in enumerate(spec.objects):
        ys, xs = np.nonzero(np.all(frames[t] == COLOURS[obj.colour], axis=-1))
        if not gt.visible[t, k]:
          assert ys.size == 0, (i, t, obj.name)
          continue
        seen = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        box = gt.boxes[t, k]
        occluded = any(
          gt.visible[t, j]
          and not (
            gt.boxes[t, j, 0] >= box[2]
            or gt.boxes[t, j, 2] <= box[0]
            or gt.boxes[t, j, 1] >= box[3]
            or gt.boxes[t, j, 3] <= box[1]
          )
          for j in range(k + 1, len(spec.objects))
        )
        if occluded:  # drawn under a later object: pixels stay inside the box
          assert (
            box[0] <= seen[0] and box[1] <= seen[1] and seen[2] <= box[2] and seen[3] <= box[3]
          ), (i, t, obj.name)
        else:
          assert tuple(box) == seen, (i, t, obj.name, box, seen)


def _gold(q, gt):
  """Recomputes the answer from the events / boxes, independently of the generator."""
  ev, text = gt.events, q["question"]

  def said(e):
    tail = f" the {e['target']}" if e["target"] else ""
    past = {v: k for k, v in PAST.items()}[e["action"]]
    return f"the {e['object']} {past}{tail}"

  if m := re.fullmatch(r"Which object did the (.+) touch\?", text):
    (b,) = {e["target"] for e in ev if e["action"] == "touch" and e["object"] == m[1]}
    return {f"The {b}."}
  if m := re.fullmatch(r"Which object (\w+)\?", text):
    (a,) = {e["object"] for e in ev if e["action"] == PAST[m[1]]}
    return {f"The {a}."}
  if m := re.fullmatch(r"What happened right (after|before) (.+)\?", text):
    (i,) = [i for i, e in enumerate(ev) if said(e) == m[2]]
    e = ev[i + 1] if m[1] == "after" else ev[i - 1]
    return {said(e)[0].upper() + said(e)[1:] + "."}
  if text == "Which object will move next?":
    end = round(q["end"] * gt.fps) - 1
    (i,) = [i for i, e in enumerate(ev) if e["end_frame"] == end]
    assert ev[i]["action"] == "touch" and ev[i + 1]["action"] == "move"
    return {f"The {ev[i + 1]['object']}."}
  if m := re.fullmatch(r"Which object is the (.+) able to touch at the end of the video\?", text):
    last = gt.num_frames - 1
    return {f"The {n}." for k, n in enumerate(gt.names) if gt.visible[last, k] and n != m[1]}
  raise AssertionError(f"unknown question template: {text}")


def test_questions_are_consistent_with_ground_truth(world):
  out, paths = world
  truths = toyworld.load_ground_truth(out)
  types = set()
  for split, path in paths.items():
    for q in json.load(open(path)):
      choices = [c["choice"] for c in q["choices"]]
      assert len(choices) == 4 and len(set(choices)) == 4
      assert [c["choice_id"] for c in q["choices"]] == [0, 1, 2, 3]
      assert choices.count(q["answer"]) == 1, q["question_id"]
      gold = _gold(q, truths[q["video_id"]])
      assert q["answer"] in gold, q["question_id"]
      assert not (set(choices) - {q["answer"]}) & gold, ("a distractor is also true", q)
      types.add(q["question_id"].split("_")[0])
      assert 0 <= q["start"] < q["end"] <= 3.0
      keys = sorted(q["situations"])
      assert keys[0] == f"{round(q['start'] * 8):06d}"
      assert keys[-1] == f"{round(q['end'] * 8) - 1:06d}"
  assert types == {"Interaction", "Sequence", "Prediction", "Feasibility"}


def test_gold_programs_use_only_the_expert_api(world):
  _, paths = world
  for q in json.load(open(paths["train"]))[:60]:
    tree = ast.parse(q["question_program"])
    (fn,) = tree.body
    assert fn.name == "execute_command"
    assert [a.arg for a in fn.args.args] == ["video_clip", "query", "possible_answers"]
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert called and called <= API, called
    assert "select_answer" in called


def test_heldout_combinations_only_in_test(world):
  out, _ = world
  meta = json.load(open(out / "world.json"))
  heldout = {tuple(h) for h in meta["heldout"]}
  assert heldout == set(toyworld.heldout_combinations(3)) and len(heldout) == 4
  truths = toyworld.load_ground_truth(out / "ground_truth.json")
  for split in ("train", "val", "test"):
    for vid in meta["splits"][split]:
      gt = truths[vid]
      combos = {tuple(e["object"].split()[::-1]) + (e["action"],) for e in gt.events}
      if split == "test":
        assert combos & heldout, vid
      else:
        assert not combos & heldout, vid


def test_mp4s_decode_to_the_right_frames(world):
  av = pytest.importorskip("av")
  out, _ = world
  frames, gt, _ = toyworld.generate_clip(3, "val", 1)
  with av.open(toyworld.video_path(out, gt.video_id)) as c:
    stream = c.streams.video[0]
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    assert float(stream.average_rate) == 8
  assert decoded.shape == frames.shape == (24, 64, 64, 3)
  assert np.abs(decoded.astype(int) - frames).mean() < 2.0


def test_star_reader_reads_the_world(world):
  annotations = pytest.importorskip("aotd_jax.data.annotations")
  _, paths = world
  records = annotations.read("star", paths["val"])
  raw = json.load(open(paths["val"]))
  assert len(records) == len(raw)
  assert records[0].answer == raw[0]["answer"] and len(records[0].choices) == 4


def test_bad_arguments_and_files_are_reported(tmp_path):
  with pytest.raises(ValueError, match="num_clips"):
    toyworld.generate_world(tmp_path, num_clips=2)
  with pytest.raises(ValueError, match="num_val"):
    toyworld.generate_world(tmp_path, num_val=-1)
  with pytest.raises(ValueError, match="size"):
    toyworld.generate_world(tmp_path, size=63)
  with pytest.raises(ValueError, match="frames"):
    toyworld.generate_world(tmp_path, fps=2, seconds=2, num_train=1, num_val=0, num_test=0)
  with pytest.raises(FileNotFoundError, match="nowhere: no toy-world ground truth"):
    toyworld.load_ground_truth(tmp_path / "nowhere")
  bad = tmp_path / "ground_truth.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="ground_truth.json.*not valid JSON"):
    toyworld.load_ground_truth(tmp_path)
  bad.write_text(json.dumps({"toy_x": {"video_id": "toy_x", "fps": 8}}))
  with pytest.raises(ValueError, match="'toy_x' is malformed"):
    toyworld.load_ground_truth(bad)


def test_num_clips_splits(tmp_path):
  # (generation speed is not a test: ~1 s for 50 clips, a figure for benchmarks/, not CI)
  paths = toyworld.generate_world(tmp_path, seed=1, num_clips=50)
  meta = json.load(open(tmp_path / "world.json"))
  assert {k: len(v) for k, v in meta["splits"].items()} == {"train": 40, "val": 5, "test": 5}
  assert set(paths) == {"train", "val", "test"}
