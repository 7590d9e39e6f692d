"""The toy world's frame encoder: a tiny CLIP vision tower that knows which object is where.

    path = train_object_encoder(world_dir, out_dir, steps=1000, extra_clips=600)
    # out_dir is a Hugging Face `CLIPVisionModel` directory; the QA expert and the students
    # start their (frozen) LLaVA vision tower from it, as real LLaVA starts from CLIP.

Real video LLMs read a CLIP tower pretrained on web images; the toy world has no such
tower, and towers trained on the 60 train clips through a pooled or per-cell probe memorise
the scenes: on held-out clips they cannot tell *which* object is in a frame (presence probes
at the "always absent" baseline). This encoder is trained with a dense per-patch loss
instead: for every patch, which object's box covers it (cross-entropy over the world's 12
object names + background) and what that object is doing in this frame (one sigmoid per
action), on the train clips plus `extra_clips` more rendered from the train split
(`vision_experts.extra_train_clips`: never a val / test clip, held-out combinations
excluded). The head is saved beside the tower (`aotd_jax.projects.toyworld.object_states`): the QA
expert and the students read the tower's patch tokens, the grounder reads the head's
per-name object states. `DONE` (JSON, written last) records, on the world's train clips and on val, per-patch
identity (chance 1/12) and per-frame presence of each name against the "always absent"
baseline.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np

from aotd_jax.projects.toyworld import vision_experts as ve
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.object_states import ObjectStates, save_object_states
from aotd_jax.projects.toyworld.render import ACTIONS

DEFAULT_SIZE = dict(
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  image_size=64,
  patch_size=8,
  projection_dim=32,
  batch_size=64,
  learning_rate=3e-3,
  every=2,
  background_weight=0.2,
)
DONE = "DONE"


class ObjectEncoderError(ValueError):
  """A bad argument or input of the object encoder, naming it."""


def patch_targets(
  truths: Sequence, frames: Sequence[np.ndarray], names: Sequence[str], grid: int, *, every: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every `every`-th frame of each clip and its per-patch targets on a `grid` x `grid` grid.

  Returns (frames (N, H, W, 3), identity (N, grid*grid) int: the index in `names` of the
  object whose box covers the patch centre, `len(names)` for background, and actions
  (N, grid*grid, len(ACTIONS)): what that object is doing in this frame). A box smaller
  than a patch still marks the patch holding its centre. Later objects win overlaps.
  """
  index = {n: i for i, n in enumerate(names)}
  centres = np.arange(grid) + 0.5
  xs, ids, acts = [], [], []
  for truth, clip in zip(truths, frames):
    side = float(clip.shape[1])
    for t in range(0, min(len(clip), truth.num_frames), every):
      lab = np.full((grid, grid), len(names), np.int32)
      act = np.zeros((grid, grid, len(ACTIONS)), np.float32)
      doing: dict[str, list[int]] = {}
      for e in truth.events:
        if e["start_frame"] <= t <= e["end_frame"]:
          doing.setdefault(e["object"], []).append(ACTIONS.index(e["action"]))
      for i, name in enumerate(truth.names):
        if not truth.visible[t, i]:
          continue
        x0, y0, x1, y1 = np.asarray(truth.boxes[t, i], np.float64) / side * grid
        rows, cols = (centres >= y0) & (centres <= y1), (centres >= x0) & (centres <= x1)
        rows[min(max(int((y0 + y1) / 2), 0), grid - 1)] = True
        cols[min(max(int((x0 + x1) / 2), 0), grid - 1)] = True
        cells = np.ix_(rows, cols)
        lab[cells] = index[name]
        act[cells] = 0.0
        for k in doing.get(name, []):
          act[rows[:, None] & cols[None, :], k] = 1.0
      xs.append(clip[t])
      ids.append(lab.reshape(-1))
      acts.append(act.reshape(-1, len(ACTIONS)))
  if not xs:
    raise ObjectEncoderError("patch_targets: no frames (empty clip list)")
  return np.stack(xs), np.stack(ids), np.stack(acts)


def vision_config(size: dict):
  """Our `CLIPVisionConfig` for the `size` dict (`DEFAULT_SIZE` keys)."""
  from aotd_jax.models.clip import CLIPVisionConfig

  return CLIPVisionConfig(
    hidden_size=size["hidden_size"],
    intermediate_size=size["intermediate_size"],
    projection_dim=size["projection_dim"],
    num_hidden_layers=size["num_hidden_layers"],
    num_attention_heads=size["num_attention_heads"],
    image_size=size["image_size"],
    patch_size=size["patch_size"],
  )


def _probe_logits(tower, head, pixels):
  """(N, 3, S, S) -> (N, patches, names + 1 + actions) from the last layer's patch tokens."""
  return head(tower(pixels).last_hidden_state[:, 1:])


def score_object_encoder(tower, head, truths, frames, *, image_size: int, batch: int = 256) -> dict:
  """Per-patch identity accuracy on object patches and per-frame presence of each name
  ("some patch says red circle") against the "always absent" baseline."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from aotd_jax.data.video_processing import preprocess_video

  names = list(toyworld.ALL_OBJECT_NAMES)
  grid = image_size // tower.config.patch_size
  x, ids, _ = patch_targets(truths, frames, names, grid)
  pixels = preprocess_video(x, shortest_edge=image_size, crop_size=image_size)
  read = nnx.jit(lambda t, h, p: jnp.argmax(_probe_logits(t, h, p)[..., : len(names) + 1], -1))
  pred = np.concatenate(
    [
      np.asarray(jax.device_get(read(tower, head, jnp.asarray(pixels[i : i + batch]))))
      for i in range(0, len(pixels), batch)
    ]
  )
  on = ids < len(names)
  said = np.stack([(pred == k).any(1) for k in range(len(names))], 1)
  there = np.stack([(ids == k).any(1) for k in range(len(names))], 1)
  return {
    "identity": float((pred[on] == ids[on]).mean()) if on.any() else float("nan"),
    "identity_chance": 1.0 / len(names),
    "presence": float((said == there).mean()),
    "presence_always_absent": float(1.0 - there.mean()),
    "presence_recall": float((said & there).sum() / max(there.sum(), 1)),
    "frames": int(len(pixels)),
  }


def train_object_encoder(
  world_dir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  steps: int,
  extra_clips: int = 600,
  seed: int = 0,
  evaluate: bool | Sequence[str] = True,
  **size,
) -> str:
  """Trains the frame encoder and saves it as a HF `CLIPVisionModel` directory (cached).

  Args:
    world_dir: a generated toy world (`toyworld.generate_world`).
    out_dir: where the `CLIPVisionModel` (config.json + safetensors), its head
      (`object_states.save_object_states`) and `DONE` go.
    steps: optimiser steps (AdamW, warmup + cosine, batch `batch_size` frames).
    extra_clips: clips rendered from the world's train split on top of its own
      (`vision_experts.extra_train_clips`); more clips is what stops it memorising scenes.
    seed: init and batch order.
    evaluate: score splits with the probe (`score_object_encoder`) into `DONE`: True = the
      world's own train clips and val; or a list of splits ("train", "val", "test").
    **size: overrides of `DEFAULT_SIZE` (an unknown key is an `ObjectEncoderError`).

  Returns:
    `out_dir`.
  """
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from aotd_jax.data.video_processing import preprocess_video
  from aotd_jax.models.clip import CLIPVisionModel

  out_dir, world_dir = str(out_dir), str(world_dir)
  if os.path.exists(os.path.join(out_dir, DONE)):
    return out_dir
  unknown = sorted(set(size) - set(DEFAULT_SIZE))
  if unknown:
    raise ObjectEncoderError(
      f"train_object_encoder: unknown size keys {unknown}; expected some of {sorted(DEFAULT_SIZE)}"
    )
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ObjectEncoderError(f"train_object_encoder: steps={steps!r} must be a positive int")
  size = dict(DEFAULT_SIZE, **size)
  if size["image_size"] % size["patch_size"]:
    raise ObjectEncoderError(
      f"train_object_encoder: image_size={size['image_size']} is not a "
      f"multiple of patch_size={size['patch_size']}"
    )
  t0 = time.perf_counter()
  names = list(toyworld.ALL_OBJECT_NAMES)
  truths, frames, _ = ve._world(world_dir)
  own = len(truths)
  if extra_clips:
    more = ve.extra_train_clips(world_dir, extra_clips)
    truths, frames = truths + more[0], frames + more[1]
  cfg = vision_config(size)
  img, grid = cfg.image_size, cfg.image_size // cfg.patch_size
  x, ids, acts = patch_targets(truths, frames, names, grid, every=int(size["every"]))
  pixels = preprocess_video(x, shortest_edge=img, crop_size=img)
  del x
  render_s = time.perf_counter() - t0

  rngs = nnx.Rngs(seed)
  states = ObjectStates(CLIPVisionModel(cfg, rngs=rngs), names, ACTIONS, rngs=rngs)
  model, head = states.tower, states.head
  parts = nnx.List([model.vision_model, head])
  lr = float(size["learning_rate"])
  sched = optax.warmup_cosine_decay_schedule(
    0.0, lr, max(1, min(40, steps // 10)), max(steps, 2), lr * 0.05
  )
  opt = nnx.Optimizer(
    parts,
    optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4)),
    wrt=nnx.Param,
  )
  bg_weight, n = float(size["background_weight"]), len(names)

  def loss_fn(parts, pixels, ids, acts):
    out = _probe_logits(parts[0], parts[1], pixels)
    weight = jnp.where(ids == n, bg_weight, 1.0)  # background patches count less
    ce = optax.softmax_cross_entropy_with_integer_labels(out[..., : n + 1], ids)
    on = (ids < n).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(out[..., n + 1 :], acts).sum(-1)
    return (ce * weight).sum() / weight.sum() + (bce * on).sum() / jnp.maximum(on.sum(), 1.0)

  @nnx.jit
  def step(parts, opt, pixels, ids, acts):
    loss, grads = nnx.value_and_grad(loss_fn)(parts, pixels, ids, acts)
    opt.update(parts, grads)
    return loss

  rng = np.random.default_rng(seed)
  bs = min(int(size["batch_size"]), len(pixels))
  losses = []
  for _ in range(steps):
    pick = rng.integers(0, len(pixels), bs)
    losses.append(
      step(parts, opt, jnp.asarray(pixels[pick]), jnp.asarray(ids[pick]), jnp.asarray(acts[pick]))
    )
  losses = [float(v) for v in losses]
  info = {
    "steps": int(steps),
    "seed": int(seed),
    "size": size,
    "train_clips": len(truths),
    "extra_clips": int(extra_clips),
    "train_frames": int(len(pixels)),
    "first_loss": losses[0],
    "final_loss": float(np.mean(losses[-10:])),
    "render_seconds": round(render_s, 2),
    "seconds": round(time.perf_counter() - t0, 2),
  }
  del pixels, ids, acts
  with open(os.path.join(world_dir, "world.json")) as f:
    splits = json.load(f)["splits"]
  wanted = ("train", "val") if evaluate is True else tuple(evaluate or ())
  for split in wanted:
    if split == "train":  # the world's own train clips (what it fit), not the rendered ones
      t, f = truths[:own], frames[:own]
    elif splits.get(split):
      t, f, _ = ve._world(world_dir, split)
    else:
      continue
    info[split] = score_object_encoder(model.vision_model, head, t, f, image_size=img)
  os.makedirs(out_dir, exist_ok=True)
  save_object_states(states, out_dir)  # the HF CLIPVisionModel + the head
  with open(os.path.join(out_dir, "losses.json"), "w") as f:
    json.dump(losses, f)
  with open(os.path.join(out_dir, DONE), "w") as f:  # last: the directory is complete
    json.dump(info, f, indent=1)
  return out_dir


def read_done(out_dir: str | os.PathLike) -> dict:
  """The `DONE` record of a trained encoder (settings, losses summary, val scores)."""
  path = os.path.join(str(out_dir), DONE)
  if not os.path.exists(path):
    raise ObjectEncoderError(f"{out_dir}: no {DONE} (not a finished object encoder)")
  with open(path) as f:
    return json.load(f)
