r"""Expert throughput on CPU — OWLv2 part.

Measures, in one run on the same CPU and weights (a tiny-ish OWLv2 built by transformers and
loaded into ours with `aotd_jax.hf.from_pretrained`), the image side of text-query detection
(queries embedded once, as `experts.backends.owlv2` does; pixel values precomputed):
  1. our jitted `detect` one frame at a time (batch 1),
  2. our jitted `detect` on batches of `--batch` frames,
  3. transformers' PyTorch `Owlv2ForObjectDetection` on the same batches (eager, no_grad),
and prints frames/s and the ratios batched / per-frame and ours / PyTorch. Then it counts XLA
compilations over 100 clips of random lengths run through `experts.batching.BucketedJit` with
buckets 1,2,4,8,16,32: the count must stay at most the number of buckets.

  python benchmarks/experts_cpu.py                 # the figures in benchmarks/RESULTS.md
  python benchmarks/experts_cpu.py --preset=tiny   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(
  0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # run from a checkout

PRESETS = {
  # ~4M-parameter towers: 128 px, 16 px patches (64 patches), 4 vision layers of width 128.
  "cpu": dict(
    image_size=128,
    patch_size=16,
    vision_hidden=128,
    vision_layers=4,
    vision_heads=4,
    text_hidden=64,
    text_layers=2,
    frames=64,
    batch=32,
  ),
  # toy-world detector size: 64 px, 8 px patches (64 patches), 2 layers of width 64.
  "toy": dict(
    image_size=64,
    patch_size=8,
    vision_hidden=64,
    vision_layers=2,
    vision_heads=2,
    text_hidden=64,
    text_layers=2,
    frames=64,
    batch=32,
  ),
  "tiny": dict(
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=1,
    frames=16,
    batch=8,
  ),
}
BUCKETS = (1, 2, 4, 8, 16, 32)


def build(p, path):
  import torch
  import transformers

  torch.manual_seed(0)
  cfg = transformers.Owlv2Config(
    text_config=dict(
      hidden_size=p["text_hidden"],
      intermediate_size=4 * p["text_hidden"],
      num_hidden_layers=p["text_layers"],
      num_attention_heads=2,
      vocab_size=1000,
      max_position_embeddings=16,
    ),
    vision_config=dict(
      hidden_size=p["vision_hidden"],
      intermediate_size=4 * p["vision_hidden"],
      num_hidden_layers=p["vision_layers"],
      num_attention_heads=p["vision_heads"],
      image_size=p["image_size"],
      patch_size=p["patch_size"],
    ),
    projection_dim=p["text_hidden"],
  )
  ref = transformers.Owlv2ForObjectDetection(cfg).eval()
  ref.save_pretrained(path)
  from aotd_jax import hf

  return ref, hf.from_pretrained(path)


def timed(fn, repeats=3):
  """Best wall time of `repeats` runs of fn() (after one warm-up run)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  ap.add_argument("--clips", type=int, default=100)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()
  p = PRESETS[args.preset]

  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  from experts.batching import BucketedJit, count_xla_compilations, pad_rows, plan_chunks

  with tempfile.TemporaryDirectory() as tmp:
    ref, ours = build(p, tmp)
  rng = np.random.default_rng(0)
  n, bsz, s = p["frames"], p["batch"], p["image_size"]
  pixels = rng.normal(size=(n, 3, s, s)).astype(np.float32)
  ids = rng.integers(1, 999, size=(4, 16)).astype(np.int64)
  mask = np.ones_like(ids)
  queries = ours.embed_text_queries(ids, mask)
  graphdef, state = nnx.split(ours)

  def detect_fn(state, x, q):
    out = nnx.merge(graphdef, state).detect(x, q)
    return out.logits, out.pred_boxes, out.objectness_logits

  detect = jax.jit(detect_fn)
  dev_pixels = jnp.asarray(pixels)

  singles = [dev_pixels[i : i + 1] for i in range(n)]  # sliced up front: time only the model
  batches = [dev_pixels[i : i + bsz] for i in range(0, n, bsz)]

  def per_frame():
    for x in singles:
      jax.block_until_ready(detect(state, x, queries))

  def batched():
    for x in batches:
      jax.block_until_ready(detect(state, x, queries))

  def torch_run(batch):
    frames = n if batch > 1 else min(n, 16)  # per-frame eager torch is slow: time 16 frames
    with torch.no_grad():
      for i in range(0, frames, batch):
        x = torch.from_numpy(pixels[i : i + batch])
        ref(
          input_ids=torch.from_numpy(np.tile(ids, (len(x), 1))),
          attention_mask=torch.from_numpy(np.tile(mask, (len(x), 1))),
          pixel_values=x,
        )

  # The four runs are interleaved, best of `repeats` each, so that all see the same load
  # (a shared machine's load swings within seconds). PyTorch runs with one intra-op thread: on
  # a loaded 2-core machine its default threads spin against other processes (10x slower);
  # on an idle machine two threads could be up to 2x faster than the figure here.
  torch.set_num_threads(1)
  runs = {
    "frame": per_frame,
    "batch": batched,
    "torch_batch": lambda: torch_run(bsz),
    "torch_frame": lambda: torch_run(1),
  }
  for fn in runs.values():
    fn()
  best = {k: float("inf") for k in runs}
  for _ in range(args.repeats):
    for k, fn in runs.items():
      t = time.perf_counter()
      fn()
      best[k] = min(best[k], time.perf_counter() - t)
  t_frame, t_batch, t_torch = best["frame"], best["batch"], best["torch_batch"]
  t_torch_frame = best["torch_frame"] * n / min(n, 16)
  fps = lambda t: n / t

  # Where the batched run stands: model FLOPs per frame (XLA's count) and this CPU's f32 peak
  # (a large jitted matmul, same run).
  cost = detect.lower(state, dev_pixels[:bsz], queries).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_frame = float(cost["flops"]) / bsz
  big = jnp.ones((1024, 1024), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  peak = 2 * 1024**3 / timed(lambda: jax.block_until_ready(matmul(big)), repeats=20)

  # Compilations over clips of random lengths (frames on the host, as decoded). (a) through
  # experts.batching.BucketedJit, counting the expert's traces and every XLA compilation (its
  # eager un-padding slices and concatenations compile once per new length); (b) the same
  # chunk plan with the un-padding done on the host: only the expert compiles.
  lengths = rng.integers(1, 2 * BUCKETS[-1] + 1, size=args.clips)
  frame = pixels[:1]
  expert = BucketedJit(lambda x, st, q: detect_fn(st, x, q), buckets=BUCKETS, name="owlv2")
  with count_xla_compilations() as total_bucketed:
    for length in lengths:
      jax.block_until_ready(expert(np.repeat(frame, int(length), 0), state, queries))

  def host_glue_fn(state, x, q):  # a new function: nothing cached from the runs above
    return detect_fn(state, x, q)

  host_detect = jax.jit(host_glue_fn)
  with count_xla_compilations() as total_host:
    for length in lengths:
      clip = np.repeat(frame, int(length), 0)
      for start, stop, size in plan_chunks(len(clip), BUCKETS):
        out = host_detect(state, pad_rows(clip[start:stop], size), queries)
        _ = [np.asarray(o)[: stop - start] for o in out]

  result = {
    "preset": args.preset,
    "frames": n,
    "batch": bsz,
    "image_size": s,
    "ours_per_frame_fps": round(fps(t_frame), 1),
    "ours_batched_fps": round(fps(t_batch), 1),
    "torch_per_frame_fps": round(fps(t_torch_frame), 1),
    "torch_batched_fps": round(fps(t_torch), 1),
    "mflop_per_frame": round(flops_per_frame / 1e6, 1),
    "matmul_peak_gflops": round(peak / 1e9, 1),
    "per_frame_fraction_of_peak": round(fps(t_frame) * flops_per_frame / peak, 2),
    "batched_fraction_of_peak": round(fps(t_batch) * flops_per_frame / peak, 2),
    "batched_vs_per_frame": round(t_frame / t_batch, 2),
    "batched_vs_torch_batched": round(t_torch / t_batch, 2),
    "per_frame_vs_torch_per_frame": round(t_torch_frame / t_frame, 2),
    "clips": args.clips,
    "clip_frames": int(lengths.sum()),
    "buckets": list(BUCKETS),
    "bucketedjit_expert_compiles": expert.compiles,
    "bucketedjit_all_xla_compilations": total_bucketed[0],
    "host_unpad_all_xla_compilations": total_host[0],
  }
  print(json.dumps(result, indent=2))
  assert expert.compiles <= len(BUCKETS), "more expert compilations than buckets"
  assert total_host[0] <= len(BUCKETS), "more XLA compilations than buckets"


if __name__ == "__main__":
  main()
