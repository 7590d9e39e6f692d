"""prompt_format ("plain" | "official") and answer_style reach the training samples."""

import json

import pytest

from aotd_jax.data import conversation, pipeline
from aotd_jax.data.annotations import VideoQA

CHOICES = ["The cup.", "The door."]


def _record(**kw):
  base = dict(
    qid="q1",
    video_id="v1",
    question="What did the person open?",
    choices=CHOICES,
    answer="The door.",
    answer_index=1,
    start=1.0,
    end=4.0,
    meta={},
  )
  base.update(kw)
  return VideoQA(**base)


def test_official_format_has_the_release_headers():
  assert conversation.format_question("What?", CHOICES, "official") == (
    "Question: What?\nOptions:\n(A) The cup.\n(B) The door."
  )
  assert conversation.format_question("What?", CHOICES) == "What?\n(A) The cup.\n(B) The door."
  assert conversation.format_question("What?", [], "official") == "Question: What?"
  with pytest.raises(ValueError, match="prompt_format 'chat'"):
    conversation.format_question("What?", CHOICES, "chat")


def test_qa_examples_follow_prompt_format_and_answer_style():
  (ex,) = pipeline.qa_examples([_record()], prompt_format="official", answer_style="letter")
  assert ex["user_text"] == (
    "Question: What did the person open?\nOptions:\n(A) The cup.\n"
    "(B) The door.\n" + conversation.ANSWER_SUFFIX
  )
  assert ex["assistant_text"] == "B"
  (plain,) = pipeline.qa_examples([_record()])
  assert plain["user_text"].startswith("What did the person open?\n(A)")
  assert plain["assistant_text"] == "(B) The door."


def test_cot_records_are_rebuilt_in_the_training_format():
  rec = {
    "qid": "q1",
    "video_path": "v1.mp4",
    "question": "What did the person open?",
    "choices": CHOICES,
    "conversation": [
      {
        "from": "human",
        "value": "<video>\nWhat did the person open?\n"
        "(A) The cup.\n(B) The door.\n" + conversation.RATIONALE_SUFFIX,
      },
      {"from": "gpt", "value": "The person opens the door. So B."},
    ],
  }
  official = pipeline.cot_example(rec, prompt_format="official")
  assert official["user_text"] == conversation.cot_user_text(rec["question"], CHOICES, "official")
  assert official["assistant_text"] == "The person opens the door. So B."
  kept_as_written = pipeline.cot_example(rec)
  assert kept_as_written["user_text"].startswith("What did the person open?\n(A)")


def test_cot_source_passes_the_format_through(tmp_path):
  rec = {
    "qid": "q1",
    "video_path": "v1.mp4",
    "question": "Q?",
    "choices": CHOICES,
    "conversation": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "R."}],
  }
  path = tmp_path / "cots.jsonl"
  path.write_text(json.dumps(rec) + "\n")
  (ex,) = list(pipeline.cot_source(str(path), prompt_format="official"))
  assert ex["user_text"].startswith("Question: Q?\nOptions:\n(A) The cup.")


def test_trainer_data_config_reaches_the_sources(monkeypatch):
  """`config.data.prompt_format` / `answer_style` are passed to every QA and CoT source."""
  import types

  import ml_collections

  from aotd_jax.data import annotations
  from aotd_jax.train import data as train_data

  seen = {}
  monkeypatch.setattr(annotations, "read", lambda fmt, path, **kw: annotations.Records([_record()]))
  import grain

  one = grain.MapDataset.source([{"qid": "c0"}])
  monkeypatch.setattr(
    pipeline, "qa_source", lambda records, **kw: seen.setdefault("qa", kw) and one
  )
  monkeypatch.setattr(pipeline, "cot_source", lambda path, **kw: seen.setdefault("cot", kw) and one)
  monkeypatch.setattr(pipeline, "make_pipeline", lambda tok, sources, pc, **kw: pc)
  cfg = ml_collections.ConfigDict(
    dict(
      batch_size=2,
      seed=0,
      data=dict(
        kind="pipeline",
        tokenizer="unused",
        seq_len=64,
        num_frames=2,
        prompt_format="official",
        answer_style="letter",
        mixing="concat_epoch",
        fit_check=False,
        qa=[dict(format="star", path="a.json")],
        cot=[dict(path="c.jsonl")],
      ),
    )
  )
  vision = types.SimpleNamespace(image_size=8)
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(vision_config=vision, video_tokens=lambda frames: 4 * frames)
  )
  pc = train_data.make_pipeline_data(cfg, student, tokenizer=object())
  assert seen["qa"]["prompt_format"] == "official" and seen["qa"]["answer_style"] == "letter"
  assert seen["cot"]["prompt_format"] == "official"
  assert pc.mixing == "concat_epoch"


def test_evaluation_prompts_follow_the_training_format():
  from aotd_jax.eval import student
  from fixtures.tiny_tokenizer import make_tokenizer

  tok = make_tokenizer(["Question: Options: What did the person open?", *CHOICES])
  r = _record()
  plain = tok.decode(student.prompt_ids(tok, r, "answer", 2))
  official = tok.decode(student.prompt_ids(tok, r, "answer", 2, "official"))
  assert "Question" not in plain and "Options" not in plain  # the word tokenizer spaces ":"
  assert "Question : What did the person open ?" in official and "Options : ( A )" in official
  head, letters = student.letter_token_ids(tok, "USER: Q ASSISTANT:", 2, "letter")
  assert tok.decode(letters[1]).strip() == "B" and "(" not in tok.decode(head)
  head, letters = student.letter_token_ids(tok, "USER: Q ASSISTANT:", 2)
  assert tok.decode(head).rstrip().endswith("(")
