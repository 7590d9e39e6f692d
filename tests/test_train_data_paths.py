"""The trainer's data as a new user points it at real datasets: annotation files and video
folders that are not there, a split without answers, videos in another layout than the reader
expects, and CLEVRER's questions with several correct choices. Each stops with one line naming
the flag to fix (a `ConfigError`: exit 2 from launch.train), before the student is built where
the check needs no annotations read."""

import json
import logging
import pathlib

import ml_collections
import pytest

from aotd_jax.data import pipeline
from aotd_jax.data import annotations as A
from aotd_jax.train import data as train_data
from aotd_jax.train.config_check import ConfigError

FIX = pathlib.Path(__file__).resolve().parent / "fixtures" / "annotations"


def _config(**datasets) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      batch_size=1,
      seed=0,
      data=dict(kind="pipeline", tokenizer="unused", seq_len=64, num_frames=2, datasets=datasets),
    )
  )


def _clevrer(tmp_path, layout: str) -> dict:
  """CLEVRER's validation fixture, its videos as empty files in `layout` ("release": the
  zip's folders of 1000 scenes; "flat": every video in one folder)."""
  root = tmp_path / f"clevrer_{layout}"
  for video in ("video_10000.mp4", "video_10001.mp4"):
    sub = root / ("video_10000-11000" if layout == "release" else "")
    sub.mkdir(parents=True, exist_ok=True)
    (sub / video).write_bytes(b"")
  return dict(
    format="clevrer",
    annotations=str(FIX / "clevrer_validation.json"),
    video_root=str(root),
    cots="",
  )


def _make(cfg):
  """`make_pipeline_data` up to its QA checks (they come before the student is used)."""
  return train_data.make_pipeline_data(cfg, student=object(), tokenizer=object())


def test_missing_annotations_and_video_folders_are_named_by_flag(tmp_path):
  cfg = _config(
    star=dict(
      format="star",
      annotations=str(tmp_path / "STAR_train.json"),
      video_root=str(tmp_path / "Charades"),
      cots="",
    ),
    clevrer=_clevrer(tmp_path, "release"),
  )
  with pytest.raises(ConfigError) as e:
    train_data.check_paths(cfg)
  assert str(e.value).splitlines()[1:] == [
    f"  --config.data.datasets.star.annotations={tmp_path / 'STAR_train.json'}: no such file",
    f"  --config.data.datasets.star.video_root={tmp_path / 'Charades'}: no such directory",
  ]
  del cfg.data.datasets["star"]
  train_data.check_paths(cfg)  # CLEVRER's paths are there


def test_a_split_without_answers_is_named_with_the_readers_reason(tmp_path):
  """STAR's test split has no `answer`: every record is skipped, so no source to train on."""
  test = json.loads((FIX / "star_val.json").read_text())
  for r in test:
    r.pop("answer")
  (tmp_path / "STAR_test.json").write_text(json.dumps(test))
  (tmp_path / "videos").mkdir()
  cfg = _config(
    star=dict(
      format="star",
      annotations=str(tmp_path / "STAR_test.json"),
      video_root=str(tmp_path / "videos"),
      cots="",
    )
  )
  with pytest.raises(ConfigError, match=r"^--config.data.datasets.star: no question to train on"):
    _make(cfg)
  cfg.data.datasets.star.annotations = str(FIX / "agqa_balanced.json")
  with pytest.raises(
    ConfigError, match=r"^--config.data.datasets.star.annotations \(format 'star'\)"
  ):
    _make(cfg)


def test_clevrer_questions_with_several_answers_are_left_out_and_counted(caplog):
  """Such a question has no one letter to train on: before, `qa_examples` raised a ValueError
  naming no file, which ended the run after the student was built."""
  records = A.read("clevrer", FIX / "clevrer_validation.json")
  with caplog.at_level(logging.WARNING):
    examples = pipeline.qa_examples(records, video_root="V", answer_style="letter")
  assert [e["qid"] for e in examples] == [r.qid for r in records if r.qid != "video_10000_13"]
  assert "1 of 2 multiple-choice records have no single correct option" in caplog.text
  assert "video_10000_13" in caplog.text
  (explanatory,) = [e for e in examples if e["qid"] == "video_10000_12"]
  assert explanatory["assistant_text"] == "B"
  assert explanatory["video_path"] == "V/video_10000-11000/video_10000.mp4"


def test_videos_in_another_layout_stop_the_run_naming_video_root(tmp_path):
  """CLEVRER's videos flattened into one folder: none of the paths the reader names exists,
  so every sample would be skipped (found only after ~50 skips, past the build and compile)."""
  cfg = _config(clevrer=_clevrer(tmp_path, "flat"))
  with pytest.raises(ConfigError) as e:
    _make(cfg)
  text = str(e.value)
  assert text.startswith(
    f"--config.data.datasets.clevrer.video_root={tmp_path / 'clevrer_flat'}: none of the first 2 "
  )
  assert f"(e.g. {tmp_path / 'clevrer_flat' / 'video_10000-11000' / 'video_10000.mp4'})" in text


def test_some_missing_videos_are_only_a_warning(tmp_path, caplog):
  """A dataset's few lost videos are the pipeline's to skip and count: the check passes (and
  the build goes on to the student, which this test does not give)."""
  cfg = _config(clevrer=_clevrer(tmp_path, "release"))
  (tmp_path / "clevrer_release" / "video_10000-11000" / "video_10001.mp4").unlink()
  with caplog.at_level(logging.WARNING), pytest.raises(AttributeError, match="config"):
    _make(cfg)
  assert "1 of its first 2 videos do not exist" in caplog.text


def test_activitynet_videos_in_other_containers_train(tmp_path):
  """ActivityNet-QA's videos as .mkv / .webm: found (before: `v_<name>.mp4` only, so a folder
  of such videos skipped every sample)."""
  q = [{"video_name": f"n{i}", "question": f"q{i}", "question_id": f"v_n{i}_0"} for i in range(2)]
  a = [{"question_id": f"v_n{i}_0", "answer": "yes", "type": 3} for i in range(2)]
  (tmp_path / "train_q.json").write_text(json.dumps(q))
  (tmp_path / "train_a.json").write_text(json.dumps(a))
  (tmp_path / "videos").mkdir()
  (tmp_path / "videos" / "v_n0.mkv").write_bytes(b"")
  (tmp_path / "videos" / "v_n1.webm").write_bytes(b"")
  cfg = _config(
    activitynet_qa=dict(
      format="activitynet_qa",
      annotations=str(tmp_path / "train_q.json"),
      video_root=str(tmp_path / "videos"),
      cots="",
    )
  )
  with pytest.raises(AttributeError, match="config"):  # past the data checks, at the student
    _make(cfg)


def test_cots_made_on_another_machine_find_their_videos_under_video_root(tmp_path):
  """A CoT record names its video by the CoT machine's absolute path; the trainer on a pod
  whose videos lie elsewhere read that path (every CoT skipped, its video_root ignored). The
  job now also records the path under its video folder (`video`), which the trainer joins to
  its own `video_root`."""
  from aotd_jax.agent import job, programs

  qa = A.read("star", FIX / "star_val.json")[0]
  program = programs.ParsedProgram(source=None, error="no program")

  def make_record(video_path: str, video_dir: str) -> dict:
    return job.make_record(
      qa,
      video_path=video_path,
      video_dir=video_dir,
      program=program,
      execution=None,
      rationale=None,
      rationale_source=None,
      answer_verdict=None,
      logic_verdict=None,
      seconds=0.0,
    )

  record = make_record("/gpu-box/star/Charades_v1_480/6H78U.mp4", "/gpu-box/star/Charades_v1_480/")
  assert record["video"] == "6H78U.mp4"
  record["kept"] = True  # as in the job's cot-*.array_record (the verdicts are not the point)
  root = _videos_dir(tmp_path, ["6H78U.mp4"])
  assert pipeline.cot_example(record, video_root=root)["video_path"] == f"{root}/6H78U.mp4"
  # without a video_root, or a record from before `video`: the job's own path
  assert pipeline.cot_example(record)["video_path"] == record["video_path"]
  old = {k: v for k, v in record.items() if k != "video"}
  assert pipeline.cot_example(old, video_root=root)["video_path"] == record["video_path"]
  # a video outside the job's folder has no `video`
  other = make_record("/elsewhere/6H78U.mp4", "/gpu-box/star/Charades_v1_480")
  assert "video" not in other


def _videos_dir(tmp_path, names) -> str:
  root = tmp_path / "pod_videos"
  root.mkdir()
  for name in names:
    (root / name).write_bytes(b"")
  return str(root)


def _agqa(tmp_path, n: int, **extra) -> dict:
  """An AGQA 2.0 file of `n` questions over 4 videos (empty files under `videos/`)."""
  questions = {
    f"q{i:04d}": {"question": f"question {i}?", "answer": "yes", "video_id": f"V{i % 4}"}
    for i in range(n)
  }
  (tmp_path / "train_balanced.txt").write_text(json.dumps(questions))
  (tmp_path / "videos").mkdir(exist_ok=True)
  for v in range(4):
    (tmp_path / "videos" / f"V{v}.mp4").write_bytes(b"")
  return dict(
    format="agqa",
    annotations=str(tmp_path / "train_balanced.txt"),
    video_root=str(tmp_path / "videos"),
    cots="",
    **extra,
  )


def _kept(monkeypatch, cfg) -> list[str]:
  """The qids of the QA records `make_pipeline_data` turns into training examples."""
  got = []
  real = pipeline.qa_source

  def qa_source(records, **kw):
    got.append([r.qid for r in records])
    return real(records, **kw)

  monkeypatch.setattr(pipeline, "qa_source", qa_source)
  with pytest.raises(AttributeError, match="config"):  # past the data, at the stand-in student
    _make(cfg)
  return got[-1]


def test_max_examples_keeps_a_seeded_sample_the_same_on_every_host(tmp_path, monkeypatch):
  """AGQA's millions of questions read whole made most of a concat_epoch mix; `max_examples`
  keeps at most that many, picked by the run's seed and the dataset's name alone (each host
  reads the same file and keeps the same questions), in file order. 0 (the default) keeps all."""
  cfg = _config(agqa=_agqa(tmp_path, 200, max_examples=30))
  first = _kept(monkeypatch, cfg)
  assert len(first) == 30 and first == sorted(first)  # the file's order: q0000, q0001, ...
  assert _kept(monkeypatch, cfg) == first  # another host, or a rerun
  assert len(set(first)) == 30 and first != [f"q{i:04d}" for i in range(30)]
  cfg.seed = 1
  assert _kept(monkeypatch, cfg) != first
  cfg.data.datasets.agqa.max_examples = 0
  assert len(_kept(monkeypatch, cfg)) == 200
  cfg.data.datasets.agqa.max_examples = 500  # more than there are: all
  assert len(_kept(monkeypatch, cfg)) == 200
  cfg.data.datasets.agqa.max_examples = -1
  with pytest.raises(ConfigError, match=r"^--config\.data\.datasets\.agqa\.max_examples: "):
    _make(cfg)


def test_the_real_recipe_reads_every_question_unless_capped():
  """The distillation configs keep the paper's data (every source whole: max_examples=0), the
  option there to set per source; a run saved before the option resumes (unset reads as 0)."""
  from aotd_jax.train import checkpoint
  from configs.distill import lnv7b

  cfg = lnv7b.get_config("h100x8,runlocal")
  assert {n: d.max_examples for n, d in cfg.data.datasets.items()} == dict.fromkeys(
    ("star", "nextqa", "agqa", "activitynet_qa", "clevrer"), 0
  )
  saved = cfg.to_dict()
  del saved["data"]["datasets"]["agqa"]["max_examples"]
  assert checkpoint.config_changes(saved, cfg.to_dict()) == []
  cfg.data.datasets.agqa.max_examples = 100_000  # the option as a user sets it
  assert checkpoint.config_changes(saved, cfg.to_dict()) == [
    "data.datasets.agqa.max_examples: '<unset>' -> 100000"
  ]


def test_the_mix_is_logged_and_a_run_far_short_of_its_epoch_warned(tmp_path, monkeypatch, caplog):
  """Under concat_epoch each source's share is its size: the trainer logs them, and warns when
  batch_size x total_steps is under half the epoch (AGQA whole against the recipe's steps)."""
  cfg = _config(agqa=_agqa(tmp_path, 200))
  cfg.data.mixing, cfg.total_steps = "concat_epoch", 40
  with caplog.at_level(logging.INFO):
    _kept(monkeypatch, cfg)
  assert "data mix (concat_epoch): qa[0] (agqa: " in caplog.text and " 200 (100.0 %)" in caplog.text
  assert "the run draws 40 examples (batch_size x total_steps), 20.0 % of one epoch of 200" in (
    caplog.text
  )
  caplog.clear()
  cfg.data.datasets.agqa.max_examples = 60
  with caplog.at_level(logging.INFO):
    _kept(monkeypatch, cfg)
  assert "concat_epoch: the run draws" not in caplog.text  # 40 of 60: most of the epoch
