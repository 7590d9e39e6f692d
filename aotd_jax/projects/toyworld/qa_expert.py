"""The toy world's action / QA expert: a tiny LLaVA-NeXT-Video trained on the train split.

    path = train_qa_expert(world_dir, tokenizer_dir, out_dir, steps=1500,
                           vision_init="W/experts/encoder")
    config = experts.default_config()
    config.action_recognizer = dict(kind="llava", path=path)
    config.video_qa = dict(kind="llava", path=path)

As real LLaVA keeps its pretrained CLIP frozen, the vision tower here is the toy world's
frame encoder (`object_encoder.train_object_encoder`: a tiny CLIP tower that tells which
object is where), frozen; its last layer's patch tokens are what the LM reads
(`vision_feature_layer=-1`). The projector and the LM learn the prompts
`experts.backends.llava.LlavaVideoQA` sends (the student's prompt form,
`conversation.build_prompt`):

- toy-world questions on their windows (`conversation.qa_user_text`), from the train split
  and from `lm_clips` more clips rendered from the train split with questions generated as
  the world generates them (`questions.make_questions`; never a val / test clip);
- action recognition as `Query_Actions` asks it: "What actions happen in the video?" with
  candidate actions, on an event's own frames (candidates in the annotation's words, "red
  circle jumps") and on the frames after / before an event (candidates in the questions'
  words, "The red circle jumped.");
- "What is the red circle doing?" (open-ended) -> "jumps" on the object's event windows.

Answers are the option's text: the llava backend scores each candidate's likelihood (closed
set). With the tower frozen, its features are computed once per frame and the projector + LM
train on them (`aotd_jax.train.frozen_vision`: same logits as the full model) with the
distillation `Trainer` (answers in `label_mask`). Val scores (`aotd_jax.eval.subtasks`
through the llava backend) go to `out_dir/scores.json` and the `DONE` marker.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.projects.toyworld import vision_experts as ve
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.language_experts import (
  LanguageExpertError,
  check_positive,
  is_done,
  read_split,
)
from aotd_jax.projects.toyworld.oracle import PLUGIN
from aotd_jax.projects.toyworld.program_generator import (
  collate,
  fit,
  load_tokenizer,
  one_device_trainer,
  resolve_size,
  save_expert,
)
from aotd_jax.projects.toyworld.questions import event_text, make_questions
from aotd_jax.projects.toyworld.render import PRESENT
from aotd_jax.projects.toyworld.tiny_models import TINY_LLAVA

DEFAULT_SIZE = dict(
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  pool_stride=2,
  num_frames=8,
  lm_clips=300,
  qa_permutations=2,
  batch_size=16,
  learning_rate=3e-3,
  eval_videos=10,
  # the frame encoder trained here when `vision_init` is None
  vision_hidden_size=64,
  vision_layers=2,
  image_size=64,
  patch_size=8,
  encoder_steps=1000,
  encoder_clips=600,
)
VISION_FEATURE_LAYER = -1  # the object encoder trains its last layer's patch tokens
# Multiple-choice targets: "letter" -> "(B)", "text" -> the option's text, "letter_text" ->
# "(B) text" (the distillation format).
# Text: the llava backend scores each choice's text by likelihood (closed set), so the
# reply carries what the video shows ("The red circle."), not a letter bound to a list.
ANSWER_STYLE = "text"  # the toy world's questions
ACTION_STYLE = "text"  # "What actions happen in the video?" (snapped to a candidate)


# The QA expert trains the projector and the language model: the vision tower stays frozen.
OPTIONS = ComputeOptions(freeze_vision_tower=True)


def model_config(tokenizer, size, vision: dict | None = None) -> Any:
  """The tiny LLaVA-NeXT-Video config (`TINY_LLAVA` resized; vocabulary = the tokenizer's;
  vision tower read at its last layer; built with `OPTIONS`, which freeze it).

  vision: the HF `vision_config` (e.g. a pretrained CLIP's); default: `TINY_LLAVA`'s resized
  by `size` (vision_hidden_size, vision_layers, image_size, patch_size).
  """
  from aotd_jax.hf import llava_next_video as adapter

  text = dict(
    TINY_LLAVA["text_config"],
    vocab_size=len(tokenizer),
    hidden_size=size["hidden_size"],
    intermediate_size=size["intermediate_size"],
    num_hidden_layers=size["num_hidden_layers"],
    num_attention_heads=size["num_attention_heads"],
    num_key_value_heads=size["num_key_value_heads"],
    max_position_embeddings=512,
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
    pad_token_id=tokenizer.pad_token_id,
  )
  vd = size["vision_hidden_size"]
  if vision is None:
    vision = dict(
      TINY_LLAVA["vision_config"],
      hidden_size=vd,
      intermediate_size=2 * vd,
      num_hidden_layers=size["vision_layers"],
      image_size=size["image_size"],
      patch_size=size["patch_size"],
      projection_dim=vd,
    )
  hf = dict(
    TINY_LLAVA,
    text_config=text,
    vision_config=vision,
    spatial_pool_stride=size["pool_stride"],
    vision_feature_layer=VISION_FEATURE_LAYER,
    video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
  )
  return adapter.config_from_hf(hf)


# -- examples ------------------------------------------------------------------------------------


def _sentence(text: str) -> str:
  return text[0].upper() + text[1:] + "."


def mc_target(choices: Sequence[str], index: int, style: str | None = None) -> str:
  """The trained reply to a multiple-choice prompt (`style`, default `ANSWER_STYLE`); the
  llava backend maps each form back to the choice (`snap_to_choice`, `filters.choice_index`)."""
  from aotd_jax.data import conversation

  style = ANSWER_STYLE if style is None else style
  if style == "text":
    return choices[index]
  if style == "letter":
    return f"({conversation.option_letter(index)})"
  return conversation.answer_target(choices, choices[index], index)


def _mc(question: str, candidates: Sequence[str], answer: str, rng) -> tuple[str, str]:
  """(user text, target) of a multiple-choice prompt, the answer at a random letter."""
  from aotd_jax.data import conversation

  cands = [c for c in dict.fromkeys(candidates) if c != answer][:3]
  cands.insert(int(rng.integers(len(cands) + 1)), answer)
  user = conversation.format_question(question, cands) + "\n" + conversation.ANSWER_SUFFIX
  return user, mc_target(cands, cands.index(answer), ACTION_STYLE)


def _answer_index(qa) -> int:
  if qa.answer_index is not None:
    return int(qa.answer_index)
  if qa.answer in qa.choices:
    return list(qa.choices).index(qa.answer)
  raise LanguageExpertError(f"question {qa.qid}: answer {qa.answer!r} is not one of its choices")


def clip_examples(
  truth,
  records: Sequence,
  rng: np.random.Generator,
  vocabulary: Sequence[str],
  *,
  qa_permutations: int = 1,
) -> list[tuple[int, int, str, str]]:
  """(first frame, end frame, user text, target) of every training prompt of one clip.

  `vocabulary`: action phrases in the annotation's words ("red circle jumps") of the split,
  the distractor pool of the event-window prompts. Each multiple-choice question appears
  `qa_permutations` times: as annotated, then with its choices shuffled (balanced letters).
  """
  from aotd_jax.data import conversation
  from experts.backends.llava import ACTIONS_PROMPT

  out = []
  for qa in records:
    lo, hi = int(round(qa.start * truth.fps)), int(round(qa.end * truth.fps))
    if not qa.choices:
      out.append((lo, hi, conversation.qa_user_text(qa.question, qa.choices), qa.answer))
      continue
    choices = list(qa.choices)
    for k in range(qa_permutations):
      order = range(len(choices)) if k == 0 else rng.permutation(len(choices))
      cands = [choices[int(j)] for j in order]
      index = [int(j) for j in order].index(_answer_index(qa))
      out.append((lo, hi, conversation.qa_user_text(qa.question, cands), mc_target(cands, index)))
  events, last = truth.events, truth.num_frames
  done = {(e["object"], e["action"]) for e in events}
  fake = [
    _sentence(event_text({"object": n, "action": a}))
    for n in truth.names
    for a in ("move", "jump", "spin", "grow")
    if (n, a) not in done and not (a == "spin" and n.endswith("circle"))
  ]
  said = [_sentence(event_text(e)) for e in events]
  for i, e in enumerate(events):
    lo, hi = int(e["start_frame"]), int(e["end_frame"]) + 1
    phrase = event_text(e, "present")[4:]
    running = {
      event_text(x, "present")[4:] for x in events if x["start_frame"] < hi and x["end_frame"] >= lo
    }
    pool = [v for v in vocabulary if v not in running]
    pool = [pool[int(j)] for j in rng.permutation(len(pool))]
    out.append((lo, hi, *_mc(ACTIONS_PROMPT, pool, phrase, rng)))
    verb = PRESENT[e["action"]] + (f" the {e['target']}" if e.get("target") else "")
    out.append(
      (lo, hi, f"What is the {e['object']} doing?\n{conversation.OPEN_ENDED_SUFFIX}", verb)
    )
    # Query_Actions after / before an event, as the Sequence programs call it.
    if i + 1 < len(events) and hi < last:
      wrong = said[:i] + [fake[int(j)] for j in rng.permutation(len(fake))]
      out.append((hi, last, *_mc(ACTIONS_PROMPT, wrong, said[i + 1], rng)))
    if i > 0 and lo > 0:
      wrong = said[i + 1 :] + [fake[int(j)] for j in rng.permutation(len(fake))]
      out.append((0, lo, *_mc(ACTIONS_PROMPT, wrong, said[i - 1], rng)))
  return out


def _generated_records(world: dict, truths: Sequence) -> list:
  """Questions for rendered train-split clips, generated as `generate_world` does for its own
  (same question rng seeds: what a larger world's train split would hold)."""
  from aotd_jax.data import annotations

  start, out = len(world["splits"]["train"]), []
  for i, truth in enumerate(truths):
    qrng = np.random.default_rng([int(world["seed"]), toyworld.SPLITS.index("train"), start + i, 1])
    out += make_questions(truth, qrng, list(toyworld.ALL_OBJECT_NAMES), per_type=1)
  if not out:
    return []
  with tempfile.TemporaryDirectory() as tmp:  # read back with the STAR reader, as real data
    path = os.path.join(tmp, "generated.json")
    with open(path, "w") as f:
      json.dump(out, f)
    return list(annotations.read("star", path))


def video_prompt_ids(
  tokenizer, config, user: str, target: str, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, label_mask) of one prompt in the student's form with its `<video>` expanded
  to `num_frames * tokens_per_frame` tokens, the reply (`" " + target + </s>`) labelled."""
  from aotd_jax.data import conversation

  per_video = num_frames * config.video_tokens_per_frame()
  prompt = []
  for t in tokenizer(conversation.build_prompt(tokenizer, user, media="video"))["input_ids"]:
    prompt.extend([t] * per_video if t == config.video_token_index else [t])
  reply = list(tokenizer(" " + target, add_special_tokens=False)["input_ids"])
  reply.append(tokenizer.eos_token_id)
  return (
    np.asarray(prompt + reply, np.int32),
    np.asarray([0] * len(prompt) + [1] * len(reply), np.int32),
  )


def training_clips(world_dir: str, lm_clips: int) -> tuple[list, list, list]:
  """(ClipTruth list, frames list, question records) of the train split plus `lm_clips`
  clips rendered from it (`vision_experts.extra_train_clips`) with generated questions."""
  truths, frames, world = ve._world(world_dir)
  records = list(read_split(world_dir, "train"))
  if lm_clips:
    more_truths, more_frames = ve.extra_train_clips(world, lm_clips)
    truths, frames = truths + more_truths, frames + more_frames
    records += _generated_records(world, more_truths)
  return truths, frames, records


def build_examples(
  truths: Sequence,
  records: Sequence,
  tokenizer,
  config,
  *,
  num_frames: int,
  seed: int,
  qa_permutations: int = 1,
) -> list[dict]:
  """Tokenised examples, each naming its clip (index into `truths`) and the `num_frames`
  frame indices it reads: {"input_ids", "label_mask", "clip", "frames"}."""
  from aotd_jax.data.video_processing import sample_frame_indices

  rng = np.random.default_rng(seed)
  by_video: dict[str, list] = {}
  for qa in records:
    by_video.setdefault(qa.video_id, []).append(qa)
  vocabulary = sorted({event_text(e, "present")[4:] for t in truths for e in t.events})
  examples = []
  for c, truth in enumerate(truths):
    for lo, hi, user, target in clip_examples(
      truth, by_video.get(truth.video_id, []), rng, vocabulary, qa_permutations=qa_permutations
    ):
      ids, label = video_prompt_ids(tokenizer, config, user, target, num_frames)
      idx = sample_frame_indices(truth.num_frames, num_frames, lo, max(hi, lo + 1))
      examples.append(
        {"input_ids": ids, "label_mask": label, "clip": c, "frames": np.asarray(idx, np.int32)}
      )
  if not examples:
    raise LanguageExpertError("QA expert: no training examples (no train clips or questions)")
  return examples


def clip_features(model, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Per clip, the frozen tower's pooled features of every frame: (T, tokens, D_vision)."""
  from aotd_jax.data.video_processing import preprocess_video
  from aotd_jax.train.frozen_vision import tower_features

  size = model.config.vision_config.image_size
  pixels = np.concatenate([preprocess_video(f, shortest_edge=size, crop_size=size) for f in frames])
  feats = tower_features(model, pixels)
  bounds = np.cumsum([0] + [len(f) for f in frames])
  return [feats[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def feature_collate(features: Sequence[np.ndarray]):
  """collate_fn for `fit`: right-padded ids and masks plus each example's cached
  `video_features` (B, frames * tokens, D_vision)."""

  def collate_fn(examples: Sequence[dict], pad_id: int) -> dict[str, np.ndarray]:
    batch = collate(examples, pad_id)
    batch["video_features"] = np.stack(
      [
        features[e["clip"]][e["frames"]].reshape(-1, features[e["clip"]].shape[-1])
        for e in examples
      ]
    )
    return batch

  return collate_fn


# -- vision tower -------------------------------------------------------------------------------


def pretrained_vision(vision_init) -> tuple[dict, Any, dict]:
  """(HF vision_config dict, `CLIPVisionTransformer`, info) of a CLIP directory (HF layout:
  `object_encoder.train_object_encoder`'s output, a `CLIPModel` or `CLIPVisionModel`);
  `LanguageExpertError` naming `vision_init` when it is none."""
  from aotd_jax.train.build import load_vision_init

  try:
    hf_vision, tower = load_vision_init(str(vision_init))
  except ValueError as e:
    raise LanguageExpertError(str(e)) from None
  return hf_vision, tower, {"vision_init": str(vision_init)}


def standardize_projector_on(model, features: np.ndarray) -> dict:
  """Folds the per-channel mean / std of the frozen tower's pooled features (`features`,
  (..., D_vision)) into `multi_modal_projector.linear_1` (a data-dependent init).

  A CLIP tower's patch features are dominated by per-channel constants: projected as
  initialised, every video token is nearly the same large vector and the LM never reads
  the video. Returns the feature statistics.
  """
  import jax.numpy as jnp

  f = np.asarray(features, np.float64).reshape(-1, np.shape(features)[-1])
  mu, sd = f.mean(0), f.std(0)
  ratio = float(np.mean(sd) / max(float(f.std()), 1e-12))
  sd = np.maximum(sd, 1e-4 * max(float(np.mean(sd)), 1e-12))
  lin = model.multi_modal_projector.linear_1
  w = np.asarray(lin.kernel[...], np.float64)
  lin.kernel[...] = jnp.asarray(w / sd[:, None], lin.kernel[...].dtype)
  lin.bias[...] = jnp.asarray(
    np.asarray(lin.bias[...], np.float64) - (mu / sd) @ w, lin.bias[...].dtype
  )
  return {"feature_frames": int(len(f)), "feature_std_ratio": ratio}


def standardize_projector(model, pixels: np.ndarray, *, batch: int = 64) -> dict:
  """`standardize_projector_on` the frozen tower's features of `pixels` (N, 3, S, S)."""
  from aotd_jax.train.frozen_vision import tower_features

  return standardize_projector_on(model, tower_features(model, pixels, batch=batch))


# -- scores --------------------------------------------------------------------------------------


def score_qa_expert(world_dir: str, backend, *, split: str = "val", max_videos: int = 10) -> dict:
  """QA accuracy and action top-1 of a `VideoQA` / `ActionRecognizer` backend on `split`
  (the sub-task harness' own scorers; chance: 1/4 for both)."""
  from aotd_jax.eval import subtasks
  from experts.subtasks import load_data

  data = load_data(
    {"kind": "toyworld", "path": str(world_dir), "split": split, "max_videos": max_videos},
    plugins=[PLUGIN],
  )
  qa = subtasks.score_qa(backend, data)
  act = subtasks.score_action_recognizer(backend, data, num_action_choices=4)
  return {
    "split": split,
    "qa_accuracy": qa["qa_accuracy"],
    "qa_n": qa["n"],
    "action_top1": act["action_top1"],
    "action_n": act["n"],
    "chance": 0.25,
  }


def train_qa_expert(
  world_dir: str | os.PathLike,
  tokenizer_dir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  steps: int,
  seed: int = 0,
  evaluate: bool = True,
  vision_init: str | os.PathLike | None = None,
  **size,
) -> str:
  """Trains the tiny LLaVA-NeXT-Video action / QA expert and saves it in `out_dir` (cached).

  Args:
    world_dir: a toy world; tokenizer_dir: `build_tokenizer`'s output (saved beside it).
    out_dir: the HF directory `experts` binds with `kind="llava", path=out_dir`.
    steps: optimiser steps of the projector + LM; seed: init, example and data-order seed.
    evaluate: score on the val split (`score_qa_expert`) into `scores.json`.
    vision_init: the frozen vision tower, a CLIP directory (HF layout), e.g.
      `object_encoder.train_object_encoder`'s output (the demo's `experts/encoder`); its
      sizes win over `size`'s vision ones. None: such an encoder is trained first into
      `out_dir/encoder` (`encoder_steps` steps on the train clips + `encoder_clips` rendered
      ones; sizes `vision_hidden_size, vision_layers, image_size, patch_size`).
    **size: overrides of `DEFAULT_SIZE` (hidden_size, num_frames, lm_clips, ...).

  Returns:
    `out_dir`.
  """
  from flax import nnx

  from aotd_jax.models.llava_next_video import LlavaNextVideoForConditionalGeneration
  from aotd_jax.train.frozen_vision import CachedVisionLM

  out_dir, world_dir = str(out_dir), str(world_dir)
  if is_done(out_dir):
    return out_dir
  steps = check_positive("steps", steps)
  size = resolve_size(size, DEFAULT_SIZE, "train_qa_expert")
  t0 = time.perf_counter()
  tokenizer = load_tokenizer(tokenizer_dir)
  if vision_init is None:
    from aotd_jax.projects.toyworld import object_encoder

    vd = size["vision_hidden_size"]
    vision_init = object_encoder.train_object_encoder(
      world_dir,
      os.path.join(out_dir, "encoder"),
      steps=size["encoder_steps"],
      extra_clips=size["encoder_clips"],
      seed=seed,
      hidden_size=vd,
      intermediate_size=2 * vd,
      num_hidden_layers=size["vision_layers"],
      num_attention_heads=max(1, vd // 16),
      image_size=size["image_size"],
      patch_size=size["patch_size"],
      projection_dim=vd,
    )
  hf_vision, tower, vision_info = pretrained_vision(vision_init)
  config = model_config(tokenizer, size, hf_vision)
  model = LlavaNextVideoForConditionalGeneration(config, options=OPTIONS, rngs=nnx.Rngs(seed))
  nnx.update(model.vision_tower.vision_model, nnx.state(tower))

  truths, frames, records = training_clips(world_dir, size["lm_clips"])
  examples = build_examples(
    truths,
    records,
    tokenizer,
    config,
    num_frames=size["num_frames"],
    seed=seed,
    qa_permutations=size["qa_permutations"],
  )
  t_features = time.perf_counter()
  features = clip_features(model, frames)
  del frames
  stats = standardize_projector_on(model, np.concatenate(features[:16]))
  feature_s = time.perf_counter() - t_features
  lm = CachedVisionLM(model)
  trainer = one_device_trainer(lm, steps, size["learning_rate"])
  losses = fit(
    trainer,
    examples,
    steps=steps,
    batch_size=size["batch_size"],
    seed=seed,
    pad_id=tokenizer.pad_token_id,
    collate_fn=feature_collate(features),
  )
  trainer.sync_model()  # `lm` shares the projector and LM with `model`
  train_s = time.perf_counter() - t0

  info = {
    "steps": steps,
    "seed": seed,
    "size": size,
    "train_clips": len(truths),
    "train_questions": len(records),
    "train_examples": len(examples),
    "train_seconds": round(train_s, 2),
    "feature_seconds": round(feature_s, 2),
    "answer_style": ANSWER_STYLE,
    "action_style": ACTION_STYLE,
    **vision_info,
    **stats,
  }

  def score(model):
    from experts.backends.llava import LlavaVideoQA

    backend = LlavaVideoQA(model, tokenizer, name="llava:eval", num_frames=size["num_frames"])
    return score_qa_expert(world_dir, backend, max_videos=size["eval_videos"])

  return save_expert(model, tokenizer, out_dir, info, losses, score if evaluate else None)
