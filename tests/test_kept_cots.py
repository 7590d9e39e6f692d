"""The trainer reads the CoT job's kept dataset: globbed shards, empty shards counted, the
unfiltered record log refused unless asked for, errors that name the file (issue 19, item 6)."""

import json
import types

import ml_collections
import pytest

from aotd_jax.agent import filters, job
from aotd_jax.data import pipeline as DP


def _record(qid, kept):
  rec = {
    "qid": qid,
    "video_id": "v",
    "video_path": "v.mp4",
    "question": "What moved?",
    "choices": ["a cup", "a door"],
    "answer": "a door",
    "kept": kept,
    "rationale": "The door swings open in frames 3-9. So the answer is a door." if kept else None,
    "conversation": [
      {
        "from": "human",
        "value": "<video>\nWhat moved?\n(A) a cup\n(B) a door\n"
        + ("Explain the rationale to answer the question." if kept else "Answer ..."),
      },
      {
        "from": "gpt",
        "value": "The door swings open in frames 3-9. So the answer is a door."
        if kept
        else "(B) a door",
      },
    ],
  }
  return rec


def _shards(tmp_path, per_shard):
  """Runs the job's own finaliser on each shard's records (kept flags given per shard)."""
  for k, kept_flags in enumerate(per_shard):
    name = f"{k:05d}-of-{len(per_shard):05d}"
    paths = job.JobPaths.for_shard(str(tmp_path), name)
    records = [_record(f"q{k}_{i}", kept) for i, kept in enumerate(kept_flags)]
    with open(paths.records, "w") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
    job.finalise(records, paths, filters.FilterStats())


def test_globbed_shards_with_an_empty_one(tmp_path):
  _shards(tmp_path, [[True, False, True], [False, False], [True]])
  source = DP.cot_source(str(tmp_path / "cot-*.array_record"))
  assert len(source) == 3  # shard 1 kept nothing: fine, it adds nothing
  assert sorted(ex["qid"] for ex in source) == ["q0_0", "q0_2", "q2_0"]
  assert all(ex["mode"] == "cot" and ex["assistant_text"].startswith("The door") for ex in source)
  assert len(DP.cot_files(str(tmp_path / "cot-*.array_record"))) == 3
  with pytest.raises(FileNotFoundError, match=r"CoT glob matches no file: .*/cots-\*"):
    DP.cot_source(str(tmp_path / "cots-*.array_record"))


def test_the_record_log_is_refused_unless_asked(tmp_path):
  _shards(tmp_path, [[True, False, True]])
  log = str(tmp_path / "records-00000-of-00001.jsonl")
  with pytest.raises(
    ValueError,
    match=r"records-00000-of-00001.jsonl: 1 of its 3 records are "
    r"not kept CoTs .*allow_unfiltered_cots=True",
  ):
    DP.cot_source(log)
  examples = list(DP.cot_source(log, allow_unfiltered=True))
  # the kept ones, as CoTs; the unkept one has no rationale: skipped and reported, never
  # trained as a CoT with its QA reply as the "rationale"
  assert [ex["qid"] for ex in examples] == ["q0_0", "q0_2"]
  assert all(not ex["assistant_text"].startswith("(B)") for ex in examples)
  # an unkept record that has a rationale (answer right, judge said no) is an unfiltered CoT
  rec = {**_record("u1", False), "rationale": "Frames 1-4 show a cup. So the answer is a door."}
  ex = DP.cot_example(rec, allow_unfiltered=True)
  assert ex["assistant_text"] == rec["rationale"] and ex["user_text"].endswith("question.")
  with pytest.raises(ValueError, match="'u1' is not a kept CoT"):
    DP.cot_example(rec)


def test_the_trainer_names_an_empty_cot_source(tmp_path, monkeypatch):
  from aotd_jax.data import annotations
  from aotd_jax.train import data as train_data

  _shards(tmp_path, [[False], [False, False]])
  monkeypatch.setattr(annotations, "read", lambda fmt, path, **kw: annotations.Records())
  cfg = ml_collections.ConfigDict(
    dict(
      batch_size=2,
      seed=0,
      data=dict(
        kind="pipeline",
        tokenizer="unused",
        seq_len=64,
        num_frames=2,
        cot=[dict(path=str(tmp_path / "cot-*.array_record"))],
      ),
    )
  )
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=8), video_tokens=lambda f: 4 * f
    )
  )
  with pytest.raises(
    ValueError,
    match=r"cot\[0\] \(.*cot-\*.array_record\): no CoT in its 2 "
    r"file\(s\)",
  ):
    train_data.make_pipeline_data(cfg, student, tokenizer=object())
