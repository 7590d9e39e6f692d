"""`window`: STAR's question window (ours) or the whole video (the official release), chosen
once at read time so that the agent, the trainer and the evaluation decode the same span."""

import pathlib

import types

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
  from configs.cot import star
  from configs.distill import lnv7b
  from fixtures.train_data import pipeline_config

  paths = "owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://127.0.0.1:9/v1"
  assert star.get_config(f"ann=a.json,videos=v,{paths}").data.read_kwargs.window == "whole"
  c = star.get_config(f"ann=a.json,videos=v,{paths},window=question")
  assert c.data.read_kwargs.window == "question"
  assert lnv7b.get_config("h100x8").data.window == "whole"
  vision = types.SimpleNamespace(image_size=8)
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(vision_config=vision, video_tokens=lambda frames: 4 * frames)
  )
  pc, reads = pipeline_config(monkeypatch, student, window="whole", frame_sampling="official")
  assert reads == [{"window": "whole"}] and pc.frame_sampling == "official"
  # a config without them (the toy world's): the trainer's defaults
  pc, reads = pipeline_config(monkeypatch, student)
  assert reads == [{"window": "question"}] and pc.frame_sampling == "ours"
