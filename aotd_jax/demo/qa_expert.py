"""The toy world's action / QA expert: a tiny LLaVA-NeXT-Video trained on the train split.

    path = train_qa_expert(world_dir, tokenizer_dir, out_dir, steps=150)
    config = experts.default_config()
    config.action_recognizer = dict(kind="llava", path=path)
    config.video_qa = dict(kind="llava", path=path)

It learns the prompts `experts.backends.llava.LlavaVideoQA` sends (the student's prompt form,
`conversation.build_prompt`, answers as "(B) text"):

- toy-world questions of the train split on their windows (`conversation.qa_user_text`);
- action recognition as `Query_Actions` asks it: "What actions happen in the video?" with
  candidate actions, on an event's own frames (candidates in the annotation's words, "red
  circle jumps") and on the frames after / before an event (candidates in the questions'
  words, "The red circle jumped.");
- "What is the red circle doing?" (open-ended) -> "jumps" on the object's event windows.

Training uses the distillation `Trainer` (answers in `label_mask`), vision tower included.
Val scores (`aotd_jax.eval.subtasks.score_qa` / `score_action_recognizer` through the llava
backend) go to `out_dir/scores.json` and the `DONE` marker.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import numpy as np

from aotd_jax.demo.language_experts import LanguageExpertError, is_done, read_split
from aotd_jax.demo.program_generator import (fit, load_tokenizer, one_device_trainer,
                                             resolve_size, save_expert)

DEFAULT_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vision_hidden_size=32,
                    vision_layers=2, image_size=32, patch_size=8, pool_stride=2, num_frames=8,
                    freeze_vision_tower=True, batch_size=8,
                    learning_rate=3e-3, eval_videos=10)


def model_config(tokenizer, size) -> Any:
  """The tiny LLaVA-NeXT-Video config (`TINY_LLAVA` resized; vocabulary = the tokenizer's)."""
  from aotd_jax.hf import llava_next_video as adapter
  from configs.distill.toy import TINY_LLAVA
  text = dict(TINY_LLAVA["text_config"], vocab_size=len(tokenizer),
              hidden_size=size["hidden_size"], intermediate_size=size["intermediate_size"],
              num_hidden_layers=size["num_hidden_layers"],
              num_attention_heads=size["num_attention_heads"],
              num_key_value_heads=size["num_key_value_heads"], max_position_embeddings=512,
              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
  vd = size["vision_hidden_size"]
  vision = dict(TINY_LLAVA["vision_config"], hidden_size=vd, intermediate_size=2 * vd,
                num_hidden_layers=size["vision_layers"], image_size=size["image_size"],
                patch_size=size["patch_size"], projection_dim=vd)
  hf = dict(TINY_LLAVA, text_config=text, vision_config=vision,
            spatial_pool_stride=size["pool_stride"],
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
  return dataclasses.replace(adapter.config_from_hf(hf),
                             freeze_vision_tower=bool(size["freeze_vision_tower"]))


# -- examples ------------------------------------------------------------------------------------

def _sentence(text: str) -> str:
  return text[0].upper() + text[1:] + "."


def _mc(question: str, candidates: Sequence[str], answer: str, rng) -> tuple[str, str]:
  """(user text, target) of a multiple-choice prompt, the answer at a random letter."""
  from aotd_jax.data import conversation
  cands = [c for c in dict.fromkeys(candidates) if c != answer][:3]
  cands.insert(int(rng.integers(len(cands) + 1)), answer)
  user = conversation.format_question(question, cands) + "\n" + conversation.ANSWER_SUFFIX
  return user, conversation.answer_target(cands, answer, cands.index(answer))


def clip_examples(truth, records: Sequence, rng: np.random.Generator,
                  vocabulary: Sequence[str]) -> list[tuple[int, int, str, str]]:
  """(first frame, end frame, user text, target) of every training prompt of one clip.

  `vocabulary`: action phrases in the annotation's words ("red circle jumps") of the split,
  the distractor pool of the event-window prompts.
  """
  from aotd_jax.data import conversation
  from aotd_jax.data.toyworld_questions import event_text
  from aotd_jax.data.toyworld_render import PRESENT
  from experts.backends.llava import ACTIONS_PROMPT
  out = []
  for qa in records:
    lo, hi = int(round(qa.start * truth.fps)), int(round(qa.end * truth.fps))
    out.append((lo, hi, conversation.qa_user_text(qa.question, qa.choices),
                conversation.answer_target(qa.choices, qa.answer, qa.answer_index)))
  events, last = truth.events, truth.num_frames
  done = {(e["object"], e["action"]) for e in events}
  fake = [_sentence(event_text({"object": n, "action": a})) for n in truth.names
          for a in ("move", "jump", "spin", "grow")
          if (n, a) not in done and not (a == "spin" and n.endswith("circle"))]
  said = [_sentence(event_text(e)) for e in events]
  for i, e in enumerate(events):
    lo, hi = int(e["start_frame"]), int(e["end_frame"]) + 1
    phrase = event_text(e, "present")[4:]
    running = {event_text(x, "present")[4:] for x in events
               if x["start_frame"] < hi and x["end_frame"] >= lo}
    pool = [v for v in vocabulary if v not in running]
    pool = [pool[int(j)] for j in rng.permutation(len(pool))]
    out.append((lo, hi, *_mc(ACTIONS_PROMPT, pool, phrase, rng)))
    verb = PRESENT[e["action"]] + (f" the {e['target']}" if e.get("target") else "")
    out.append((lo, hi, f"What is the {e['object']} doing?\n{conversation.OPEN_ENDED_SUFFIX}",
                verb))
    # Query_Actions after / before an event, as the Sequence programs call it.
    if i + 1 < len(events) and hi < last:
      wrong = said[:i] + [fake[int(j)] for j in rng.permutation(len(fake))]
      out.append((hi, last, *_mc(ACTIONS_PROMPT, wrong, said[i + 1], rng)))
    if i > 0 and lo > 0:
      wrong = said[i + 1:] + [fake[int(j)] for j in rng.permutation(len(fake))]
      out.append((0, lo, *_mc(ACTIONS_PROMPT, wrong, said[i - 1], rng)))
  return out


def build_examples(world_dir: str, split: str, tokenizer, config, *, num_frames: int,
                   seed: int) -> list[dict]:
  """Tokenised examples with their `pixel_values_videos` (T, 3, S, S) for one split."""
  from aotd_jax.data import conversation, toyworld, video
  from aotd_jax.data.toyworld_questions import event_text
  from aotd_jax.data.video_processing import preprocess_video, sample_frame_indices
  rng = np.random.default_rng(seed)
  records = read_split(world_dir, split)
  truths = toyworld.load_ground_truth(world_dir)
  by_video: dict[str, list] = {}
  for qa in records:
    by_video.setdefault(qa.video_id, []).append(qa)
  with open(os.path.join(world_dir, "world.json")) as f:
    ids = json.load(f)["splits"][split]
  vocabulary = sorted({event_text(e, "present")[4:] for v in ids for e in truths[v].events})
  size = config.vision_config.image_size
  per_video = num_frames * config.video_tokens_per_frame()
  video_id = config.video_token_index
  examples = []
  for vid in ids:
    frames = video.decode_all(os.path.join(world_dir, "videos", f"{vid}.mp4"))
    for lo, hi, user, target in clip_examples(truths[vid], by_video.get(vid, []), rng,
                                              vocabulary):
      idx = sample_frame_indices(len(frames), num_frames, lo, max(hi, lo + 1))
      prompt = conversation.build_prompt(tokenizer, user, media="video")
      p = []
      for t in tokenizer(prompt)["input_ids"]:
        p.extend([t] * per_video if t == video_id else [t])
      t = list(tokenizer(" " + target, add_special_tokens=False)["input_ids"])
      t.append(tokenizer.eos_token_id)
      examples.append({"input_ids": np.asarray(p + t, np.int32),
                       "label_mask": np.asarray([0] * len(p) + [1] * len(t), np.int32),
                       "pixel_values_videos": preprocess_video(frames[idx], shortest_edge=size,
                                                               crop_size=size)})
  if not examples:
    raise LanguageExpertError(f"toy world {world_dir}: no {split} examples for the QA expert")
  return examples


def collate_video(examples: Sequence[dict], pad_id: int) -> dict[str, np.ndarray]:
  """Right-padded ids and masks (multiple of 32) plus stacked `pixel_values_videos`."""
  from aotd_jax.demo.program_generator import collate
  batch = collate(examples, pad_id)
  batch["pixel_values_videos"] = np.stack([e["pixel_values_videos"] for e in examples])
  return batch


# -- scores --------------------------------------------------------------------------------------

def score_qa_expert(world_dir: str, backend, *, split: str = "val", max_videos: int = 10) -> dict:
  """QA accuracy and action top-1 of a `VideoQA` / `ActionRecognizer` backend on `split`
  (the sub-task harness' own scorers; chance: 1/4 for both)."""
  from aotd_jax.eval import subtasks
  data = subtasks.load_data({"kind": "toyworld", "path": str(world_dir), "split": split,
                             "max_videos": max_videos})
  qa = subtasks.score_qa(backend, data)
  act = subtasks.score_action_recognizer(backend, data, num_action_choices=4)
  return {"split": split, "qa_accuracy": qa["qa_accuracy"], "qa_n": qa["n"],
          "action_top1": act["action_top1"], "action_n": act["n"], "chance": 0.25}


def train_qa_expert(world_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, *, steps: int, seed: int = 0,
                    evaluate: bool = True, **size) -> str:
  """Trains the tiny LLaVA-NeXT-Video action / QA expert and saves it in `out_dir` (cached).

  Args:
    world_dir: a toy world; tokenizer_dir: `build_tokenizer`'s output (saved beside it).
    out_dir: the HF directory `experts` binds with `kind="llava", path=out_dir`.
    steps: optimiser steps; seed: init, example and data-order seed.
    evaluate: score on the val split (`score_qa_expert`) into `scores.json`.
    **size: overrides of `DEFAULT_SIZE` (hidden_size, num_frames, image_size, ...).

  Returns:
    `out_dir`.
  """
  from flax import nnx

  from aotd_jax.demo.language_experts import check_positive
  from aotd_jax.models.llava_next_video import LlavaNextVideoForConditionalGeneration
  out_dir, world_dir = str(out_dir), str(world_dir)
  if is_done(out_dir):
    return out_dir
  steps = check_positive("steps", steps)
  size = resolve_size(size, DEFAULT_SIZE, "train_qa_expert")
  t0 = time.perf_counter()
  tokenizer = load_tokenizer(tokenizer_dir)
  config = model_config(tokenizer, size)
  examples = build_examples(world_dir, "train", tokenizer, config,
                            num_frames=size["num_frames"], seed=seed)
  model = LlavaNextVideoForConditionalGeneration(config, rngs=nnx.Rngs(seed))
  trainer = one_device_trainer(model, steps, size["learning_rate"])
  losses = fit(trainer, examples, steps=steps, batch_size=size["batch_size"], seed=seed,
               pad_id=tokenizer.pad_token_id, collate_fn=collate_video)
  model = trainer.sync_model()
  train_s = time.perf_counter() - t0

  info = {"steps": steps, "seed": seed, "size": size, "train_examples": len(examples),
          "train_seconds": round(train_s, 2)}

  def score(model):
    from experts.backends.llava import LlavaVideoQA
    backend = LlavaVideoQA(model, tokenizer, name="llava:eval", num_frames=size["num_frames"])
    return score_qa_expert(world_dir, backend, max_videos=size["eval_videos"])
  return save_expert(model, tokenizer, out_dir, info, losses, score if evaluate else None)
