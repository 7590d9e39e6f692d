"""Tiny vision experts trained on the toy world with the real architectures.

`train_detector` trains a tiny `Owlv2ForObjectDetection` for text queries such as
"red circle"; `train_grounder` trains a tiny UniVTG, end to end with the tiny CLIP whose
features it reads, to find action windows ("red circle jumps"). Both train on the world's
`train` split (frames decoded from its mp4 files, as the tools will see them) and save what
the `experts` backends load:

  detector:  dict(kind="owlv2", path=out_dir)                      (`detector_section`)
  grounder:  dict(kind="univtg", path=out_dir/univtg.ckpt,
                  clip_path=out_dir/clip[, features_path=out_dir/features])
                                                                   (`grounder_section`)

The text side of both is a word-level `tokenizers` tokenizer over the world's words, saved
as `tokenizer.json` (+ `tokenizer_config.json`) beside the weights; its `[EOS]` has the
highest id because OWLv2 pools the text at the highest token id. A finished directory
holds `DONE` (written last); calling again returns at once without retraining.

Detector loss (documented simplification of OWLv2's Hungarian-matched loss): each
ground-truth box is assigned to the patch containing its centre; sigmoid focal loss on the
class logits (that patch x its object's query is positive, everything else negative), L1 +
GIoU on that patch's `pred_boxes`, BCE on objectness. Grounder loss: UniVTG's own criterion
(`univtg_postprocess.univtg_losses`) on the official targets (`moment_targets`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aotd_jax.projects.toyworld import object_states as obj
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.object_states import permute_name_blocks
from aotd_jax.projects.toyworld.questions import event_text
from aotd_jax.projects.toyworld.render import ACTIONS, PAST, PRESENT

DONE = "DONE"
MAX_TEXT_LEN = 16
FEATURES_DIR = "features"  # train_grounder(features=...): the object states it reads
_FILLER = (
  "the",
  "a",
  "an",
  "object",
  "objects",
  "another",
  "other",
  "that",
  "is",
  "touched",
  "by",
  "where",
  "and",
  "shape",
  "something",
  "thing",
)


# -- shared helpers ----------------------------------------------------------------------------


def _done(out_dir: str) -> bool:
  return os.path.exists(os.path.join(out_dir, DONE))


def _mark_done(out_dir: str, info: dict) -> None:
  with open(os.path.join(out_dir, "train_info.json"), "w") as f:
    json.dump(info, f, indent=1)
  with open(os.path.join(out_dir, DONE), "w") as f:  # last: the directory is complete
    f.write("ok\n")


def world_words() -> list[str]:
  """Every word a toy-world query uses (object names, action verbs, fillers)."""
  words = {w for n in toyworld.ALL_OBJECT_NAMES for w in n.split()}
  words |= set(PRESENT.values()) | set(PAST.values()) | set(toyworld.ACTIONS) | set(_FILLER)
  return sorted(words)


def build_word_tokenizer(
  words: Sequence[str], out_dir: str, *, max_length: int = MAX_TEXT_LEN
) -> dict[str, int]:
  """Writes a word-level tokenizer (`tokenizer.json` + config) that AutoTokenizer loads.

  Ids: [PAD]=0, [UNK]=1, the words, [BOS], [EOS] (highest, for OWL's argmax pooling).
  Returns the vocabulary.
  """
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

  vocab = {"[PAD]": 0, "[UNK]": 1}
  for w in sorted(set(words)):
    vocab.setdefault(w, len(vocab))
  vocab["[BOS]"] = len(vocab)
  vocab["[EOS]"] = len(vocab)
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
    single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
  )
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(
      {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "model_max_length": max_length,
        "padding_side": "right",
      },
      f,
      indent=1,
    )
  return vocab


def _tokenize(out_dir: str, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and mask exactly as the experts backends make them (padded to max length)."""
  from aotd_jax import hf
  from experts.backends.owlv2 import hf_tokenize

  return hf_tokenize(hf.load_tokenizer(out_dir), MAX_TEXT_LEN)(list(texts))


def _world(world_dir: str, split: str = "train"):
  """(ClipTruth list, frames list) of a split, frames decoded from the world's mp4 files."""
  from aotd_jax.data import video

  try:
    with open(os.path.join(world_dir, "world.json")) as f:
      world = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
      f"{world_dir}: no world.json (not a generated toy world; run "
      "aotd_jax.projects.toyworld.world.generate_world)"
    ) from None
  truths = toyworld.load_ground_truth(world_dir)
  ids = world["splits"][split]
  if not ids:
    raise ValueError(f"{world_dir}: the {split!r} split has no clips")
  frames = [video.decode_all(toyworld.video_path(world_dir, v)) for v in ids]
  return [truths[v] for v in ids], frames, world


def extra_train_clips(world: str | dict, count: int):
  """(ClipTruth list, frames list) of `count` more clips of the world's train split.

  The world is procedural: clip i of a split is rendered from its own seed, so the clips
  after the world's own train clips are what a larger world would hold in its train split,
  held-out combinations excluded as there; never a val / test clip (other seeds). Rendered
  in memory (no mp4 round trip). world: a generated world directory or its `world.json`.
  """
  if not isinstance(count, (int, np.integer)) or count < 0:
    raise ValueError(f"extra_clips={count!r}: must be an int >= 0")
  if isinstance(world, (str, os.PathLike)):
    path = os.path.join(world, "world.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{world}: no world.json (not a generated toy world)")
    with open(path) as f:
      world = json.load(f)
  start = len(world["splits"]["train"])
  heldout = [tuple(h) for h in world.get("heldout", [])]
  out = [
    toyworld.generate_clip(
      int(world["seed"]),
      "train",
      start + i,
      size=int(world["size"]),
      fps=int(world["fps"]),
      seconds=float(world["seconds"]),
      heldout=heldout,
    )
    for i in range(count)
  ]
  return [t for _, t, _ in out], [f for f, _, _ in out]


def _optimizer(model, lr: float, steps: int):
  warm = max(1, min(50, steps // 10))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1), lr * 0.05)
  return nnx.Optimizer(
    model,
    optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4)),
    wrt=nnx.Param,
  )


def _check_steps(steps) -> None:
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps={steps!r}: must be a positive int")


# -- detector ----------------------------------------------------------------------------------


def detector_config(
  vocab_size: int,
  *,
  image_size: int = 64,
  patch_size: int = 8,
  vision_hidden: int = 64,
  text_hidden: int = 32,
  layers: int = 2,
  heads: int = 4,
  projection_dim: int = 32,
):
  """A tiny `Owlv2Config` (our dataclass; HF field names)."""
  from aotd_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
  from aotd_jax.models.owlv2 import Owlv2Config

  text = CLIPTextConfig(
    vocab_size=vocab_size,
    hidden_size=text_hidden,
    intermediate_size=2 * text_hidden,
    projection_dim=projection_dim,
    num_hidden_layers=layers,
    num_attention_heads=max(1, heads // 2),
    max_position_embeddings=MAX_TEXT_LEN,
    pad_token_id=0,
    bos_token_id=vocab_size - 2,
    eos_token_id=vocab_size - 1,
  )
  vision = CLIPVisionConfig(
    hidden_size=vision_hidden,
    intermediate_size=2 * vision_hidden,
    projection_dim=projection_dim,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    image_size=image_size,
    patch_size=patch_size,
  )
  return Owlv2Config(text_config=text, vision_config=vision, projection_dim=projection_dim)


def detection_targets(truths, frames, names: Sequence[str], grid: int, *, max_objects: int = 4):
  """Per frame: uint8 frames, xyxy boxes (0-1 of the padded square), query index, patch, valid."""
  index = {n: i for i, n in enumerate(names)}
  out_f, boxes, labels, patches, valid = [], [], [], [], []
  for truth, clip in zip(truths, frames):
    t_n = min(len(clip), truth.num_frames)
    side = float(max(clip.shape[1], clip.shape[2]))
    for t in range(t_n):
      b = np.zeros((max_objects, 4), np.float32)
      lab = np.zeros(max_objects, np.int32)
      pat = np.zeros(max_objects, np.int32)
      v = np.zeros(max_objects, np.float32)
      k = 0
      for i, name in enumerate(truth.names):
        if not truth.visible[t, i] or k == max_objects:
          continue
        box = np.clip(truth.boxes[t, i] / side, 0.0, 1.0)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        b[k], lab[k], v[k] = box, index[name], 1.0
        pat[k] = min(int(cy * grid), grid - 1) * grid + min(int(cx * grid), grid - 1)
        k += 1
      out_f.append(clip[t])
      boxes.append(b)
      labels.append(lab)
      patches.append(pat)
      valid.append(v)
  return (np.stack(out_f), np.stack(boxes), np.stack(labels), np.stack(patches), np.stack(valid))


def _xyxy(cxcywh):
  c, wh = cxcywh[..., :2], cxcywh[..., 2:]
  return jnp.concatenate([c - wh / 2, c + wh / 2], -1)


def _giou(a, b):
  """Generalised IoU of matching xyxy boxes (..., 4)."""
  lt, rb = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(rb - lt, 0), -1)
  area = lambda x: jnp.prod(jnp.clip(x[..., 2:] - x[..., :2], 0), -1)
  union = area(a) + area(b) - inter
  iou = inter / jnp.maximum(union, 1e-9)
  hull_wh = jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2])
  hull = jnp.prod(jnp.clip(hull_wh, 0), -1)
  return iou - (hull - union) / jnp.maximum(hull, 1e-9)


def detector_loss(model, frames, boxes, labels, patches, valid, ids, mask):
  """(total, parts) of the documented detector loss on a batch of frames."""
  from aotd_jax.models import owlv2_processing as proc
  from experts.backends.owlv2 import device_preprocess

  vc = model.config.vision_config
  pixels = device_preprocess(
    frames, vc.image_size, mean=proc.OPENAI_CLIP_MEAN, std=proc.OPENAI_CLIP_STD
  )
  queries = model.embed_text_queries(ids, mask)
  out = model.detect(pixels, queries)
  b, p, q = out.logits.shape
  rows = jnp.arange(b)[:, None]
  pos = jnp.zeros((b, p, q)).at[rows, patches, labels].max(valid)
  num_pos = jnp.maximum(valid.sum(), 1.0)
  cls = optax.sigmoid_focal_loss(out.logits, pos, alpha=0.25, gamma=2.0).sum() / num_pos
  pred = out.pred_boxes[rows, patches]  # (B, K, 4) cxcywh
  gt_c = jnp.concatenate(
    [(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1
  )
  l1 = (jnp.abs(pred - gt_c).sum(-1) * valid).sum() / num_pos
  giou = ((1 - _giou(_xyxy(pred), boxes)) * valid).sum() / num_pos
  obj_t = jnp.zeros((b, p)).at[rows, patches].max(valid)
  obj = optax.sigmoid_binary_cross_entropy(out.objectness_logits, obj_t).mean()
  total = cls + 5.0 * l1 + 2.0 * giou + obj
  return total, {"cls": cls, "l1": l1, "giou": giou, "obj": obj}


def train_detector(
  world_dir: str,
  out_dir: str,
  *,
  steps: int,
  seed: int = 0,
  batch_size: int = 32,
  lr: float = 2e-3,
  log_every: int = 0,
  **size,
) -> str:
  """Trains a tiny OWLv2 on the toy world's train frames; returns `out_dir` (HF format).

  size: `detector_config` keywords (image_size, patch_size, vision_hidden, text_hidden,
  layers, heads, projection_dim). Cached: returns at once if `out_dir/DONE` exists.
  """
  if _done(out_dir):
    return out_dir
  _check_steps(steps)
  from aotd_jax import hf
  from aotd_jax.models.owlv2 import Owlv2ForObjectDetection

  t0 = time.perf_counter()
  truths, frames, _ = _world(world_dir)
  vocab = build_word_tokenizer(world_words(), out_dir)
  names = list(toyworld.ALL_OBJECT_NAMES)
  ids, mask = _tokenize(out_dir, names)
  config = detector_config(len(vocab), **size)
  grid = config.vision_config.image_size // config.vision_config.patch_size
  data = detection_targets(truths, frames, names, grid)
  model = Owlv2ForObjectDetection(config, rngs=nnx.Rngs(seed))
  opt = _optimizer(model, lr, steps)

  @nnx.jit
  def step(model, opt, batch, ids, mask):
    (loss, parts), grads = nnx.value_and_grad(detector_loss, has_aux=True)(model, *batch, ids, mask)
    opt.update(model, grads)
    return loss, parts

  rng = np.random.default_rng(seed)
  n = len(data[0])
  bs = min(batch_size, n)
  losses = []
  for i in range(steps):
    pick = rng.choice(n, bs, replace=False)
    batch = tuple(jnp.asarray(x[pick]) for x in data)
    loss, parts = step(model, opt, batch, jnp.asarray(ids), jnp.asarray(mask))
    losses.append(float(loss))
    if log_every and (i % log_every == 0 or i == steps - 1):
      print(
        f"detector step {i}: loss {losses[-1]:.4f} "
        + " ".join(f"{k} {float(v):.3f}" for k, v in parts.items()),
        flush=True,
      )
  hf.save_pretrained(model, out_dir)
  _mark_done(
    out_dir,
    {
      "steps": steps,
      "seed": seed,
      "first_loss": losses[0],
      "last_loss": float(np.mean(losses[-max(1, steps // 10) :])),
      "losses": losses,
      "seconds": time.perf_counter() - t0,
      "size": size,
    },
  )
  return out_dir


def detector_section(out_dir: str, **kw) -> dict:
  """The `experts` config section that binds a `train_detector` output."""
  return {"kind": "owlv2", "path": out_dir, "threshold": 0.1, "buckets": [8, 32], **kw}


# -- grounder ----------------------------------------------------------------------------------


def grounder_queries(truth) -> list[tuple[str, list[tuple[int, int]]]]:
  """(query, [inclusive frame windows]) pairs of a clip, in the phrasings programs use."""
  out: dict[str, list[tuple[int, int]]] = {}

  def add(q, e):
    out.setdefault(q, []).append((int(e["start_frame"]), int(e["end_frame"])))

  for e in truth.events:
    text = event_text(e, "present")  # "the red circle jumps"
    add(text, e)
    add(text[4:], e)  # "red circle jumps" (STAR situations' wording)
    verb = PRESENT[e["action"]]
    if e["action"] == "touch":
      add(f"the {e['object']} touches an object", e)
      add("an object touches another object", e)
    else:
      add(f"an object {verb}", e)
  return sorted(out.items())


def grounder_configs(
  vocab_size: int,
  *,
  image_size: int = 32,
  patch_size: int = 8,
  vision_hidden: int = 64,
  hidden: int = 32,
  projection_dim: int = 64,
  layers: int = 2,
  heads: int = 2,
  clip_length: float = 0.25,
  input_dropout: float = 0.0,
  video_feature_dim: int | None = None,
):
  """Tiny (CLIPConfig, UniVTGConfig): UniVTG reads CLIP image features + text token states.

  video_feature_dim: the width of the video features when they are not CLIP's image
  features (`ObjectStates.feature_dim`); None = `projection_dim`.

  input_dropout: UniVTG's dropout on its input features. 0 here: with these 64-wide
  features, the official 0.5 (or even 0.1) keeps the heads from learning in a few hundred
  steps (on ground-truth frame states, val mIoU 0.25 with 0.1 vs 0.62 with 0).
  """
  from aotd_jax.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
  from aotd_jax.models.univtg import UniVTGConfig

  text = CLIPTextConfig(
    vocab_size=vocab_size,
    hidden_size=hidden,
    intermediate_size=2 * hidden,
    projection_dim=projection_dim,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    max_position_embeddings=MAX_TEXT_LEN,
    pad_token_id=0,
    bos_token_id=vocab_size - 2,
    eos_token_id=vocab_size - 1,
  )
  vision = CLIPVisionConfig(
    hidden_size=vision_hidden,
    intermediate_size=2 * vision_hidden,
    projection_dim=projection_dim,
    num_hidden_layers=layers,
    num_attention_heads=max(1, vision_hidden // 16),
    image_size=image_size,
    patch_size=patch_size,
  )
  clip_cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
  vtg = UniVTGConfig(
    v_feat_dims=(video_feature_dim or projection_dim,),
    use_tef=True,
    t_feat_dim=hidden,
    hidden_dim=hidden,
    nheads=heads,
    enc_layers=layers,
    dim_feedforward=2 * hidden,
    n_input_proj=2,
    max_q_l=MAX_TEXT_LEN,
    max_v_l=128,
    clip_length=clip_length,
    input_dropout=input_dropout,
    dropout=0.0,
    droppath=0.0,
  )
  return clip_cfg, vtg


def frame_states(truths, frames, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Every frame, and its target (N, objects, 5 + actions): per object name (visible, cx,
  cy, w, h) in 0-1 of the frame, then one flag per action it is doing in that frame."""
  index = {n: i for i, n in enumerate(names)}
  out_f, out_s = [], []
  for truth, clip in zip(truths, frames):
    side = float(max(clip.shape[1], clip.shape[2]))
    for t in range(min(len(clip), truth.num_frames)):
      st = np.zeros((len(names), 5 + len(ACTIONS)), np.float32)
      for i, name in enumerate(truth.names):
        if truth.visible[t, i]:
          x0, y0, x1, y1 = truth.boxes[t, i] / side
          st[index[name], :5] = (1.0, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
      for e in truth.events:
        if e["start_frame"] <= t <= e["end_frame"]:
          st[index[e["object"]], 5 + ACTIONS.index(e["action"])] = 1.0
      out_f.append(clip[t])
      out_s.append(st)
  return np.stack(out_f), np.stack(out_s)


def frame_state_loss(models, pixels, states):
  """Stage 1: CLIP's pooled image feature must tell where every object is and what it is
  doing (a linear probe; single frames show it only partly, the grounder adds time)."""
  clip_model, probe = models
  pred = probe(clip_model.get_image_features(pixels)).reshape(states.shape)
  vis = states[..., 0]
  bce = optax.sigmoid_binary_cross_entropy(pred[..., 0], vis).mean()
  geo = (jnp.abs(jax.nn.sigmoid(pred[..., 1:5]) - states[..., 1:5]).sum(-1) * vis).sum()
  act = optax.sigmoid_binary_cross_entropy(pred[..., 5:], states[..., 5:]).sum(-1).mean()
  return bce + 4.0 * geo / jnp.maximum(vis.sum(), 1.0) + act


def train_frame_encoder(
  clip_model,
  truths,
  frames,
  *,
  steps: int,
  lr: float,
  rng: np.random.Generator,
  rngs: nnx.Rngs,
  batch_size: int = 64,
  log_every: int = 0,
  tag: str = "grounder clip",
) -> list[float]:
  """Stage 1 of `train_grounder` (also the QA expert's vision tower): trains `clip_model`'s
  image tower in place, through a throw-away linear probe, on `frame_state_loss` over every
  frame of `frames` (`frame_states` targets); returns the losses."""
  from aotd_jax.data.video_processing import preprocess_video

  _check_steps(steps)
  img = clip_model.config.vision_config.image_size
  all_frames, states = frame_states(truths, frames, list(toyworld.ALL_OBJECT_NAMES))
  pixels = preprocess_video(all_frames, shortest_edge=img, crop_size=img)
  probe = nnx.Linear(clip_model.config.projection_dim, states[0].size, rngs=rngs)
  stage1 = nnx.List([clip_model, probe])
  opt1 = _optimizer(stage1, lr, steps)

  @nnx.jit
  def step1(models, opt, pixels, states):
    loss, grads = nnx.value_and_grad(frame_state_loss)(models, pixels, states)
    opt.update(models, grads)
    return loss

  losses1 = []
  bs1 = min(batch_size, len(pixels))
  for i in range(steps):
    pick = rng.choice(len(pixels), bs1, replace=False)
    losses1.append(float(step1(stage1, opt1, jnp.asarray(pixels[pick]), jnp.asarray(states[pick]))))
    if log_every and (i % log_every == 0 or i == steps - 1):
      print(f"{tag} step {i}: loss {losses1[-1]:.4f}", flush=True)
  return losses1


def _l2(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def grounding_samples(truths, frames, fps: float, clip_length: float):
  """(clip index, query, [[start, end] seconds]) for every clip's grounder queries."""
  del frames, clip_length
  return [
    (c, q, [[s / fps, (e + 1) / fps] for s, e in wins])
    for c, truth in enumerate(truths)
    for q, wins in grounder_queries(truth)
  ]


def rename_objects(text: str, mapping: dict[str, str]) -> str:
  """`text` with every object name in `mapping` replaced at once ("the red circle touches
  the blue square" -> "the green star touches the red circle"); longest names first."""
  import re

  if not mapping:
    return text
  pattern = re.compile("|".join(re.escape(n) for n in sorted(mapping, key=len, reverse=True)))
  return pattern.sub(lambda m: mapping[m.group(0)], text)


def rename_sample(
  features: np.ndarray, query: str, perm: Sequence[int], names: Sequence[str]
) -> tuple[np.ndarray, str]:
  """A grounding sample with its objects renamed: object `names[i]` becomes
  `names[perm[i]]` in the `ObjectStates` features (its block moves) and in the query."""
  mapping = {n: names[int(perm[i])] for i, n in enumerate(names)}
  return permute_name_blocks(features, perm, len(names)), rename_objects(query, mapping)


class _TextStates:
  """CLIP text token states of queries, as the grounder backend computes them, memoised and
  computed in fixed-size chunks (one compile whatever the number of new queries)."""

  def __init__(self, clip_model, clip_dir: str, chunk: int = 64):
    self.clip_dir, self.chunk, self.cache = clip_dir, chunk, {}
    self.model = clip_model
    self.fn = nnx.jit(lambda m, i, k: m.text_model(i, k).last_hidden_state)

  def __call__(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    new = sorted({q for q in queries if q not in self.cache})
    for i in range(0, len(new), self.chunk):
      part = new[i : i + self.chunk]
      ids, mask = _tokenize(self.clip_dir, part + part[-1:] * (self.chunk - len(part)))
      states = np.asarray(self.fn(self.model, jnp.asarray(ids), jnp.asarray(mask)))
      states = (_l2(states) * mask[..., None]).astype(np.float32)
      for q, st, m in zip(part, states, mask):
        self.cache[q] = (st, m.astype(np.float32))
    return (
      np.stack([self.cache[q][0] for q in queries]),
      np.stack([self.cache[q][1] for q in queries]),
    )


def _video_features(fn, pixels: np.ndarray, batch: int = 512) -> np.ndarray:
  """(videos, clips, 3, S, S) -> (videos, clips, D) with `fn` over frame batches."""
  n_vid, n_clips = pixels.shape[:2]
  flat = pixels.reshape(n_vid * n_clips, *pixels.shape[2:])
  out = np.concatenate(
    [np.asarray(fn(jnp.asarray(flat[i : i + batch]))) for i in range(0, len(flat), batch)]
  )
  return out.reshape(n_vid, n_clips, -1)


def train_grounder(
  world_dir: str,
  out_dir: str,
  *,
  steps: int,
  seed: int = 0,
  batch_size: int = 32,
  lr: float = 3e-3,
  clip_steps: int | None = None,
  vtg_steps: int | None = None,
  clip_lr: float = 3e-2,
  log_every: int = 0,
  extra_clips: int = 0,
  features: str | None = None,
  rename_prob: float = 1.0,
  **size,
) -> str:
  """Trains a tiny UniVTG (and its tiny CLIP) to ground toy-world actions; returns `out_dir`.

  `steps` is the budget unit: stage 2 runs `vtg_steps` (default 2 * steps, learning rate
  `lr`); stage 1, when there is one, `clip_steps` (default 2 * steps, `clip_lr`).
  `extra_clips` adds that many procedurally rendered train-split clips
  (`extra_train_clips`).

  Video features, two kinds:
  - `features=None`: CLIP image features. Stage 1: the CLIP vision tower learns, through
    a linear probe dropped afterwards, to put every object's visibility, box and current
    actions into its pooled image feature (the feature the backend computes).
  - `features=<dir>`: per-name object states (`aotd_jax.projects.toyworld.object_states`) from a
    saved frame encoder (`object_encoder.train_object_encoder`), no stage 1; a copy goes to
    `out_dir/features` (the backend's `features_path`). With probability `rename_prob`
    per sample, stage 2 renames the objects: a random permutation of the world's names
    moves the name blocks of the features and rewrites the names in the query alike
    (`rename_sample`). Every test clip holds a (shape, colour,
    action) combination held out of training; renaming is what lets UniVTG ground them
    (test mIoU 0.37 vs 0.28 without, docs/vision_experts.md).
  Stage 2: UniVTG trains with its own criterion on the frozen features and the (untrained)
  CLIP text tower's token states, exactly as the backend computes them. Writes
  `out_dir/univtg.ckpt` (official layout) and `out_dir/clip/` (HF CLIP + tokenizer); bind
  with `grounder_section(out_dir)`. size: `grounder_configs` keywords. Cached: returns at
  once if `out_dir/DONE` exists.
  """
  if _done(out_dir):
    return out_dir
  _check_steps(steps)
  clip_steps = 2 * steps if clip_steps is None else clip_steps
  _check_steps(clip_steps)
  steps = 2 * steps if vtg_steps is None else vtg_steps
  _check_steps(steps)
  if not 0.0 <= float(rename_prob) <= 1.0:
    raise ValueError(f"train_grounder: rename_prob={rename_prob!r} must be in [0, 1]")
  from aotd_jax import hf
  from aotd_jax.data.video_processing import preprocess_video
  from aotd_jax.hf.univtg import save_univtg
  from aotd_jax.models import univtg_postprocess as post
  from aotd_jax.models.clip import CLIPModel
  from aotd_jax.models.univtg import UniVTG

  t0 = time.perf_counter()
  reader = obj.load_object_states(features) if features else None
  if reader is not None and list(reader.names) != list(toyworld.ALL_OBJECT_NAMES):
    raise ValueError(
      f"{features}: object states for names {list(reader.names)}, not this "
      f"world's {list(toyworld.ALL_OBJECT_NAMES)}"
    )
  truths, frames, world = _world(world_dir)
  if extra_clips:
    more = extra_train_clips(world, extra_clips)
    truths, frames = list(truths) + more[0], list(frames) + more[1]
  clip_dir = os.path.join(out_dir, "clip")
  vocab = build_word_tokenizer(world_words(), clip_dir)
  if reader is not None:
    size = dict(size, image_size=reader.image_size, video_feature_dim=reader.feature_dim)
  clip_cfg, vtg_cfg = grounder_configs(len(vocab), **size)
  img = clip_cfg.vision_config.image_size
  rng = np.random.default_rng(seed)
  rngs = nnx.Rngs(seed, dropout=seed + 1)
  clip_model = CLIPModel(clip_cfg, rngs=rngs)

  losses1: list[float] = []
  if reader is None:  # Stage 1: frame states into the pooled CLIP feature.
    losses1 = train_frame_encoder(
      clip_model,
      truths,
      frames,
      steps=clip_steps,
      lr=clip_lr,
      rng=rng,
      rngs=rngs,
      log_every=log_every,
    )
    feature_fn = nnx.jit(lambda m, x: m.get_image_features(x))
    extract = lambda x: feature_fn(clip_model, x)
  else:
    feature_fn = nnx.jit(lambda m, x: m(x))
    extract = lambda x: feature_fn(reader, x)

  # Stage 2: UniVTG on the frozen features, computed as `experts.backends.univtg` does.
  fps = float(world["fps"])
  pos = post.clip_frame_indices(len(frames[0]), fps, vtg_cfg.clip_length)
  if any(len(f) != len(frames[0]) for f in frames):
    raise ValueError(f"{world_dir}: clips of different lengths in the train split")
  clip_pixels = np.stack(
    [preprocess_video(f[pos], shortest_edge=img, crop_size=img) for f in frames]
  )
  feats = _l2(_video_features(extract, clip_pixels)).astype(np.float32)
  n_vid, n_clips = feats.shape[:2]
  tef = np.broadcast_to(post.temporal_endpoint_features(n_clips), (n_clips, 2))
  samples = grounding_samples(truths, frames, fps, vtg_cfg.clip_length)
  text_states = _TextStates(clip_model, clip_dir)
  names = list(toyworld.ALL_OBJECT_NAMES)

  vtg = UniVTG(vtg_cfg, rngs=rngs)
  vtg.train()
  opt2 = _optimizer(vtg, lr, steps)

  @nnx.jit
  def step2(model, opt, src_txt, src_txt_mask, src_vid, targets):
    def loss_fn(m):
      out = m(src_txt, src_txt_mask, src_vid, jnp.ones(src_vid.shape[:2], jnp.float32))
      return post.univtg_losses(out, targets)

    (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss, parts

  bs = min(batch_size, len(samples))
  losses, renamed = [], 0
  for i in range(steps):
    chosen = [samples[int(k)] for k in rng.choice(len(samples), bs, replace=False)]
    targets = post.moment_targets(
      [w for _, _, w in chosen], [n_clips] * bs, vtg_cfg.clip_length, rng=rng
    )
    vids, queries = [], []
    for c, q, _ in chosen:
      f = feats[c]
      if reader is not None and rename_prob and rng.random() < rename_prob:
        f, q = rename_sample(f, q, rng.permutation(len(names)), names)
        renamed += 1
      vids.append(np.concatenate([f, tef], -1))
      queries.append(q)
    txt, mask = text_states(queries)
    loss, parts = step2(
      vtg,
      opt2,
      jnp.asarray(txt),
      jnp.asarray(mask),
      jnp.asarray(np.stack(vids).astype(np.float32)),
      {k: jnp.asarray(v) for k, v in targets.items()},
    )
    losses.append(float(loss))
    if log_every and (i % log_every == 0 or i == steps - 1):
      print(
        f"grounder step {i}: loss {losses[-1]:.4f} "
        + " ".join(f"{k} {float(v):.3f}" for k, v in parts.items()),
        flush=True,
      )
  vtg.eval()
  hf.save_pretrained(clip_model, clip_dir)
  if reader is not None:
    obj.save_object_states(reader, os.path.join(out_dir, FEATURES_DIR))
  save_univtg(vtg, os.path.join(out_dir, "univtg.ckpt"), epoch=steps)
  _mark_done(
    out_dir,
    {
      "steps": steps,
      "clip_steps": 0 if reader is not None else clip_steps,
      "seed": seed,
      "train_clips": len(truths),
      "extra_clips": extra_clips,
      "features": "object_states" if reader is not None else "clip",
      "features_from": str(features or ""),
      "rename_prob": rename_prob,
      "renamed_samples": renamed,
      "first_loss": losses[0],
      "last_loss": float(np.mean(losses[-max(1, steps // 10) :])),
      "losses": losses,
      "clip_losses": losses1,
      "seconds": time.perf_counter() - t0,
      "size": size,
    },
  )
  return out_dir


def grounder_section(out_dir: str, **kw) -> dict:
  """The `experts` config section that binds a `train_grounder` output."""
  section = {
    "kind": "univtg",
    "path": os.path.join(out_dir, "univtg.ckpt"),
    "clip_path": os.path.join(out_dir, "clip"),
    "buckets": [8, 32],
  }
  if os.path.isdir(os.path.join(out_dir, FEATURES_DIR)):
    section["features_path"] = os.path.join(out_dir, FEATURES_DIR)
  return {**section, **kw}
