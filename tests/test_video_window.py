"""`window`: STAR's question window (ours) or the whole video (the official release), chosen
once at read time so that the agent, the trainer and the evaluation decode the same span."""

import pathlib

import ml_collections
import pytest

from aotd_jax.data import annotations

STAR = pathlib.Path(__file__).resolve().parent / "fixtures" / "annotations" / "star_val.json"


def test_whole_drops_each_question_window_and_keeps_it_in_meta():
  kept = annotations.read("star", STAR)
  whole = annotations.read("star", STAR, window="whole")
  assert [r.qid for r in kept] == [r.qid for r in whole]
  assert any(r.start is not None for r in kept)
  for a, b in zip(kept, whole):
    assert (b.start, b.end) == (None, None)
    assert b.meta["question_window"] == [a.start, a.end]
    assert (a.question, a.choices, a.answer) == (b.question, b.choices, b.answer)
  with pytest.raises(ValueError, match="window='clip' is not one of"):
    annotations.read("star", STAR, window="clip")


def test_configs_carry_the_window_to_the_readers(monkeypatch):
  from aotd_jax.data import pipeline
  from aotd_jax.train import data as train_data
  from configs.cot import star
  from configs.distill import lnv7b

  paths = "owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://127.0.0.1:9/v1"
  assert star.get_config(f"ann=a.json,videos=v,{paths}").data.read_kwargs.window == "question"
  c = star.get_config(f"ann=a.json,videos=v,{paths},window=whole")
  assert c.data.read_kwargs.window == "whole"
  assert lnv7b.get_config("h100x8").data.window == "question"
  seen = []
  monkeypatch.setattr(annotations, "read", lambda fmt, path, **kw: seen.append(kw) or [])
  import grain

  monkeypatch.setattr(
    pipeline, "qa_source", lambda records, **kw: grain.MapDataset.source([{"qid": "q"}])
  )
  monkeypatch.setattr(pipeline, "make_pipeline", lambda tok, sources, pc, **kw: pc)
  import types

  vision = types.SimpleNamespace(image_size=8)
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(vision_config=vision, video_tokens=lambda frames: 4 * frames)
  )
  cfg = ml_collections.ConfigDict(
    dict(
      batch_size=1,
      seed=0,
      data=dict(
        kind="pipeline",
        tokenizer="unused",
        seq_len=64,
        num_frames=2,
        fit_check=False,
        window="whole",
        qa=[dict(format="star", path="a.json")],
      ),
    )
  )
  train_data.make_pipeline_data(cfg, student, tokenizer=object())
  assert seen == [{"window": "whole"}]
