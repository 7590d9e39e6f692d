r"""Can a tiny CLIP ViT tell *which* toy-world object is where, on held-out test clips?

  python benchmarks/toy_frame_encoder.py                       # the quick world, ~2 min on 2 cores
  python benchmarks/toy_frame_encoder.py --world=W/world --extra_clips=300 --steps=1200

A diagnostic for issue 8 (experts and students at chance): it trains our `CLIPVisionTransformer`
(64 px, patch 8, 2 layers, width 64) with a dense per-patch loss (which object's box covers the
patch centre, or none) on the world's train clips plus `extra_clips` more rendered from the
train split (`vision_experts.extra_train_clips`: never a val / test clip), then scores the test
split: per-patch object identity (chance ~1/12) and per-frame presence of each named object
("some patch says red circle") against the "always absent" baseline, both measured in the
same run. Without `--world` it generates the quick demo's world (`configs/demo.py:quick`) in a
temporary directory.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def patch_targets(truths, frames, names, grid: int, every: int = 2):
  """(frames, per-patch object index (N, grid*grid) with len(names) = none, presence (N, names))."""
  index = {n: i for i, n in enumerate(names)}
  centres = np.arange(grid) + 0.5
  xs, labels, present = [], [], []
  for truth, clip in zip(truths, frames):
    side = float(clip.shape[1])
    for t in range(0, min(len(clip), truth.num_frames), every):
      lab = np.full((grid, grid), len(names), np.int32)
      pres = np.zeros(len(names), np.float32)
      for i, name in enumerate(truth.names):
        if not truth.visible[t, i]:
          continue
        x0, y0, x1, y1 = truth.boxes[t, i] / side * grid
        rows, cols = (centres >= y0) & (centres <= y1), (centres >= x0) & (centres <= x1)
        rows[min(int((y0 + y1) / 2), grid - 1)] = True  # boxes smaller than a patch
        cols[min(int((x0 + x1) / 2), grid - 1)] = True
        lab[np.ix_(rows, cols)] = index[name]
        pres[index[name]] = 1.0
      xs.append(clip[t])
      labels.append(lab.reshape(-1))
      present.append(pres)
  return np.stack(xs), np.stack(labels), np.stack(present)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--world", default="", help="a generated toy world (default: a new quick one)")
  parser.add_argument("--extra_clips", type=int, default=300)
  parser.add_argument("--steps", type=int, default=1200)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from aotd_jax.data import toyworld
  from aotd_jax.demo import vision_experts as ve
  from aotd_jax.models import owlv2_processing as proc
  from aotd_jax.models.clip import CLIPVisionConfig, CLIPVisionTransformer
  from configs.demo import get_config

  tmp = None
  world = args.world
  if not world:
    tmp = tempfile.TemporaryDirectory()
    world = os.path.join(tmp.name, "world")
    w = get_config("quick").world
    toyworld.generate_world(world, seed=w.seed, num_train=w.num_train, num_val=w.num_val,
                            num_test=w.num_test, size=w.size, fps=w.fps, seconds=w.seconds,
                            questions_per_type=w.questions_per_type)
  names = list(toyworld.ALL_OBJECT_NAMES)
  cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, projection_dim=32,
                         num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8)
  grid = cfg.image_size // cfg.patch_size
  truths, frames, _ = ve._world(world, "train")
  more = ve.extra_train_clips(world, args.extra_clips)
  test_truths, test_frames, _ = ve._world(world, "test")
  x_tr, l_tr, _ = patch_targets(truths + more[0], frames + more[1], names, grid)
  x_te, l_te, p_te = patch_targets(test_truths, test_frames, names, grid)
  x_tr, x_te = proc.preprocess(list(x_tr), cfg.image_size), proc.preprocess(list(x_te), cfg.image_size)
  print(f"machine: {os.cpu_count()} CPUs, jax {jax.__version__}; world {world}: "
        f"{len(truths)} + {args.extra_clips} rendered train clips ({len(x_tr)} frames), "
        f"{len(test_truths)} test clips ({len(x_te)} frames)")

  class PatchClassifier(nnx.Module):
    def __init__(self, rngs):
      self.vision_model = CLIPVisionTransformer(cfg, rngs=rngs)
      self.head = nnx.Linear(cfg.hidden_size, len(names) + 1, rngs=rngs)

    def __call__(self, pixels):
      return self.head(self.vision_model(pixels).last_hidden_state[:, 1:])

  model = PatchClassifier(nnx.Rngs(0))
  sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, 40, args.steps, args.lr * 0.05)
  opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                         optax.adamw(sched, weight_decay=1e-4)), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, pixels, labels):
    def loss_fn(model):
      weight = jnp.where(labels == len(names), 0.2, 1.0)  # background patches count less
      ce = optax.softmax_cross_entropy_with_integer_labels(model(pixels), labels)
      return (ce * weight).sum() / weight.sum()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  predict = nnx.jit(lambda model, pixels: jnp.argmax(model(pixels), -1))
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for s in range(args.steps):
    idx = rng.integers(0, len(x_tr), args.batch)
    loss = step(model, opt, jnp.asarray(x_tr[idx]), jnp.asarray(l_tr[idx]))
  loss = float(loss)
  train_s = time.perf_counter() - start

  pred = np.concatenate([np.asarray(predict(model, jnp.asarray(x_te[i:i + 256])))
                         for i in range(0, len(x_te), 256)])
  said = np.stack([(pred == k).any(1) for k in range(len(names))], 1).astype(np.float32)
  on_object = l_te < len(names)
  identity = float((pred[on_object] == l_te[on_object]).mean())
  presence = float((said == p_te).mean())
  absent = float(1.0 - p_te.mean())
  print(f"trained {args.steps} steps in {train_s:.0f} s (final loss {loss:.3f})")
  print(f"test per-patch object identity: {identity:.3f}  (chance {1 / len(names):.3f}: "
        f"{identity * len(names):.1f}x)")
  print(f"test per-frame presence of each name: {presence:.3f}  (always absent {absent:.3f}); "
        f"recall {float((said * p_te).sum() / p_te.sum()):.3f}")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
