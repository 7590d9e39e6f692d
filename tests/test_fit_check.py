"""Fail fast: data that cannot fit the sequence length stops the run before step 1, with the
numbers; a source that skips most of its samples stops it by name (issue 19, item 3)."""

import grain
import pytest

from aotd_jax.data import fit_check
from aotd_jax.data import pipeline as DP
from aotd_jax.data.annotations import VideoQA
from aotd_jax.data.tokenize import TokenizeOptions, tokenize_sample
from configs.distill import lnv7b
from fixtures.tiny_tokenizer import make_tokenizer

CHOICES = ["the red cup", "the blue door"]


@pytest.fixture(scope="module")
def tok():
  return make_tokenizer(["what did the person open", *CHOICES, "the person opens the door"])


def _qa(n=3):
  return DP.qa_source(
    [
      VideoQA(
        qid=f"q{i}",
        video_id=f"v{i}",
        question="what did the person open",
        choices=CHOICES,
        answer=CHOICES[1],
        answer_index=1,
      )
      for i in range(n)
    ]
  )


def test_lnv7b_fits_its_own_clips():
  """The official max length: 32 frames of 144 tokens each leave room for prompt and target."""
  c = lnv7b.get_config()
  video = c.data.num_frames * 144
  assert video == 4608 and c.data.seq_len == 8192


def test_a_source_that_does_not_fit_is_named_with_its_numbers(tok):
  options = TokenizeOptions(max_length=4096, num_video_tokens=4608)
  with pytest.raises(ValueError) as e:
    fit_check.check_sources_fit(tok, [("qa[0] (star: train.json)", _qa())], options, 4096)
  text = str(e.value)
  assert "qa[0] (star: train.json): sample 'q0' needs" in text
  assert "4608 video + " in text and "but seq_len is 4096" in text
  # a long target is only cut (a warning), the sample still trains
  (cut,) = fit_check.check_sources_fit(
    tok, [("qa[0]", _qa())], TokenizeOptions(max_length=4652, num_video_tokens=4608), 4652
  )
  assert cut.prompt_fits and cut.total == 4656 > 4652
  fits = fit_check.check_sources_fit(
    tok, [("qa[0]", _qa())], TokenizeOptions(max_length=8192, num_video_tokens=4608), 8192
  )
  (fit,) = fits
  ex = _qa()[0]
  full = tokenize_sample(
    tok,
    ex["user_text"],
    ex["assistant_text"],
    "qa",
    TokenizeOptions(max_length=8192, num_video_tokens=4608),
  )
  assert fit.total == len(full["input_ids"]) and fit.video_tokens == 4608
  assert fit.prompt_tokens > 0 and fit.target_tokens > 0


def test_empty_sources_are_left_to_the_mixer(tok):
  options = TokenizeOptions(max_length=64, num_video_tokens=4)
  assert (
    fit_check.check_sources_fit(tok, [("cot[0]", grain.MapDataset.source([]))], options, 64) == []
  )


def test_a_source_that_skips_most_samples_stops_the_run():
  counter = DP.SkipCounter(max_skip_fraction=0.5, min_samples=4)
  good = {"truncated": 0, "source": "qa[0]"}
  bad = {DP.SKIP: "qid q9: video file missing", "kind": "video", "source": "cot[1] (c.jsonl)"}
  assert counter(good) and counter(good)
  assert not counter(bad) and not counter(bad) and not counter(bad)  # 3 of 3: under min_samples
  with pytest.raises(
    RuntimeError,
    match=r"cot\[1\] \(c.jsonl\): 4 of its first 4 samples were "
    r"skipped .* video file missing",
  ):
    counter(bad)
  # a source with a few skips among many good samples goes on
  calm = DP.SkipCounter(max_skip_fraction=0.5, min_samples=4)
  for _ in range(10):
    assert calm({"truncated": 0, "source": "qa[0]"})
  assert not calm({**bad, "source": "qa[0]"})


def test_the_trainer_checks_before_step_one(tok, monkeypatch, tmp_path):
  import types

  import ml_collections

  from aotd_jax.data import annotations
  from aotd_jax.train import data as train_data

  records = [
    VideoQA(
      qid="q0",
      video_id="v0",
      question="what did the person open",
      choices=CHOICES,
      answer=CHOICES[1],
      answer_index=1,
    )
  ]
  monkeypatch.setattr(annotations, "read", lambda fmt, path, **kw: annotations.Records(records))
  monkeypatch.setattr(DP, "make_pipeline", lambda tokenizer, sources, pc, **kw: sources)
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=8), video_tokens=lambda frames: 144 * frames
    )
  )

  def cfg(seq_len):
    return ml_collections.ConfigDict(
      dict(
        batch_size=2,
        seed=0,
        data=dict(
          kind="pipeline",
          tokenizer="unused",
          seq_len=seq_len,
          num_frames=32,
          qa=[dict(format="star", path="a.json", video_root=str(tmp_path))],
        ),
      )
    )

  (tmp_path / "v0.mp4").write_bytes(b"")  # the trainer looks its videos up first
  with pytest.raises(
    ValueError,
    match=r"qa\[0\] \(star: a.json\): sample 'q0' needs \d+ tokens "
    r"\(4608 video",
  ):
    train_data.make_pipeline_data(cfg(4096), student, tokenizer=tok)
  (source,) = train_data.make_pipeline_data(cfg(8192), student, tokenizer=tok)
  assert source[0]["source"] == "qa[0] (star: a.json)"
