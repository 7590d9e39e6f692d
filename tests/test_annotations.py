"""Annotation readers: each format on its fixture, NExT-QA / ActivityNet-QA on the real files,
and every malformed-input path reported with file and row / key."""

import csv
import json
from pathlib import Path

import pytest

from aotd_jax.data import annotations as A

FIX = Path(__file__).parent / "fixtures" / "annotations"
REAL = Path(__file__).resolve().parent / "fixtures" / "real"


def test_star_fixture():
  recs = A.read("star", FIX / "star_val.json")
  assert [r.qid for r in recs] == ["Interaction_T1_13", "Sequence_T1_7", "Feasibility_T5_2"]
  r = recs[0]
  assert (r.video_id, r.start, r.end, r.answer_index) == ("6H78U", 11.1, 19.6, 0)
  assert r.choices[0] == r.answer == "The closet/cabinet."
  assert r.meta["question_type"] == "Interaction"
  assert r.meta["question_program"][2] == {
    "function": "Filter_Actions_with_Verb",
    "value_input": ["tidy"],
  }
  assert "000199" in r.meta["situations"]
  # choices are ordered by choice_id, not by their order in the file
  assert recs[1].choices == ["The bag.", "The book.", "The phone/camera.", "The towel."]
  assert recs[1].answer_index == 1
  assert recs.report.num_records == 3 and recs.report.num_skipped == 0


def test_agqa_fixture():
  recs = A.read("agqa", FIX / "agqa_balanced.json")
  assert [r.qid for r in recs] == ["o10000", "o10001", "a20077"]
  assert recs[0].choices == [] and recs[0].answer == "before" and recs[0].answer_index is None
  assert recs[0].meta["ans_type"] == "binary" and recs[0].meta["steps"] == 4
  assert recs[1].video_id == "YSKX3"


def test_clevrer_fixture():
  recs = {r.qid: r for r in A.read("clevrer", FIX / "clevrer_validation.json")}
  assert len(recs) == 5
  d = recs["video_10000_0"]
  assert d.choices == [] and d.answer == "cube" and d.meta["question_type"] == "descriptive"
  e = recs["video_10000_12"]
  assert e.answer_index == 1 and e.answer == e.choices[1] and e.meta["correct"] == [False, True]
  p = recs["video_10000_13"]  # two correct choices: no single index
  assert p.answer_index is None and p.meta["correct"] == [True, True] and " | " in p.answer
  assert recs["video_10001_0"].video_id == "video_10001"


def test_mvbench_directory_and_file():
  recs = A.read("mvbench", FIX / "mvbench")
  assert [r.qid for r in recs] == ["action_sequence_0", "action_sequence_1", "object_shuffle_0"]
  assert (recs[1].start, recs[1].end, recs[1].answer_index) == (0.0, 28.4, 2)
  assert recs[2].start is None and recs[2].meta["task"] == "object_shuffle"
  one = A.read("mvbench", FIX / "mvbench" / "object_shuffle.json")
  assert one[0].answer == "Under the third object from the left." and one[0].answer_index == 2


def test_perception_test_fixture():
  recs = A.read("perception_test", FIX / "perception_test_mc_valid.json")
  assert [r.qid for r in recs] == ["video_1234_0", "video_1234_1", "video_5678_0"]
  assert recs[0].answer_index == 2 and recs[0].answer == "Under the third object from the left"
  assert recs[0].meta["area"] == "physics" and recs[0].meta["frame_rate"] == 30.0


def test_nextqa_real_file():
  path = REAL / "nextqa" / "val.csv"
  recs = A.read("nextqa", path)
  assert len(recs) == 4996 and recs.report.num_skipped == 0
  with open(path, newline="") as f:
    raw = list(csv.DictReader(f))
  vmap = json.loads((REAL / "nextqa" / "map_vid_vidorID.json").read_text())
  for i in (0, 1, 2500, 4995):
    row, r = raw[i], recs[i]
    assert r.qid == f"{row['video']}_{row['qid']}" and r.video_id == row["video"]
    assert r.question == row["question"]
    assert r.choices == [row[f"a{k}"] for k in range(5)]
    assert r.answer_index == int(row["answer"]) and r.answer == row[f"a{row['answer']}"]
    assert r.meta["type"] == row["type"] and r.meta["frame_count"] == int(row["frame_count"])
    assert r.meta["video_path"] == vmap[row["video"]] + ".mp4"
  assert recs[0].qid == "4010069381_6" and recs[0].answer == "roll the handle"


def test_activitynet_qa_real_file(tmp_path):
  q_path = REAL / "activitynet_qa" / "val_q.json"
  recs = A.read("activitynet_qa", q_path)
  assert len(recs) == 18000 and recs.report.num_skipped == 0
  qs = json.loads(q_path.read_text())
  ans = {
    a["question_id"]: a for a in json.loads((REAL / "activitynet_qa" / "val_a.json").read_text())
  }
  for i in (0, 1, 9000, 17999):
    q, r = qs[i], recs[i]
    assert (r.qid, r.video_id, r.question) == (q["question_id"], q["video_name"], q["question"])
    assert (
      r.answer == ans[q["question_id"]]["answer"]
      and r.meta["type"] == ans[q["question_id"]]["type"]
    )
    assert r.choices == [] and r.answer_index is None
  # answers_path= for a questions file that is not named *_q.json
  copy = tmp_path / "questions.json"
  copy.write_text(json.dumps(qs[:10]))
  assert (
    len(A.read("activitynet_qa", copy, answers_path=REAL / "activitynet_qa" / "val_a.json")) == 10
  )
  with pytest.raises(A.AnnotationError, match="questions.json"):
    A.read("activitynet_qa", copy)


def test_to_json_roundtrip():
  for r in A.read("star", FIX / "star_val.json"):
    assert A.VideoQA.from_json(r.to_json()) == r
    assert A.VideoQA.from_json(r.to_dict()) == r
  with pytest.raises(ValueError, match="unknown fields"):
    A.VideoQA.from_json(
      {"qid": "x", "video_id": "v", "question": "q", "choices": [], "answer": "", "bogus": 1}
    )
  with pytest.raises(ValueError, match="missing fields"):
    A.VideoQA.from_json({"qid": "x"})


# ------------------------------------------------------------------- malformed inputs


def test_star_malformed_records_counted_and_skipped(tmp_path):
  data = json.loads((FIX / "star_val.json").read_text())
  data[0]["answer"] = "A sandwich."  # not among the choices
  del data[1]["video_id"]  # missing field
  data[2]["start"], data[2]["end"] = 9.0, 2.0  # inverted window
  data.append(dict(data[2], question_id="Feasibility_T5_3", start=1.0, end=2.0))
  path = tmp_path / "star_bad.json"
  path.write_text(json.dumps(data))
  recs = A.read("star", path)
  assert [r.qid for r in recs] == ["Feasibility_T5_3"]
  rep = recs.report
  assert rep.num_skipped == 3 and rep.num_records == 1
  assert "star_bad.json[0] question_id=Interaction_T1_13" in rep.messages[0]
  assert "not one of the choices" in rep.messages[0]
  assert "question_id=Sequence_T1_7" in rep.messages[1] and "video_id" in rep.messages[1]
  assert "end 2.0 < start 9.0" in rep.messages[2]
  assert "1 records read, 3 malformed skipped" in rep.summary()


def test_nextqa_malformed_rows(tmp_path):
  lines = (FIX.parent / "nextqa_small.csv").read_text().splitlines()
  lines[2] = lines[2].replace(",2,1,CW,", ",7,1,CW,")  # answer index out of range
  lines[3] = ",".join(lines[3].split(",")[:-1])  # a column short
  path = tmp_path / "val.csv"
  path.write_text("\n".join(lines) + "\n")
  recs = A.read("nextqa", path)
  assert len(recs) == len(lines) - 3
  assert recs.report.num_skipped == 2
  assert f"{path}:3: answer 7 out of range" in recs.report.messages[0]
  assert f"{path}:4: 12 columns, expected 13" in recs.report.messages[1]
  bad_header = tmp_path / "bad.csv"
  bad_header.write_text("a,b,c\n1,2,3\n")
  with pytest.raises(A.AnnotationError, match="bad.csv: header"):
    A.read("nextqa", bad_header)


def test_activitynet_missing_answer(tmp_path):
  (tmp_path / "x_q.json").write_text(
    json.dumps(
      [
        {"video_name": "a", "question": "is it red", "question_id": "v_a_0"},
        {"video_name": "b", "question": "is it blue", "question_id": "v_b_0"},
      ]
    )
  )
  (tmp_path / "x_a.json").write_text(
    json.dumps([{"answer": "yes", "type": 3, "question_id": "v_a_0"}])
  )
  recs = A.read("activitynet_qa", tmp_path / "x_q.json")
  assert [r.qid for r in recs] == ["v_a_0"]
  assert "question_id=v_b_0: no answer with this question_id" in recs.report.messages[0]
  unl = A.read("activitynet_qa", tmp_path / "x_q.json", labelled=False)
  assert [r.answer for r in unl] == ["yes", ""]


def test_other_formats_malformed(tmp_path):
  agqa = json.loads((FIX / "agqa_balanced.json").read_text())
  del agqa["o10001"]["question"]
  (tmp_path / "agqa.json").write_text(json.dumps(agqa))
  recs = A.read("agqa", tmp_path / "agqa.json")
  assert (
    len(recs) == 2 and "agqa.json['o10001']: missing field 'question'" in recs.report.messages[0]
  )

  clevrer = json.loads((FIX / "clevrer_validation.json").read_text())
  clevrer[0]["questions"][2]["choices"][0]["answer"] = "maybe"
  (tmp_path / "clevrer.json").write_text(json.dumps(clevrer))
  recs = A.read("clevrer", tmp_path / "clevrer.json")
  assert (
    len(recs) == 4
    and "questions[2]" in recs.report.messages[0]
    and "'maybe'" in recs.report.messages[0]
  )

  (tmp_path / "mv").mkdir()
  mv = json.loads((FIX / "mvbench" / "action_sequence.json").read_text())
  mv[1]["answer"] = "Flew away."
  (tmp_path / "mv" / "action_sequence.json").write_text(json.dumps(mv))
  recs = A.read("mvbench", tmp_path / "mv")
  assert (
    len(recs) == 1 and "action_sequence.json[1]: answer 'Flew away.'" in recs.report.messages[0]
  )

  pt = json.loads((FIX / "perception_test_mc_valid.json").read_text())
  pt["video_5678"]["mc_question"][0]["answer_id"] = 5
  (tmp_path / "pt.json").write_text(json.dumps(pt))
  recs = A.read("perception_test", tmp_path / "pt.json")
  assert len(recs) == 2
  assert "pt.json['video_5678'].mc_question[0]: answer_id 5 out of range" in recs.report.messages[0]


def test_unlabelled_split_and_duplicates(tmp_path):
  pt = json.loads((FIX / "perception_test_mc_valid.json").read_text())
  for v in pt.values():
    for q in v["mc_question"]:
      del q["answer_id"]
  (tmp_path / "test.json").write_text(json.dumps(pt))
  assert len(A.read("perception_test", tmp_path / "test.json")) == 0
  recs = A.read("perception_test", tmp_path / "test.json", labelled=False)
  assert len(recs) == 3 and all(r.answer == "" and r.answer_index is None for r in recs)

  star = json.loads((FIX / "star_val.json").read_text())
  (tmp_path / "dup.json").write_text(json.dumps(star + star[:1]))
  recs = A.read("star", tmp_path / "dup.json")
  assert len(recs) == 3 and recs.report.num_skipped == 1
  assert "Interaction_T1_13: duplicate qid" in recs.report.messages[0]


def test_bad_files_and_arguments(tmp_path):
  with pytest.raises(A.AnnotationError, match="not found: .*nope.json"):
    A.read("star", tmp_path / "nope.json")
  (tmp_path / "broken.json").write_text("[{")
  with pytest.raises(A.AnnotationError, match="broken.json: not valid JSON"):
    A.read("star", tmp_path / "broken.json")
  (tmp_path / "obj.json").write_text("{}")
  with pytest.raises(A.AnnotationError, match="obj.json: expected a JSON list"):
    A.read("star", tmp_path / "obj.json")
  with pytest.raises(ValueError, match="unknown annotation format 'msrvtt'"):
    A.read("msrvtt", tmp_path / "obj.json")
  (tmp_path / "mv_empty").mkdir()
  with pytest.raises(A.AnnotationError, match="mv_empty: no MVBench task"):
    A.read("mvbench", tmp_path / "mv_empty")


def test_clevrer_videos_are_in_the_release_layout():
  """CLEVRER's video_<split>.zip holds folders of 1000 scenes; the reader names the video there
  (before, `{video_id}.mp4` under the root: no real CLEVRER video was found)."""
  recs = {r.qid: r for r in A.read("clevrer", FIX / "clevrer_validation.json")}
  assert recs["video_10000_0"].meta["video_path"] == "video_10000-11000/video_10000.mp4"
  assert recs["video_10001_0"].meta["video_path"] == "video_10000-11000/video_10001.mp4"
  from aotd_jax.data.annotations_formats import clevrer_video_path

  assert clevrer_video_path("video_00999.mp4") == "video_00000-01000/video_00999.mp4"
  assert clevrer_video_path("video_11000.mp4") == "video_11000-12000/video_11000.mp4"


def test_mvbench_videos_are_under_their_task_folder_with_their_extension(tmp_path):
  """MVBench's tasks keep their videos in per-source folders of its `video/` directory, some
  of them not mp4 (ssv2's webm): the reader names each video there, extension kept (before,
  `{stem}.mp4` under one root: every task but a flat mp4 one missed its videos)."""
  recs = A.read("mvbench", FIX / "mvbench")
  assert recs[0].meta["video_path"] == "star/Charades_v1_480/ZS9XR.mp4"
  assert recs[2].meta["video_path"] == "perception/videos/video_1234.mp4"
  row = {"video": "166583.webm", "question": "q?", "candidates": ["a", "b"], "answer": "b"}
  (tmp_path / "action_antonym.json").write_text(json.dumps([row]))
  (tmp_path / "my_task.json").write_text(json.dumps([row]))
  got = {r.meta["task"]: r.meta["video_path"] for r in A.read("mvbench", tmp_path)}
  assert got == {"action_antonym": "ssv2_video/166583.webm", "my_task": "166583.webm"}


def test_activitynet_videos_are_found_in_any_of_their_containers(tmp_path):
  """ActivityNet's videos come from YouTube as .mp4, .mkv or .webm; `v_<name>.mp4` alone missed
  the others (the real val_q.json's first questions, over videos of each kind)."""
  from aotd_jax.data.annotations_formats import locate_activitynet_videos

  recs = A.read("activitynet_qa", REAL / "activitynet_qa" / "val_q.json")[:40]
  stems = list(dict.fromkeys(r.meta["video_file_stem"] for r in recs))
  assert len(stems) >= 4
  for stem, ext in zip(stems, (".mkv", ".webm", ".mp4")):
    (tmp_path / f"{stem}{ext}").write_bytes(b"")
  (tmp_path / f"{stems[0]}.mp4").write_bytes(b"")  # both: .mp4 first
  locate_activitynet_videos(recs, str(tmp_path))
  by_stem = {r.meta["video_file_stem"]: r.meta.get("video_path") for r in recs}
  assert by_stem[stems[0]] == f"{stems[0]}.mp4"
  assert by_stem[stems[1]] == f"{stems[1]}.webm" and by_stem[stems[2]] == f"{stems[2]}.mp4"
  assert by_stem[stems[3]] is None  # not there: the default v_<name>.mp4, reported downstream


def test_training_and_evaluation_read_the_same_video_file(tmp_path):
  """Training (records in memory, or the record cache) and evaluation find a record's video
  with one function (`annotations_formats.video_file`): the same file for each container,
  for a video that is not there (the .mp4 default, reported downstream), and for NExT-QA's
  folders."""
  from aotd_jax.data import annotations_formats as F
  from aotd_jax.data import pipeline
  from aotd_jax.data import record_cache as RC
  from aotd_jax.eval import student as student_eval

  q = [{"video_name": f"n{i}", "question": f"q{i}", "question_id": f"v_n{i}_0"} for i in range(4)]
  a = [{"question_id": f"v_n{i}_0", "answer": "yes", "type": 3} for i in range(4)]
  (tmp_path / "val_q.json").write_text(json.dumps(q))
  (tmp_path / "val_a.json").write_text(json.dumps(a))
  root = tmp_path / "videos"
  root.mkdir()
  for name in ("v_n0.mkv", "v_n1.webm", "v_n2.mp4", "v_n2.webm"):
    (root / name).write_bytes(b"")
  records = F.locate_activitynet_videos(
    A.read("activitynet_qa", tmp_path / "val_q.json"), str(root)
  )
  evaluation = [student_eval.video_file(r, str(root)) for r in records]
  memory = pipeline.qa_source(records, video_root=str(root))
  cache = RC.cached_records("activitynet_qa", str(tmp_path / "val_q.json"), str(tmp_path / "c"))
  cached = RC.qa_source(cache, fmt="activitynet_qa", video_root=str(root))
  assert [str(root / f"v_n{i}.{e}") for i, e in enumerate(("mkv", "webm", "mp4", "mp4"))] == (
    evaluation
  )
  assert [memory[i]["video_path"] for i in range(4)] == evaluation
  assert [cached[i]["video_path"] for i in range(4)] == evaluation
  nextqa = A.read("nextqa", REAL / "nextqa" / "val.csv")[:3]
  assert [pipeline.qa_example(r, video_root="/v")["video_path"] for r in nextqa] == [
    student_eval.video_file(r, "/v") for r in nextqa
  ]
  assert all(p.count("/") == 3 for p in (F.video_file(r, "/v") for r in nextqa))  # /v/dir/x.mp4


def test_nextqa_without_its_map_says_where_videos_are_looked_for(tmp_path, caplog):
  """The CSV copied away from map_vid_vidorID.json: its videos are then <video>.mp4 under the
  root, not NExTVideo's <folder>/<video>.mp4; said in a warning, not silently."""
  import logging
  import shutil

  shutil.copy(REAL / "nextqa" / "val.csv", tmp_path / "val.csv")
  with caplog.at_level(logging.WARNING):
    recs = A.read("nextqa", tmp_path / "val.csv")
  assert "video_path" not in recs[0].meta
  assert f"no map_vid_vidorID.json beside {tmp_path / 'val.csv'}" in caplog.text
  # names the keys a user gives it with: the CoT config's, the evaluator's flag, the reader's
  assert "configs/cot/nextqa.py's map=" in caplog.text and "--map" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    A.read("nextqa", REAL / "nextqa" / "val.csv")
  assert "map_vid_vidorID" not in caplog.text
