r"""Prefill of a KV cache: over the prompt's own keys (`prefill=True`) vs over every cache slot.

  OMP_NUM_THREADS=2 python benchmarks/prefill_cpu.py

For the Llama bench model (`configs/llama_tiny.py:bench`, ~30M parameters, random weights), fills
a cache of prompt + 64 slots with prompts of several lengths, both ways, in one process: time
(median of 5) and the compiled program's temporary memory, and the largest difference between
the two last-token logits. `generate` takes the `prefill=True` path; with it the prompt's queries
run on the query blocks and the CPU attention kernel (docs/llama.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--shapes", default="8x256,4x1024,1x4096", help="comma-separated batch x prompt length"
  )
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args(argv)
  import jax
  import numpy as np
  from flax import nnx

  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
  from configs.llama_tiny import get_config

  fields = dict(get_config("bench").model)
  cfg = LlamaConfig(**{k: v for k, v in fields.items() if k in LlamaConfig.__dataclass_fields__})
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  print(
    f"jax {jax.__version__}, {jax.devices()[0].platform}; Llama bench model, cache = prompt + 64"
  )
  for spec in args.shapes.split(","):
    b, length = (int(x) for x in spec.split("x"))
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (b, length)).astype(np.int32)
    mask = np.concatenate([np.ones((b, length), np.int32), np.zeros((b, 64), np.int32)], 1)
    cache = model.init_cache(b, length + 64)
    res = {}
    for prefill in (False, True):
      fn = jax.jit(
        lambda m, c, prefill=prefill: (
          m(ids, mask, cache=c, logits_to_keep=1, prefill=prefill).logits
        )
      )
      temp = fn.lower(model, cache).compile().memory_analysis().temp_size_in_bytes / 2**20
      logits = np.asarray(fn(model, cache))
      times = []
      for _ in range(args.reps):
        t0 = time.perf_counter()
        fn(model, cache).block_until_ready()
        times.append(time.perf_counter() - t0)
      res[prefill] = (float(np.median(times)) * 1e3, temp, logits)
    (t0, m0, l0), (t1, m1, l1) = res[False], res[True]
    print(
      f"{b} x {length}: every slot {t0:.0f} ms, {m0:.0f} MiB temp | prefill=True {t1:.0f} ms, "
      f"{m1:.0f} MiB temp | {t0 / t1:.2f}x, max |logit diff| {np.abs(l0 - l1).max():.1e}"
    )


if __name__ == "__main__":
  main()
