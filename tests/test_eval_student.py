"""The student evaluator on a tiny random LLaVA-NeXT-Video, toy-world clips and the toy tokenizer."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import aotd_jax  # noqa: F401
from aotd_jax import hf
from aotd_jax.data import annotations
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.data.toy_tokenizer import train_tokenizer
from aotd_jax.eval import student as student_eval
from aotd_jax.hf import registry
from configs.toyworld import distill as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = tmp_path_factory.mktemp("world")
  paths = toyworld.generate_world(d, seed=0, num_train=2, num_val=1, num_test=2)
  records = annotations.read("star", paths["test"])
  texts = [r.question + " " + " ".join(r.choices) for r in records] + [
    "USER: ASSISTANT: (A) (B) (C) (D)"
  ]
  tok = train_tokenizer(texts, d / "tok", vocab_size=300)
  from flax import nnx

  adapter = registry.adapter_for("LlavaNextVideoForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_LLAVA)), rngs=nnx.Rngs(0))
  return d, records[:3], tok, model


@pytest.fixture(scope="module")
def padded_logits():
  """`f(model, ids, pixels, length)`: logits (n, vocab) of one prompt `ids` (n tokens) by a
  full forward, no cache, over `ids` right-padded (masked) to `length`. A causal model's logits
  at the real positions cannot see the padding, and one compiled program serves every prefix up
  to `length`. The batch paths under test left-pad and use the KV cache (generation) or batch
  rows (scoring); test_choose_letters keeps an unpadded eager reference."""
  import jax
  from flax import nnx

  forward = nnx.jit(
    lambda m, i, a, p: m(input_ids=i, attention_mask=a, pixel_values_videos=p).logits
  )

  def logits(model, ids, pixels, length):
    n = len(ids)
    x = np.full((1, length), model.config.text_config.pad_token_id or 0, np.int32)
    x[0, :n] = ids
    mask = np.zeros_like(x)
    mask[0, :n] = 1
    return np.asarray(jax.device_get(forward(model, x, mask, pixels)))[0, :n]

  return logits


def _bucket(n: int) -> int:
  return -(-n // 64) * 64


def _greedy_reference(padded_logits, model, tok, record, mode, d, max_new_tokens):
  """Greedy decoding by hand: one full forward (no cache, no batch, no left padding) per new
  token."""
  cfg = model.config
  ids = student_eval.prompt_ids(tok, record, mode, cfg.video_tokens(4))
  pixels = student_eval._pixels(
    [record],
    cfg.vision_config.image_size,
    video_root=str(d / "videos"),
    video_ext=".mp4",
    num_frames=4,
    decode_size=None,
    frames_fn=None,
    resize=getattr(cfg, "video_resize", "shortest_edge"),
  )
  new = []
  for _ in range(max_new_tokens):
    logits = padded_logits(model, ids + new, pixels, _bucket(len(ids) + max_new_tokens))
    new.append(int(np.argmax(logits[-1])))
    if new[-1] == cfg.text_config.eos_token_id:
      break
  return tok.decode(new, skip_special_tokens=True).strip(), len(new)


@pytest.mark.slow  # one full forward per token; choose_letters covers the batch path fast
def test_run_student_matches_greedy_decoding_by_hand(world, padded_logits):
  d, records, tok, model = world
  records = records[:2]  # a batch of two prompts of different lengths: left padding is exercised
  for mode in ("answer", "rationale"):
    run = student_eval.run_student(
      model,
      tok,
      records,
      mode=mode,
      video_root=str(d / "videos"),
      num_frames=4,
      batch_size=2,
      max_new_tokens=3,
    )
    refs = [_greedy_reference(padded_logits, model, tok, r, mode, d, 3) for r in records]
    assert run.outputs == [text for text, _ in refs], mode
    assert run.new_tokens == [n for _, n in refs], mode  # EOS counted
    assert run.efficiency.questions == len(records)
    # one batch: its seconds shared equally, together at most the measured run
    assert len(run.seconds) == 2 and run.seconds[0] == run.seconds[1] > 0
    assert sum(run.seconds) <= run.efficiency.seconds


def test_score_is_exact_on_outputs_of_known_correctness(world):
  from aotd_jax.data import conversation

  _, records, _, _ = world
  letter = lambda i: conversation.option_letter(i)
  gold = [r.answer_index for r in records]
  wrong = (gold[1] + 1) % len(records[1].choices)
  # right by letter "(X)", wrong by bare letter, unparsable -> 1 of 3
  outputs = [f"({letter(gold[0])})", letter(wrong), "nonsense"]
  res = student_eval.score(records, outputs)
  assert res["count"] == 3 and res["accuracy"] == pytest.approx(1 / 3)
  types = [student_eval.question_type(r) for r in records]
  expect = {
    t: sum(1 for k, u in enumerate(types) if u == t and k == 0) / types.count(t) for t in set(types)
  }
  assert res["per_type"] == pytest.approx(expect)
  # the right answer's text (no letter) counts too: 2 of 3
  outputs[2] = records[2].choices[gold[2]]
  assert student_eval.score(records, outputs)["accuracy"] == pytest.approx(2 / 3)


def test_prompt_carries_one_video_token_per_feature(world):
  _, records, tok, model = world
  n = 4 * model.config.video_tokens_per_frame()
  ids = student_eval.prompt_ids(tok, records[0], "answer", n)
  assert ids.count(tok.convert_tokens_to_ids("<video>")) == n
  with pytest.raises(ValueError, match="mode"):
    student_eval.prompt_ids(tok, records[0], "explain", n)


def evaluate_export(model, tok, d, tmp_path) -> dict:
  """Exports `model` + `tok` to HF format and runs `launch.evaluate` on two STAR questions of
  the world in `d`; returns the written eval JSON (the exit status must be 0)."""
  hf.save_pretrained(model, str(tmp_path / "student"))
  tok.save_pretrained(str(tmp_path / "student"))
  out = tmp_path / "eval.json"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.evaluate",
      f"--student={tmp_path / 'student'}",
      "--format=star",
      f"--annotations={d / 'test.json'}",
      f"--video_root={d / 'videos'}",
      "--num_frames=4",
      "--limit=2",
      "--max_new_tokens=4",
      f"--out={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.slow  # a launch.evaluate subprocess
def test_evaluate_cli_on_an_exported_student(world, tmp_path):
  d, records, tok, model = world
  result = evaluate_export(model, tok, d, tmp_path)
  assert result["count"] == 2 and len(result["outputs"]) == 2
  # the CLI's outputs are the library's on the same two questions
  run = student_eval.run_student(
    model, tok, records[:2], video_root=str(d / "videos"), num_frames=4, max_new_tokens=4
  )
  assert [(o["qid"], o["output"], o["new_tokens"]) for o in result["outputs"]] == list(
    zip([r.qid for r in records[:2]], run.outputs, run.new_tokens)
  )
  # the paper's efficiency from those rows: mean seconds and new tokens per question
  eff = result["efficiency"]
  assert eff["questions"] == 2 and eff["new_tokens"] == sum(run.new_tokens)
  assert eff["seconds_per_question"] == pytest.approx(
    sum(o["seconds"] for o in result["outputs"]) / 2
  )
  assert eff["memory_kind"] == "host_rss" and eff["peak_mb"] > 0


# -- closed-set multiple choice ------------------------------------------------------------------


def _one_prompt(tok, model, record, reply=None):
  """Unpadded ids of one record's answer prompt (+ reply), built without the batch code."""
  from aotd_jax.data import conversation, video_processing

  n = 4 * model.config.video_tokens_per_frame()
  text = conversation.build_prompt(
    tok, conversation.qa_user_text(record.question, record.choices), media="video"
  )
  text = video_processing.expand_media_tokens(text, video_tokens=[n])
  if reply is not None:
    text = f"{text} {reply}"
  return np.asarray([tok(text, add_special_tokens=True)["input_ids"]], np.int32)


def _frames(d, record):
  from aotd_jax.data import video, video_processing

  f = video.read_frames(
    str(d / "videos" / f"{record.video_id}.mp4"), 4, start=record.start, end=record.end, size=32
  )
  return video_processing.preprocess_video(f, shortest_edge=32, crop_size=32)[None]


def _logp(model, ids, pixels):
  import jax

  out = model(input_ids=ids, attention_mask=np.ones_like(ids), pixel_values_videos=pixels)
  return np.asarray(jax.nn.log_softmax(out.logits, axis=-1))[0]


def test_choose_letters_matches_one_prompt_at_a_time(world):
  d, records, tok, model = world
  records = records[:2]
  run = student_eval.choose_letters(
    model, tok, records, video_root=str(d / "videos"), num_frames=4, decode_size=32, batch_size=2
  )
  assert len(run.predictions) == len(records) == len(run.outputs)
  for r, pred, lp, out in zip(records, run.predictions, run.logprobs, run.outputs):
    # reference: the unbatched prompt + " (" and the four letter tokens' logits there
    from aotd_jax.data import conversation

    letters = [
      tok(f"x ({conversation.option_letter(i)})", add_special_tokens=False)["input_ids"][-2]
      for i in range(len(r.choices))
    ]
    ids = np.concatenate(
      [_one_prompt(tok, model, r), [[tok(" (", add_special_tokens=False)["input_ids"][-1]]]], 1
    )
    ref = _logp(model, ids.astype(np.int32), _frames(d, r))[-1, letters]
    ref = ref - np.logaddexp.reduce(ref)
    np.testing.assert_allclose(lp, ref, atol=2e-3)  # batch of right-padded rows vs one row
    assert pred == int(np.argmax(ref)) and out == f"({conversation.option_letter(pred)})"
  assert student_eval.score(records, run.outputs)["count"] == len(records)


@pytest.mark.slow  # a reference forward per option
def test_choose_by_likelihood_sums_each_reply(world, padded_logits):
  import jax

  from aotd_jax.data import conversation

  d, records, tok, model = world
  r = records[0]
  head = _one_prompt(tok, model, r).shape[1]
  full, text = [], []  # reference sums, one unbatched forward per option
  options = [
    _one_prompt(tok, model, r, conversation.answer_target(r.choices, r.choices[k], k))
    for k in range(len(r.choices))
  ]
  length = _bucket(max(ids.shape[1] for ids in options))
  for k, ids in enumerate(options):
    logits = padded_logits(model, list(ids[0]), _frames(d, r), length)
    lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    after_letter = _one_prompt(tok, model, r, f"({conversation.option_letter(k)})").shape[1]
    full.append(sum(lp[t - 1, ids[0, t]] for t in range(head, ids.shape[1])))
    text.append(sum(lp[t - 1, ids[0, t]] for t in range(after_letter, ids.shape[1])))
  for text_only, ref in ((False, full), (True, text)):
    run = student_eval.choose_by_likelihood(
      model,
      tok,
      [r],
      video_root=str(d / "videos"),
      num_frames=4,
      decode_size=32,
      text_only=text_only,
    )
    np.testing.assert_allclose(run.logprobs[0], ref, rtol=1e-4, atol=2e-3)
    assert run.predictions == [int(np.argmax(ref))]


def test_closed_set_refuses_open_ended_and_merged_letters(world):
  import dataclasses

  d, records, tok, model = world
  open_ended = dataclasses.replace(records[0], choices=[], answer_index=None, qid="oe_1")
  for fn in (student_eval.choose_letters, student_eval.choose_by_likelihood):
    with pytest.raises(ValueError, match="question oe_1: closed-set scoring needs choices"):
      fn(model, tok, [open_ended], video_root=str(d / "videos"), num_frames=4)

  class OneTokenPerWord:  # "(A)" and "(B)" both become the unknown id: no letter to compare
    def __call__(self, text, add_special_tokens=True):
      return {"input_ids": [hash(w) % 97 if "(" not in w else 3 for w in text.split(" ")]}

  with pytest.raises(ValueError, match="do not tokenize to distinct single tokens"):
    student_eval.letter_token_ids(OneTokenPerWord(), "USER: which? ASSISTANT:", 4)
