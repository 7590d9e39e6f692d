"""The timed part of the student GPU benchmarks (`onevision_gpu.py`, `qwen2_vl_gpu.py`): the
shared flags, then the first (compiling) step, the median of the timed steps, MFU and peak
memory, printed as one JSON object."""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def add_flags(ap: argparse.ArgumentParser, *, frames: int) -> None:
  """The flags both student benchmarks take (`frames` is the student's default)."""
  ap.add_argument("--batch", type=int, default=1, help="clips per step")
  ap.add_argument("--frames", type=int, default=frames)
  ap.add_argument("--text", type=int, default=128, help="text tokens per sample")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--param_dtype", default="bfloat16", choices=["bfloat16", "float32"])
  ap.add_argument(
    "--attention_impl", default="causal", choices=["xla", "dot_product_attention", "causal"]
  )
  ap.add_argument("--remat", type=int, default=1)
  ap.add_argument("--peak_flops", type=float, default=989e12, help="bf16 dense peak of the GPU")
  ap.add_argument(
    "--cpu_smoke", action="store_true", help="tiny shapes on CPUs (checks the script)"
  )


def run(args, model, trainer, batch, *, flops: float, init_s: float, **extra) -> dict:
  """Times `args.steps` train steps after the first; prints and returns the figures.

  `flops` is the model FLOPs of one step; `extra` adds rows (frames, video tokens, ...).
  """
  import jax
  from flax import nnx

  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  seq = batch["input_ids"].shape[1]
  t0 = time.perf_counter()
  first = trainer.train_step(batch)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    m = trainer.train_step(batch)
    times.append(time.perf_counter() - t0)
  dt = float(np.median(times))
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
  out = dict(
    device=str(jax.devices()[0].device_kind),
    jax=jax.__version__,
    params_B=round(n_params / 1e9, 3),
    param_dtype=args.param_dtype,
    dtype="bfloat16",
    remat=bool(args.remat),
    attention_impl=args.attention_impl,
    batch=args.batch,
    **extra,
    seq=seq,
    tokens_per_step=args.batch * seq,
    init_s=round(init_s, 1),
    first_step_s=round(compile_s, 1),
    first_loss=round(float(first.loss), 4),
    loss=round(float(m.loss), 4),
    step_s=round(dt, 4),
    step_times_s=[round(t, 4) for t in times],
    tokens_per_s=round(args.batch * seq / dt, 1),
    model_tflop_per_step=round(flops / 1e12, 2),
    achieved_tflops=round(flops / dt / 1e12, 1),
    mfu=round(flops / dt / args.peak_flops, 4),
    peak_memory_GiB=round(stats.get("peak_bytes_in_use", 0) / 2**30, 1),
  )
  assert math.isfinite(out["loss"]), out
  print(json.dumps(out, indent=1))
  return out
