"""`launch.evaluate` as a new user runs it on a real benchmark folder: an `--out` folder that does
not exist yet, videos missing under `--video_root`, CLEVRER's questions with several correct
choices. The student is stubbed (`run_model`): what is checked is what happens before and after
it, where a run used to lose its rows or end at the first missing video."""

import json
import pathlib

import pytest
from absl import flags

from aotd_jax.train.config_check import ConfigError

FIX = pathlib.Path(__file__).resolve().parent / "fixtures" / "annotations"
FLAGS_SET = (
  "student",
  "format",
  "annotations",
  "video_root",
  "out",
  "missing_videos",
  "rescore",
  "batch_size",
  "num_frames",
)


@pytest.fixture
def evaluate(monkeypatch):
  """`launch.evaluate` (imported here: it defines its flags) with a stub student that answers
  (A) to every question and records the questions it was given; the flags a test parses are
  reset after it; `load_model` gives a stand-in the stub checks it is handed."""
  import launch.evaluate as ev

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  given = []

  def run_model(student, records, scoring):
    assert student == "the student"
    given.append([r.qid for r in records])
    rows = [{"qid": r.qid, "output": "A", "seconds": 0.5, "new_tokens": 1} for r in records]
    return rows, {}

  monkeypatch.setattr(ev, "run_model", run_model)
  monkeypatch.setattr(ev, "load_model", lambda: "the student")
  monkeypatch.setattr(ev, "training_data_config", lambda path: {})
  monkeypatch.setattr(ev, "check_tokenizer", lambda: None)  # the stub student has none
  ev.given = given
  yield ev
  for name in FLAGS_SET:
    flags.FLAGS[name].unparse()


def _run(ev, **values):
  for name, value in values.items():
    flags.FLAGS[name].parse(str(value))
  ev.main([])


def _videos(root: pathlib.Path, names) -> str:
  for name in names:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"")
  return str(root)


def test_out_goes_into_a_folder_made_before_the_run(evaluate, tmp_path):
  """`--out=W/eval/star.json` as docs/reproduce.md writes it: the rows were written only at the
  end, with `open()`, so a missing `W/eval/` lost them after the whole evaluation."""
  root = _videos(tmp_path / "videos", ["6H78U.mp4", "YSKX3.mp4", "ZS9XR.mp4"])
  out = tmp_path / "W" / "eval" / "star.json"
  _run(
    evaluate,
    student=tmp_path / "export",
    format="star",
    annotations=FIX / "star_val.json",
    video_root=root,
    out=out,
  )
  result = json.loads(out.read_text())
  assert [row["qid"] for row in result["outputs"]] == evaluate.given[0]
  assert result["count"] == 3 and "missing_videos" not in result
  with pytest.raises(ConfigError, match="is a directory; give the JSON file to write"):
    _run(evaluate, out=tmp_path / "W" / "eval")


def test_missing_videos_stop_before_the_student_or_are_left_out_and_listed(evaluate, tmp_path):
  """Before, the first missing video ended the run in a VideoDecodeError traceback, after the
  questions before it had been answered, and no row was written."""
  root = _videos(tmp_path / "videos", ["6H78U.mp4"])  # 1 of the fixture's 3 videos
  out = tmp_path / "eval.json"
  common = dict(
    student=tmp_path / "export",
    format="star",
    annotations=FIX / "star_val.json",
    video_root=root,
    out=out,
  )
  with pytest.raises(ConfigError) as e:
    _run(evaluate, **common)
  assert str(e.value).startswith(
    f"--video_root={root}: the videos of 2 of the 3 questions are not there (e.g. "
  )
  assert "--missing_videos=skip" in str(e.value)
  assert evaluate.given == [] and not out.exists()
  _run(evaluate, **common, missing_videos="skip")
  result = json.loads(out.read_text())
  assert evaluate.given == [["Interaction_T1_13"]] and result["count"] == 1
  assert result["missing_videos"] == {
    "video_root": root,
    "count": 2,
    "qids": ["Feasibility_T5_2", "Sequence_T1_7"],
  }
  # the file re-scores without the student: the questions it left out stay out
  flags.FLAGS["student"].unparse()
  flags.FLAGS["out"].unparse()
  _run(evaluate, rescore=out)
  assert evaluate.given == [["Interaction_T1_13"]]


def test_clevrer_questions_with_several_correct_choices_are_left_out(evaluate, tmp_path):
  """Scored before against `answer_index=None`, so always wrong; now left out and counted."""
  root = _videos(
    tmp_path / "video_validation",
    ["video_10000-11000/video_10000.mp4", "video_10000-11000/video_10001.mp4"],
  )
  out = tmp_path / "clevrer.json"
  _run(
    evaluate,
    student=tmp_path / "export",
    format="clevrer",
    annotations=FIX / "clevrer_validation.json",
    video_root=root,
    out=out,
  )
  (given,) = evaluate.given
  assert "video_10000_13" not in given and len(given) == 4
  result = json.loads(out.read_text())
  assert result["left_out_no_single_answer"] == 1
  # the one explanatory question with one correct option (B), answered (A): wrong
  assert result["count"] == 1 and result["accuracy"] == 0.0


def test_mvbench_videos_in_their_task_folders_and_frame_folders(evaluate, tmp_path):
  """MVBench's `video/` folder as released: each task's videos under its own subfolder, found
  there, episodic_reasoning's folders of frames too; a folder where another task has a video
  file is named as such."""
  root = tmp_path / "video"
  _videos(root, ["star/Charades_v1_480/ZS9XR.mp4", "star/Charades_v1_480/YSKX3.mp4"])
  _videos(root, ["perception/videos/video_1234.mp4"])
  _run(
    evaluate, student=tmp_path / "s", format="mvbench", annotations=FIX / "mvbench", video_root=root
  )
  assert evaluate.given == [["action_sequence_0", "action_sequence_1", "object_shuffle_0"]]
  ann = tmp_path / "json"
  ann.mkdir()
  row = {
    "video": "castle_s01e01_seg02_clip_00",
    "question": "q?",
    "candidates": ["a", "b"],
    "answer": "a",
    "start": 1.0,
    "end": 5.0,
  }
  (ann / "episodic_reasoning.json").write_text(json.dumps([row]))
  (root / "tvqa" / "frames_fps3_hq" / row["video"]).mkdir(parents=True)
  _run(evaluate, annotations=ann)
  assert evaluate.given[-1] == ["episodic_reasoning_0"]
  (ann / "episodic_reasoning.json").rename(ann / "my_task.json")  # no frame rate known
  (root / row["video"]).mkdir()
  with pytest.raises(ConfigError, match=r"\(1 of them folders, e\.g\. .*castle_s01e01"):
    _run(evaluate, annotations=ann)


def test_activitynet_videos_in_other_containers_are_found(evaluate, tmp_path):
  """ActivityNet-QA over videos as the dataset's download gives them (.mkv, .webm, .mp4)."""
  q = [{"video_name": f"n{i}", "question": f"q{i}", "question_id": f"v_n{i}_0"} for i in range(3)]
  a = [{"question_id": f"v_n{i}_0", "answer": "yes", "type": 3} for i in range(3)]
  (tmp_path / "val_q.json").write_text(json.dumps(q))
  (tmp_path / "val_a.json").write_text(json.dumps(a))
  root = _videos(tmp_path / "videos", ["v_n0.mkv", "v_n1.webm", "v_n2.mp4"])
  out = tmp_path / "anet.json"
  _run(
    evaluate,
    student=tmp_path / "s",
    format="activitynet_qa",
    annotations=tmp_path / "val_q.json",
    video_root=root,
    out=out,
  )
  assert evaluate.given == [["v_n0_0", "v_n1_0", "v_n2_0"]]


def test_dtype_bfloat16_loads_either_kind_of_student_in_half_the_memory(evaluate, tmp_path):
  """`--dtype=bfloat16` (docs/reproduce.md's memory table: a 7B student in ~15 GB): both a
  Hugging Face directory and a training checkpoint load in bfloat16, the checkpoint cast as
  Orbax reads it (its float32 master weights never held); float32 stays the default."""
  import numpy as np
  from flax import nnx

  from aotd_jax import hf
  from aotd_jax.hf import registry
  from aotd_jax.train import build
  from aotd_jax.train.checkpoint import Checkpointer
  from configs.toyworld import distill as toy

  adapter = registry.adapter_for("LlavaNextVideoForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_LLAVA)), rngs=nnx.Rngs(0))
  hf.save_pretrained(model, str(tmp_path / "hf"))
  ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  ckpt.save(1, model=params, opt_state={"count": np.zeros((), np.int32)}, meta={"step": 1}, data={})
  ckpt.close()
  build.write_hf_config(model, str(tmp_path / "run" / "checkpoints"))
  want = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path in (tmp_path / "hf", tmp_path / "run" / "checkpoints"):
    for dtype in ("bfloat16", "float32"):
      got = nnx.to_flat_state(nnx.state(evaluate.load_student(str(path), dtype), nnx.Param))
      assert {v.get_value().dtype.name for _, v in got} == {dtype}, (path, dtype)
      for (_, a), (_, b) in zip(want, got):
        np.testing.assert_array_equal(
          np.asarray(a.get_value().astype(dtype)), np.asarray(b.get_value())
        )


def test_a_split_without_answers_is_named_with_the_readers_reason(evaluate, tmp_path):
  """STAR's test split (no `answer`): every record is skipped as unlabelled; the run stops
  saying so before the student loads, instead of evaluating nothing."""
  test = json.loads((FIX / "star_val.json").read_text())
  for r in test:
    r.pop("answer")
  (tmp_path / "STAR_test.json").write_text(json.dumps(test))
  with pytest.raises(ConfigError) as e:
    _run(evaluate, student=tmp_path / "s", format="star", annotations=tmp_path / "STAR_test.json")
  assert "no question to evaluate: star " in str(e.value) and "0 records read, 3 malformed" in str(
    e.value
  )
  assert "no answer (pass labelled=False" in str(e.value) and evaluate.given == []


def test_rows_are_appended_per_batch_and_a_rerun_resumes(evaluate, tmp_path, monkeypatch):
  """A run that ends mid-way (preempted, crashed) keeps the rows of its finished batches in
  `<out>.rows.jsonl`; the same command again answers only the questions left, and once all are
  answered it loads no student. A rerun with other settings is refused, not mixed in."""
  root = _videos(tmp_path / "videos", ["6H78U.mp4", "YSKX3.mp4", "ZS9XR.mp4"])
  out = tmp_path / "eval" / "star.json"
  common = dict(
    student=tmp_path / "s",
    format="star",
    annotations=FIX / "star_val.json",
    video_root=root,
    out=out,
    batch_size=1,
  )
  stub = evaluate.run_model

  def preempted(student, records, scoring):
    if len(evaluate.given) == 2:
      raise RuntimeError("preempted")
    return stub(student, records, scoring)

  monkeypatch.setattr(evaluate, "run_model", preempted)
  with pytest.raises(RuntimeError, match="preempted"):
    _run(evaluate, **common)
  log = pathlib.Path(str(out) + ".rows.jsonl")
  lines = [json.loads(x) for x in log.read_text().splitlines()]
  assert [x.get("qid") for x in lines if "output" in x] == ["Interaction_T1_13", "Sequence_T1_7"]
  assert not out.exists()
  monkeypatch.setattr(evaluate, "run_model", stub)
  _run(evaluate, **common)
  assert evaluate.given[-1] == ["Feasibility_T5_2"]
  result = json.loads(out.read_text())
  assert [row["qid"] for row in result["outputs"]] == [
    "Interaction_T1_13",
    "Sequence_T1_7",
    "Feasibility_T5_2",
  ]
  assert result["count"] == 3 and result["efficiency"]["questions"] == 3
  monkeypatch.setattr(evaluate, "load_model", lambda: pytest.fail("all answered: no student"))
  _run(evaluate, **common)
  assert json.loads(out.read_text())["outputs"] == result["outputs"]
  with pytest.raises(ConfigError, match=r"a run with other settings \(num_frames\)"):
    _run(evaluate, **common, num_frames=16)


def test_a_video_that_does_not_decode_stops_naming_it_or_is_left_out(
  evaluate, tmp_path, monkeypatch
):
  """A truncated mp4 and a zero-byte file under --video_root: both exist, so the look-up
  before the student passes them, and their decoding failed mid-run with every row lost. Now
  `stop` names the file and question, the rows so far kept; `skip` leaves them out, listed
  with the missing videos (and kept out by --rescore)."""
  import numpy as np

  from aotd_jax.data import video
  from aotd_jax.eval import student as student_eval

  root = tmp_path / "videos"
  root.mkdir()
  frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
  video.write_video(root / "6H78U.mp4", frames)
  whole = (root / "6H78U.mp4").read_bytes()
  (root / "YSKX3.mp4").write_bytes(whole[: len(whole) // 2])  # truncated
  (root / "ZS9XR.mp4").write_bytes(b"")  # zero bytes
  stub = evaluate.run_model

  def decoding(student, records, scoring):  # decodes each video as the student's batch does
    for r in records:
      video.read_frames(student_eval.video_file(r, str(root)), 2)
    return stub(student, records, scoring)

  monkeypatch.setattr(evaluate, "run_model", decoding)
  out = tmp_path / "eval.json"
  common = dict(
    student=tmp_path / "s",
    format="star",
    annotations=FIX / "star_val.json",
    video_root=root,
    out=out,
    batch_size=1,
  )
  with pytest.raises(ConfigError) as e:
    _run(evaluate, **common)
  assert str(e.value).startswith(f"{root / 'YSKX3.mp4'} (question Sequence_T1_7) does not decode: ")
  assert "the 1 rows so far are in " in str(e.value) and "--missing_videos=skip" in str(e.value)
  log = pathlib.Path(str(out) + ".rows.jsonl").read_text()
  assert '"qid": "Interaction_T1_13", "output": "A"' in log and not out.exists()
  _run(evaluate, **common, missing_videos="skip")
  assert evaluate.given == [["Interaction_T1_13"]]  # resumed: its row kept, no batch re-run
  result = json.loads(out.read_text())
  assert result["count"] == 1 and [r["qid"] for r in result["outputs"]] == ["Interaction_T1_13"]
  missing = result["missing_videos"]
  assert missing["count"] == 2 and missing["qids"] == ["Feasibility_T5_2", "Sequence_T1_7"]
  assert set(missing["undecodable"]) == {"Feasibility_T5_2", "Sequence_T1_7"}
  assert missing["undecodable"]["Feasibility_T5_2"].startswith(str(root / "ZS9XR.mp4"))
  # the zero-byte file replaced by a good one: the rerun tries it again, the rest resumed
  (root / "ZS9XR.mp4").write_bytes(whole)
  _run(evaluate, **common, missing_videos="skip")
  assert evaluate.given == [["Interaction_T1_13"], ["Feasibility_T5_2"]]
  result = json.loads(out.read_text())
  assert [r["qid"] for r in result["outputs"]] == ["Interaction_T1_13", "Feasibility_T5_2"]
  assert result["missing_videos"]["qids"] == ["Sequence_T1_7"]
  assert list(result["missing_videos"]["undecodable"]) == ["Sequence_T1_7"]
  calls = len(evaluate.given)
  flags.FLAGS["student"].unparse()
  flags.FLAGS["out"].unparse()
  _run(evaluate, rescore=out)
  assert len(evaluate.given) == calls
