"""The toy world's action / QA expert: a tiny LLaVA-NeXT-Video trained on the train split.

    path = train_qa_expert(world_dir, tokenizer_dir, out_dir, steps=150)
    config = experts.default_config()
    config.action_recognizer = dict(kind="llava", path=path)
    config.video_qa = dict(kind="llava", path=path)

It learns the prompts `experts.backends.llava.LlavaVideoQA` sends (the student's prompt form,
`conversation.build_prompt`):

- toy-world questions of the train split on their windows (`conversation.qa_user_text`);
- action recognition as `Query_Actions` asks it: "What actions happen in the video?" with
  candidate actions, on an event's own frames (candidates in the annotation's words, "red
  circle jumps") and on the frames after / before an event (candidates in the questions'
  words, "The red circle jumped.");
- "What is the red circle doing?" (open-ended) -> "jumps" on the object's event windows.

Answers are the option's text: the llava backend scores each candidate's likelihood (closed
set). The vision tower is trained first on the tokens the LM reads (`train_video_features`:
which objects sit in each pooled token's cell and what they do, on the train clips plus
rendered train-distribution clips), then frozen; the projector and LM train with the
distillation `Trainer` (answers in `label_mask`).
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
                    freeze_vision_tower=True, batch_size=8, vision_steps=200,
                    feature_steps=600, extra_clips=300,
                    qa_permutations=3, learning_rate=3e-3, eval_videos=10)
VISION_LR = 3e-2  # stage 1 (`vision_experts.train_frame_encoder`), the grounder's clip_lr
FEATURE_LR = 3e-2  # `train_video_features` (val visibility AUC 0.85 vs 0.82 at 1e-2)
# Multiple-choice targets: "letter" -> "(B)", "text" -> the option's text, "letter_text" ->
# "(B) text" (the distillation format).
# Text: the llava backend scores each choice's text by likelihood (closed set), so the
# reply carries what the video shows ("The red circle."), not a letter bound to a list.
ANSWER_STYLE = "text"  # the toy world's questions
ACTION_STYLE = "text"  # "What actions happen in the video?" (snapped to a candidate)


def model_config(tokenizer, size, vision: dict | None = None) -> Any:
  """The tiny LLaVA-NeXT-Video config (`TINY_LLAVA` resized; vocabulary = the tokenizer's).

  vision: the HF `vision_config` (e.g. a pretrained CLIP's); default: `TINY_LLAVA`'s resized
  by `size` (vision_hidden_size, vision_layers, image_size, patch_size).
  """
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
  if vision is None:
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


def clip_examples(truth, records: Sequence, rng: np.random.Generator,
                  vocabulary: Sequence[str], *,
                  qa_permutations: int = 1) -> list[tuple[int, int, str, str]]:
  """(first frame, end frame, user text, target) of every training prompt of one clip.

  `vocabulary`: action phrases in the annotation's words ("red circle jumps") of the split,
  the distractor pool of the event-window prompts. Each multiple-choice question appears
  `qa_permutations` times: as annotated, then with its choices shuffled (balanced letters).
  """
  from aotd_jax.data import conversation
  from aotd_jax.data.toyworld_questions import event_text
  from aotd_jax.data.toyworld_render import PRESENT
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
                   seed: int, qa_permutations: int = 1) -> list[dict]:
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
                                              vocabulary, qa_permutations=qa_permutations):
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


# -- vision tower -------------------------------------------------------------------------------

def pretrained_vision(world_dir: str, vision_init, size: dict, seed: int):
  """(HF vision_config dict, `CLIPVisionTransformer`, info) of the QA expert's vision tower.

  vision_init: a CLIP directory (HF layout, e.g. `train_grounder`'s `<dir>/clip`) whose image
  tower is taken as is; None: a tiny CLIP (`size`: vision_hidden_size, vision_layers,
  image_size, patch_size) trained here with the grounder's stage 1
  (`vision_experts.train_frame_encoder`, `size["vision_steps"]` steps) on the train split.
  """
  from flax import nnx

  from aotd_jax.demo import vision_experts as ve
  from aotd_jax.hf.clip import _vision_to_hf
  if vision_init is not None:
    from aotd_jax import hf
    path = str(vision_init)
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise LanguageExpertError(f"vision_init={path!r}: no config.json (expected a CLIP "
                                "directory such as train_grounder's <dir>/clip)")
    clip_model = hf.from_pretrained(path)
    if not hasattr(clip_model, "vision_model"):
      raise LanguageExpertError(f"vision_init={path!r}: {type(clip_model).__name__} is not a "
                                "CLIP model (CLIPModel / CLIPVisionModel)")
    info = {"vision_init": path}
  else:
    t0 = time.perf_counter()
    vd = size["vision_hidden_size"]
    clip_cfg, _ = ve.grounder_configs(8, image_size=size["image_size"],
                                      patch_size=size["patch_size"], vision_hidden=vd,
                                      projection_dim=vd, hidden=16, layers=size["vision_layers"],
                                      heads=2)
    from aotd_jax.models.clip import CLIPModel
    rngs = nnx.Rngs(seed)
    clip_model = CLIPModel(clip_cfg, rngs=rngs)
    truths, frames, _ = ve._world(world_dir)
    losses = ve.train_frame_encoder(clip_model, truths, frames, steps=size["vision_steps"],
                                    lr=VISION_LR, rng=np.random.default_rng(seed), rngs=rngs,
                                    tag="qa vision")
    info = {"vision_init": "stage1", "vision_steps": size["vision_steps"],
            "vision_first_loss": losses[0], "vision_final_loss": float(np.mean(losses[-10:])),
            "vision_seconds": round(time.perf_counter() - t0, 2)}
  vc = clip_model.config.vision_config if hasattr(clip_model.config, "vision_config") \
      else clip_model.config
  hf_vision = {k: v for k, v in _vision_to_hf(vc).items() if k != "architectures"}
  return hf_vision, clip_model.vision_model, info


def _auc(score: np.ndarray, label: np.ndarray) -> float:
  """Area under the ROC curve (ties share ranks); 0.5 = no information."""
  from scipy.stats import rankdata
  pos = label.astype(bool)
  if pos.all() or not pos.any():
    return float("nan")
  r = rankdata(score)
  return float((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def _token_features(cfg, tower, resampler, pixels):
  """(N, 3, S, S) -> (N, tokens, D): the pooled patch features the projector reads, with the
  gradient kept (`_vision_features` stops it for a frozen tower)."""
  import jax.numpy as jnp
  states = tower(pixels, output_hidden_states=True).hidden_states
  x = jnp.concatenate([states[i] for i in cfg.feature_layers], axis=-1)
  if cfg.vision_feature_select_strategy == "default":
    x = x[:, 1:]
  return resampler(x)


def token_states(truths, frames, side: int) -> tuple[np.ndarray, np.ndarray]:
  """Every frame (N, H, W, 3) and its per-token targets (N, side*side, objects, 1 + actions):
  for each cell of the pooled `side` x `side` token grid (row-major, as the LM reads them),
  which objects (`toyworld.ALL_OBJECT_NAMES`) have their box centre there, and what each of
  those is doing in that frame."""
  from aotd_jax.data import toyworld
  from aotd_jax.data.toyworld_render import ACTIONS
  index = {n: i for i, n in enumerate(toyworld.ALL_OBJECT_NAMES)}
  out_f, out_s = [], []
  for truth, clip in zip(truths, frames):
    h, w = clip.shape[1], clip.shape[2]
    for t in range(min(len(clip), truth.num_frames)):
      st = np.zeros((side * side, len(index), 1 + len(ACTIONS)), np.float32)
      doing = {}
      for e in truth.events:
        if e["start_frame"] <= t <= e["end_frame"]:
          doing.setdefault(e["object"], []).append(ACTIONS.index(e["action"]))
      for i, name in enumerate(truth.names):
        if not truth.visible[t, i]:
          continue
        x0, y0, x1, y1 = truth.boxes[t, i]
        cx = min(side - 1, int((x0 + x1) / 2 / w * side))
        cy = min(side - 1, int((y0 + y1) / 2 / h * side))
        cell = st[cy * side + cx, index[name]]
        cell[0] = 1.0
        for a in doing.get(name, []):
          cell[1 + a] = 1.0
      out_f.append(clip[t])
      out_s.append(st)
  return np.stack(out_f), np.stack(out_s)


def train_video_features(model, world_dir: str, *, steps: int, lr: float = FEATURE_LR,
                         seed: int = 0, batch_size: int = 64, extra_clips: int = 0) -> dict:
  """Trains the LLaVA vision tower in place so that the tokens the LM reads carry the frame.

  The grounder's stage 1 (`vision_experts.train_frame_encoder`) trains CLIP's pooled class
  embedding; LLaVA reads the *patch* tokens of `vision_feature_layer` (class token dropped),
  which that stage leaves untrained. Here one linear probe, shared by all the pooled tokens
  (what `multi_modal_projector` receives), learns from each token which objects are in its
  cell of the grid and what they are doing (`token_states`), on every train frame plus
  `extra_clips` rendered ones (`vision_experts.extra_train_clips`). Shared across cells, the probe cannot
  memorise where objects sat in the few train clips; a probe over the concatenated tokens
  did, and read val frames at the base rate. Returns losses and the probe's val object
  visibility AUC (`feature_val_visible_auc`: 0.5 = no information).
  """
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from aotd_jax.data.video_processing import preprocess_video
  from aotd_jax.demo import vision_experts as ve
  t0 = time.perf_counter()
  truths, frames, _ = ve._world(world_dir)
  if extra_clips:
    more = ve.extra_train_clips(world_dir, extra_clips)
    truths, frames = truths + more[0], frames + more[1]
  cfg = model.config
  side = int(round(np.sqrt(cfg.video_tokens_per_frame())))
  all_frames, states = token_states(truths, frames, side)
  img = cfg.vision_config.image_size
  pixels = preprocess_video(all_frames, shortest_edge=img, crop_size=img)
  width = cfg.vision_config.hidden_size * len(cfg.feature_layers)
  probe = nnx.Linear(width, states[0, 0].size, rngs=nnx.Rngs(seed))
  parts = nnx.List([model.vision_tower, model.vision_resampler, probe])
  opt = ve._optimizer(parts, lr, steps)  # the grounder's schedule: warmup, cosine, AdamW

  def logits(parts, pixels):
    tower, resampler, probe = parts
    f = _token_features(cfg, tower, resampler, pixels)  # (N, cells, D)
    return probe(f).reshape(f.shape[:2] + states.shape[2:])

  def loss_fn(parts, pixels, states):
    pred = logits(parts, pixels)
    vis = states[..., 0]
    bce = optax.sigmoid_binary_cross_entropy(pred[..., 0], vis).mean()
    act = (optax.sigmoid_binary_cross_entropy(pred[..., 1:], states[..., 1:]).sum(-1) * vis).sum()
    return bce * states.shape[2] + act / jnp.maximum(vis.sum(), 1.0)

  @nnx.jit
  def step(parts, opt, pixels, states):
    loss, grads = nnx.value_and_grad(loss_fn)(parts, pixels, states)
    opt.update(parts, grads)
    return loss

  rng = np.random.default_rng(seed)
  losses = []
  bs = min(batch_size, len(pixels))
  for _ in range(steps):
    pick = rng.choice(len(pixels), bs, replace=False)
    losses.append(float(step(parts, opt, jnp.asarray(pixels[pick]), jnp.asarray(states[pick]))))
  info = {"feature_steps": steps, "extra_clips": int(extra_clips),
          "feature_first_loss": losses[0], "feature_final_loss": float(np.mean(losses[-10:])),
          "feature_seconds": round(time.perf_counter() - t0, 2)}
  # How well the probe reads val frames: is each object in the frame (any cell)?
  with open(os.path.join(world_dir, "world.json")) as f:
    if not json.load(f)["splits"].get("val"):
      return info
  vtruths, vframes, _ = ve._world(world_dir, "val")
  vf, vs = token_states(vtruths, vframes, side)
  vp = preprocess_video(vf, shortest_edge=img, crop_size=img)
  read = nnx.jit(logits)
  pred = np.concatenate([np.asarray(read(parts, jnp.asarray(vp[i:i + 256])))
                         for i in range(0, len(vp), 256)])
  vis = vs[..., 0].max(1) > 0.5
  info["feature_val_visible_auc"] = _auc(pred[..., 0].max(1).ravel(), vis.ravel())
  info["feature_val_visible_base"] = float(max(vis.mean(), 1 - vis.mean()))
  return info


def standardize_projector(model, pixels: np.ndarray, *, batch: int = 64) -> dict:
  """Data-dependent init of the projector: folds the per-channel standardisation of the
  frozen tower's pooled features on `pixels` (N, 3, S, S) into
  `multi_modal_projector.linear_1`.

  A CLIP tower's patch features are dominated by per-channel constants (their variation
  across frames is ~0.05% of their spread): projected as initialised, every video token is
  the same large vector and the LM never reads the video. Returns the feature statistics.
  """
  import jax.numpy as jnp
  from flax import nnx
  feats = nnx.jit(lambda m, x: m.vision_resampler(m._vision_features(x)))  # the projector's input
  f = np.concatenate([np.asarray(feats(model, jnp.asarray(pixels[i:i + batch])))
                      for i in range(0, len(pixels), batch)])
  f = f.reshape(-1, f.shape[-1]).astype(np.float64)
  mu, sd = f.mean(0), f.std(0)
  ratio = float(np.mean(sd) / max(float(f.std()), 1e-12))
  sd = np.maximum(sd, 1e-4 * max(float(np.mean(sd)), 1e-12))
  lin = model.multi_modal_projector.linear_1
  w = np.asarray(lin.kernel[...], np.float64)
  lin.kernel[...] = jnp.asarray(w / sd[:, None], lin.kernel[...].dtype)
  lin.bias[...] = jnp.asarray(np.asarray(lin.bias[...], np.float64) - (mu / sd) @ w,
                              lin.bias[...].dtype)
  return {"feature_frames": int(len(pixels)), "feature_std_ratio": ratio}


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
                    evaluate: bool = True, vision_init: str | os.PathLike | None = None,
                    **size) -> str:
  """Trains the tiny LLaVA-NeXT-Video action / QA expert and saves it in `out_dir` (cached).

  Args:
    world_dir: a toy world; tokenizer_dir: `build_tokenizer`'s output (saved beside it).
    out_dir: the HF directory `experts` binds with `kind="llava", path=out_dir`.
    steps: optimiser steps; seed: init, example and data-order seed.
    evaluate: score on the val split (`score_qa_expert`) into `scores.json`.
    vision_init: a pretrained CLIP directory (e.g. `train_grounder`'s `<dir>/clip`) whose
      image tower becomes the LLaVA vision tower (its sizes win over `size`'s vision ones);
      None: train one here on the tokens the LM reads (`train_video_features`,
      `feature_steps` steps on the train clips plus `extra_clips` rendered ones).
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
  if vision_init is not None:
    hf_vision, tower, vision_info = pretrained_vision(world_dir, vision_init, size, seed)
  else:  # a fresh tower: `train_video_features` below trains it (the stage 1 that counts)
    hf_vision, tower, vision_info = None, None, {"vision_init": "features"}
  config = model_config(tokenizer, size, hf_vision)
  examples = build_examples(world_dir, "train", tokenizer, config,
                            num_frames=size["num_frames"], seed=seed,
                            qa_permutations=size["qa_permutations"])
  model = LlavaNextVideoForConditionalGeneration(config, rngs=nnx.Rngs(seed))
  if tower is not None:
    nnx.update(model.vision_tower.vision_model, nnx.state(tower))
  if vision_init is None:  # a pretrained CLIP stays as it is (frozen, as LLaVA keeps it)
    vision_info.update(train_video_features(model, world_dir, steps=size["feature_steps"],
                                            seed=seed, extra_clips=size["extra_clips"]))
  pick = np.random.default_rng(seed).permutation(len(examples))[:32]
  stats = standardize_projector(
      model, np.concatenate([examples[int(i)]["pixel_values_videos"] for i in pick]))
  trainer = one_device_trainer(model, steps, size["learning_rate"])
  losses = fit(trainer, examples, steps=steps, batch_size=size["batch_size"], seed=seed,
               pad_id=tokenizer.pad_token_id, collate_fn=collate_video)
  model = trainer.sync_model()
  train_s = time.perf_counter() - t0

  info = {"steps": steps, "seed": seed, "size": size, "train_examples": len(examples),
          "train_seconds": round(train_s, 2), "answer_style": ANSWER_STYLE, "action_style": ACTION_STYLE, **vision_info, **stats}

  def score(model):
    from experts.backends.llava import LlavaVideoQA
    backend = LlavaVideoQA(model, tokenizer, name="llava:eval", num_frames=size["num_frames"])
    return score_qa_expert(world_dir, backend, max_videos=size["eval_videos"])
  return save_expert(model, tokenizer, out_dir, info, losses, score if evaluate else None)
