"""The toy world's tokenizer and tiny language experts (aotd_jax.projects.toyworld.language_experts)."""

import json
import os

import numpy as np
import pytest

from aotd_jax.projects.toyworld import language_experts as le

pytestmark = pytest.mark.slow  # module fixtures train the toy program generator and QA expert


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  from aotd_jax.projects.toyworld import world as toyworld

  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=0, num_train=6, num_val=2, num_test=1)
  return str(out)


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory):
  return le.build_tokenizer(world, tmp_path_factory.mktemp("tok"))


def test_tokenizer_round_trips_programs_and_fixes_special_ids(world, tokenizer_dir):
  from aotd_jax.hf.api import load_tokenizer

  tok = load_tokenizer(tokenizer_dir)
  assert len(tok) <= le.MAX_VOCAB
  assert {t: tok.convert_tokens_to_ids(t) for t in le.SPECIAL_IDS} == le.SPECIAL_IDS
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
  records = le.read_split(world, "val") + le.read_split(world, "test")
  assert records
  for qa in records:  # unseen questions too: byte-level BPE keeps every character
    for text in (
      le.program_prompt(qa.question, qa.choices) + le.program_body(le.gold_program(qa)),
      qa.question + " " + " ".join(qa.choices),
    ):
      ids = tok(text, add_special_tokens=False)["input_ids"]
      assert tok.unk_token_id not in ids
      assert tok.decode(ids) == text
  ids = tok("<video>\nWhat is the red circle doing?")["input_ids"]
  assert ids[:2] == [1, 4]


def test_tokenizer_is_cached_and_checks_its_arguments(world, tokenizer_dir, tmp_path):
  stamp = os.path.getmtime(os.path.join(tokenizer_dir, "tokenizer.json"))
  assert le.build_tokenizer(world, tokenizer_dir) == tokenizer_dir
  assert os.path.getmtime(os.path.join(tokenizer_dir, "tokenizer.json")) == stamp
  assert le.read_done(tokenizer_dir)["vocab_size"] <= 512
  with pytest.raises(ValueError, match="vocab_size=1024"):
    le.build_tokenizer(world, tmp_path / "t", vocab_size=1024)
  with pytest.raises(le.LanguageExpertError, match="no train.json"):
    le.build_tokenizer(tmp_path / "nowhere", tmp_path / "t")


# -- program generator ----------------------------------------------------------------------------

TINY = dict(
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=1,
  num_attention_heads=2,
  num_key_value_heads=1,
  batch_size=4,
  max_new_tokens=8,
  eval_questions=2,
)


@pytest.fixture(scope="module")
def program_dir(world, tokenizer_dir, tmp_path_factory):
  from aotd_jax.projects.toyworld import program_generator as pg

  return pg.train_program_generator(
    world, tokenizer_dir, tmp_path_factory.mktemp("prog"), steps=12, **TINY
  )


def test_program_generator_training_lowers_the_loss(world, program_dir):
  from aotd_jax.agent.llm import LocalLlama
  from aotd_jax.projects.toyworld import program_generator as pg

  info = le.read_done(program_dir)
  assert info["steps"] == 12 and info["train_examples"] > 0
  assert info["final_loss"] < info["first_loss"] - 0.5
  # the recorded val figures are the scorer's (checked on known programs below) on the saved
  # model, served as training served it (batch of 16, TINY's 8 new tokens)
  again = pg.score_program_generator(
    world,
    LocalLlama(program_dir, max_batch=16),
    max_questions=2,
    max_new_tokens=TINY["max_new_tokens"],
  )
  assert info["val"] == again and again["questions"] == 2 and again["chance"] == 0.25


def test_program_generator_is_served_by_local_llama(world, program_dir):
  from aotd_jax.agent import programs
  from aotd_jax.agent.llm import LocalLlama

  llm = LocalLlama(program_dir, max_batch=2)
  qa = le.read_split(world, "val")[0]
  prompt = le.program_prompt(qa.question, qa.choices)
  reply = llm.complete([prompt], max_new_tokens=6)[0]
  # independent reference: transformers' greedy generate on the saved directory
  import torch
  import transformers

  ref = transformers.LlamaForCausalLM.from_pretrained(program_dir).eval()
  ids = torch.tensor([llm.encode(prompt)])
  with torch.no_grad():
    out = ref.generate(
      ids,
      attention_mask=torch.ones_like(ids),
      max_new_tokens=6,
      do_sample=False,
      eos_token_id=llm.eos_token_id,
      pad_token_id=llm.pad_token_id,
    )
  want = llm.tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
  assert reply == want
  assert (
    programs.parse_program(reply, prefix=programs.PROGRAM_SIGNATURE + "\n").error != "empty reply"
  )
  with open(os.path.join(program_dir, "config.json")) as f:
    config = json.load(f)
  assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] <= 512


def test_program_generator_is_cached_and_checks_its_arguments(
  world, tokenizer_dir, program_dir, tmp_path
):
  from aotd_jax.projects.toyworld import program_generator as pg

  stamp = os.path.getmtime(os.path.join(program_dir, "model.safetensors"))
  assert le.train_program_generator(world, tokenizer_dir, program_dir, steps=999) == program_dir
  assert os.path.getmtime(os.path.join(program_dir, "model.safetensors")) == stamp
  with pytest.raises(ValueError, match="steps=0"):
    pg.train_program_generator(world, tokenizer_dir, tmp_path / "p", steps=0)
  with pytest.raises(ValueError, match="hidden_sise"):
    pg.train_program_generator(world, tokenizer_dir, tmp_path / "p", steps=1, hidden_sise=8)
  with pytest.raises(le.LanguageExpertError, match="no tokenizer.json"):
    pg.train_program_generator(world, tmp_path, tmp_path / "p", steps=1)
  assert not os.path.exists(tmp_path / "p" / le.DONE)


class _Scripted:
  """A fake program LLM: replies with scripted function bodies, in prompt order (two
  questions can share a prompt: the choices are not in it)."""

  def __init__(self, prompts, replies):
    self.prompts, self.replies = prompts, replies

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    assert list(prompts) == self.prompts
    return list(self.replies)


def test_score_program_generator_on_known_programs(world):
  from aotd_jax.projects.toyworld import program_generator as pg

  records = le.read_split(world, "val")[:4]
  assert len(records) == 4 and all(len(qa.choices) == 4 for qa in records)
  right = lambda qa: f"    return possible_answers[{qa.choices.index(qa.answer)}]\n"
  wrong = lambda qa: f"    return possible_answers[{(qa.choices.index(qa.answer) + 1) % 4}]\n"
  # q0: a hand-written right program; q1: a wrong one; q2: garbage; q3: the gold body
  # verbatim (the only exact match; whether the gold program answers right is read off its run)
  replies = [
    right(records[0]),
    wrong(records[1]),
    "x = (",
    le.program_body(le.gold_program(records[3])),
  ]
  prompts = [le.program_prompt(qa.question, qa.choices) for qa in records]
  got = pg.score_program_generator(world, _Scripted(prompts, replies), max_questions=4)
  gold_run = le.run_programs(world, [(records[3], le.gold_program(records[3]))])[0]
  gold_right = gold_run.ok and gold_run.value == records[3].answer
  assert got == {
    "split": "val",
    "questions": 4,
    "parsed": 0.75,
    "exact_match": 0.25,
    "executed_ok": 0.75,
    "answer_accuracy": (1 + gold_right) / 4,
    "chance": 0.25,
  }


# -- action / QA expert ---------------------------------------------------------------------------

QA_TINY = dict(
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=1,
  num_attention_heads=2,
  num_key_value_heads=1,
  vision_hidden_size=16,
  vision_layers=1,
  image_size=32,
  batch_size=4,
  learning_rate=1e-2,
  eval_videos=1,
  encoder_steps=2,
  encoder_clips=1,
  lm_clips=1,
)


@pytest.fixture(scope="module")
def qa_dir(world, tokenizer_dir, tmp_path_factory):
  from aotd_jax.projects.toyworld import qa_expert as qe

  return qe.train_qa_expert(
    world, tokenizer_dir, tmp_path_factory.mktemp("qa"), steps=20, evaluate=False, **QA_TINY
  )


def test_qa_expert_examples_cover_questions_and_actions(world, tokenizer_dir):
  from aotd_jax.projects.toyworld import world as toyworld
  from aotd_jax.projects.toyworld import qa_expert as qe

  truth = toyworld.load_ground_truth(world)["toy0_train_00000"]
  records = [r for r in le.read_split(world, "train") if r.video_id == truth.video_id]
  rows = qe.clip_examples(
    truth, records, np.random.default_rng(0), ["green square jumps"], qa_permutations=3
  )
  users = [u for _, _, u, _ in rows]
  assert sum(u.startswith(records[0].question + "\n") for u in users) == 3
  assert any(u.startswith("What actions happen in the video?\n(A)") for u in users)
  assert any(
    u.startswith("What is the ")
    and t.split()[0] in ("moves", "jumps", "spins", "grows", "appears", "disappears", "touches")
    for _, _, u, t in rows
  )
  # the llava backend scores each choice's text (closed set): targets are option texts
  assert (qe.ANSWER_STYLE, qe.ACTION_STYLE) == ("text", "text")
  for lo, hi, user, target in rows:
    assert 0 <= lo < hi <= truth.num_frames
    if "(A)" in user:  # the text of one of its options
      assert f") {target}\n" in user + "\n"
  for qa in records:  # every copy of a question answers with its answer's text
    copies = [(u, t) for _, _, u, t in rows if u.startswith(qa.question + "\n")]
    assert copies and all(t == qa.answer for _, t in copies)
    assert len({u for u, _ in copies}) > 1  # shuffled choices


def test_qa_expert_mc_target_styles(monkeypatch):
  from aotd_jax.projects.toyworld import qa_expert as qe
  from experts.tools import snap_to_choice

  choices = ["red circle jumps", "blue square moves", "green triangle spins"]
  for style, want in [
    ("letter", "(B)"),
    ("text", "blue square moves"),
    ("letter_text", "(B) blue square moves"),
  ]:
    monkeypatch.setattr(qe, "ANSWER_STYLE", style)
    assert qe.mc_target(choices, 1) == want
    assert snap_to_choice(want, choices) == choices[1]


def test_qa_expert_training_lowers_the_loss_and_binds_in_experts(world, qa_dir):
  import experts
  from aotd_jax.projects.toyworld.oracle import PLUGIN

  info = le.read_done(qa_dir)
  assert info["final_loss"] < info["first_loss"] - 0.5 and info["train_examples"] > 10
  config = experts.default_config()
  config.ground_truth.path = world
  config.action_recognizer = {"kind": "llava", "path": qa_dir}
  config.video_qa = {"kind": "llava", "path": qa_dir}
  box = experts.make_toolbox(config, plugins=[PLUGIN])
  assert box.action_recognizer is box.video_qa or box.action_recognizer.model is box.video_qa.model
  qa = le.read_split(world, "val")[0]
  args = le.clip_args(world)(qa)
  cands = ["red circle jumps", "blue square moves", "green triangle spins"]
  got = box.tools()["Query_Actions"](args["video_clip"], possible_actions=cands)
  assert len(got) == 1 and got[0] in cands
  assert box.action_recognizer.recognize(args["video_clip"], None, cands)[0] in cands
  # The `cpu_kernels` option reaches both towers of the loaded model; XLA's ops answer the same.
  assert box.video_qa.model.vision_tower.options.cpu_kernels
  config.video_qa = {"kind": "llava", "path": qa_dir, "cpu_kernels": False}
  off = experts.make_toolbox(config, plugins=[PLUGIN]).video_qa.model
  assert not off.vision_tower.options.cpu_kernels and not off.language_model.options.cpu_kernels
  assert (
    experts.make_toolbox(config, plugins=[PLUGIN]).tools()["Query_Actions"](
      args["video_clip"], possible_actions=cands
    )
    == got
  )


class _Recording:
  """Wraps a QA / action backend and records every call with its reply."""

  def __init__(self, inner):
    self.inner, self.answers, self.recognized = inner, [], []

  def answer(self, clip, question, choices=None):
    pred = self.inner.answer(clip, question, choices)
    self.answers.append((clip.video_id, question, list(choices), pred))
    return pred

  def recognize(self, clip, object_name=None, candidates=None):
    top = self.inner.recognize(clip, object_name, candidates)
    self.recognized.append((clip.video_id, [int(f) for f in clip.frame_ids], list(candidates), top))
    return top


def test_score_qa_expert_reports_accuracy_and_action_top1(world, qa_dir):
  from aotd_jax.projects.toyworld import qa_expert as qe
  from experts.backends import llava
  from aotd_jax.projects.toyworld.oracle import ground_truth

  backend = _Recording(llava.LlavaVideoQA(*llava.load(qa_dir)))
  scores = qe.score_qa_expert(world, backend, max_videos=1)
  # the figures by hand from the recorded replies: every question of the first val video, each
  # answered by an option's text; each action run, right when its top label runs in its frames
  with open(os.path.join(world, "world.json")) as f:
    vid = json.load(f)["splits"]["val"][0]
  val = [qa for qa in le.read_split(world, "val") if qa.video_id == vid]
  assert [a[:3] for a in backend.answers] == [(vid, qa.question, qa.choices) for qa in val]
  qa_right = sum(pred == qa.answer for (*_, pred), qa in zip(backend.answers, val))
  gt = ground_truth(world)
  assert backend.recognized and all(v == vid and len(c) == 4 for v, _, c, _ in backend.recognized)
  act_right = sum(
    bool(top) and any(top[0] in gt.frame(v, f)["actions"] for f in frames)
    for v, frames, _, top in backend.recognized
  )
  assert scores == {
    "split": "val",
    "qa_accuracy": qa_right / len(val),
    "qa_n": len(val),
    "action_top1": act_right / len(backend.recognized),
    "action_n": len(backend.recognized),
    "chance": 0.25,
  }


def test_qa_expert_is_cached_and_checks_its_arguments(world, tokenizer_dir, qa_dir, tmp_path):
  from aotd_jax.projects.toyworld import qa_expert as qe

  stamp = os.path.getmtime(os.path.join(qa_dir, "model.safetensors"))
  assert le.train_qa_expert(world, tokenizer_dir, qa_dir, steps=999) == qa_dir
  assert os.path.getmtime(os.path.join(qa_dir, "model.safetensors")) == stamp
  with pytest.raises(ValueError, match="steps=-1"):
    qe.train_qa_expert(world, tokenizer_dir, tmp_path / "q", steps=-1)
  with pytest.raises(ValueError, match="num_frame"):
    qe.train_qa_expert(world, tokenizer_dir, tmp_path / "q", steps=1, num_frame=4)
  with pytest.raises(le.LanguageExpertError, match="no tokenizer.json"):
    qe.train_qa_expert(world, tmp_path, tmp_path / "q", steps=1)


def _tiny_hf_clip(path, hidden=24):
  import transformers

  cfg = transformers.CLIPConfig(
    text_config=dict(
      vocab_size=16,
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      max_position_embeddings=16,
      bos_token_id=0,
      eos_token_id=1,
      pad_token_id=0,
    ),
    vision_config=dict(
      hidden_size=hidden,
      intermediate_size=2 * hidden,
      num_hidden_layers=1,
      num_attention_heads=2,
      image_size=32,
      patch_size=8,
    ),
    projection_dim=hidden,
  )
  model = transformers.CLIPModel(cfg).eval()
  model.save_pretrained(path)
  return model


def test_qa_expert_loads_a_pretrained_clip_vision_tower(world, tokenizer_dir, tmp_path):
  from aotd_jax import hf
  from aotd_jax.projects.toyworld import qa_expert as qe

  ref = _tiny_hf_clip(tmp_path / "clip")
  out = qe.train_qa_expert(
    world,
    tokenizer_dir,
    tmp_path / "q",
    steps=2,
    evaluate=False,
    vision_init=tmp_path / "clip",
    **QA_TINY,
  )
  info = le.read_done(out)
  assert info["vision_init"] == str(tmp_path / "clip")
  model = hf.from_pretrained(out)
  vc = model.config.vision_config
  assert (vc.hidden_size, vc.num_hidden_layers, vc.image_size) == (24, 1, 32)  # the CLIP's
  tower = model.vision_tower.vision_model  # frozen: still the CLIP's weights after training
  want = ref.vision_model.encoder.layers[0].self_attn.q_proj.weight.detach().numpy()
  got = np.asarray(tower.encoder.layers[0].self_attn.q_proj.kernel[...])
  np.testing.assert_allclose(got, want.T, atol=1e-6)
  want = ref.vision_model.embeddings.patch_embedding.weight.detach().numpy()
  got = np.asarray(tower.embeddings.patch_embedding.kernel[...])
  # torch's conv weight is (out, in, kh, kw); flax's kernel is (kh, kw, in, out)
  np.testing.assert_allclose(got, want.transpose(2, 3, 1, 0), atol=1e-6)


def test_qa_expert_rejects_a_bad_vision_init(world, tokenizer_dir, program_dir, tmp_path):
  from aotd_jax.projects.toyworld import qa_expert as qe

  with pytest.raises(le.LanguageExpertError, match=r"vision_init=.*nowhere.*no config.json"):
    qe.train_qa_expert(
      world, tokenizer_dir, tmp_path / "q", steps=1, vision_init=tmp_path / "nowhere", **QA_TINY
    )
  with pytest.raises(le.LanguageExpertError, match="is not a CLIP model"):
    qe.train_qa_expert(
      world, tokenizer_dir, tmp_path / "q", steps=1, vision_init=program_dir, **QA_TINY
    )
  assert not os.path.exists(tmp_path / "q" / le.DONE)


def test_qa_expert_trains_its_own_frame_encoder_by_default(qa_dir):
  from aotd_jax.projects.toyworld import object_encoder as oe

  info = le.read_done(qa_dir)
  assert info["vision_init"] == os.path.join(qa_dir, "encoder")
  enc = oe.read_done(info["vision_init"])
  assert enc["steps"] == 2 and enc["extra_clips"] == 1 and enc["size"]["image_size"] == 32
  assert info["train_clips"] == 6 + 1  # the world's train clips + lm_clips rendered ones


def test_qa_expert_examples_read_cached_features_of_their_frames(world, tokenizer_dir):
  """Rendered clips come with generated questions; each example's `video_features` are its
  clip's cached tower features at its frames, as many as its <video> tokens."""
  from flax import nnx

  from aotd_jax.projects.toyworld import qa_expert as qe
  from aotd_jax.projects.toyworld.program_generator import load_tokenizer, resolve_size
  from aotd_jax.models.llava_next_video import LlavaNextVideoForConditionalGeneration

  tok = load_tokenizer(tokenizer_dir)
  truths, frames, records = qe.training_clips(world, 2)
  assert len(truths) == 8 and {t.video_id for t in truths[6:]} == {
    "toy0_train_00006",
    "toy0_train_00007",
  }
  generated = [r for r in records if r.video_id in ("toy0_train_00006", "toy0_train_00007")]
  assert generated and all(r.choices and r.answer in r.choices for r in generated)
  size = resolve_size(QA_TINY, qe.DEFAULT_SIZE, "test")
  config = qe.model_config(tok, size, None)
  assert qe.OPTIONS.freeze_vision_tower and config.vision_feature_layer == -1
  model = LlavaNextVideoForConditionalGeneration(config, options=qe.OPTIONS, rngs=nnx.Rngs(0))
  examples = qe.build_examples(truths, records, tok, config, num_frames=8, seed=0)
  features = qe.clip_features(model, frames)
  assert [f.shape[0] for f in features] == [len(f) for f in frames]
  batch = qe.feature_collate(features)(examples[:3], tok.pad_token_id)
  per_frame = config.video_tokens_per_frame()
  assert batch["video_features"].shape == (3, 8 * per_frame, config.vision_config.hidden_size)
  for row, e in zip(batch["input_ids"], examples[:3]):
    assert (row == config.video_token_index).sum() == 8 * per_frame
  e = examples[0]
  np.testing.assert_array_equal(
    batch["video_features"][0].reshape(8, per_frame, -1), features[e["clip"]][e["frames"]]
  )
