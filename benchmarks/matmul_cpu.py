r"""The train step's matmuls alone: XLA's f32 dots vs PyTorch's, shape by shape, in one run.

  OMP_NUM_THREADS=2 python benchmarks/matmul_cpu.py                 # the Llama bench config
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/matmul_cpu.py  # another dot backend

For `configs/llama_tiny.py:bench` at batch x seq tokens, times every distinct matmul of a
train step (forward X @ W, backward dX = dY @ W^T has the same shape class, dW = X^T @ dY)
as a jitted `jnp.dot` and as `torch.mm` on the same arrays, and prints GFLOP/s and the ratio
(torch time / ours: > 1 means ours is faster). The issue's train-step target (1.2x
PyTorch) needs these to run at least as fast as PyTorch's. `benchmarks/RESULTS.md` has the
figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_matmul_shapes(tokens: int, hidden: int, kv: int, intermediate: int,
                        vocab: int) -> list[tuple[int, int, int]]:
  """(M, K, N) of the forward matmuls and of the weight gradients (X^T dY) of a Llama step."""
  fwd = [(tokens, hidden, hidden), (tokens, hidden, kv), (tokens, hidden, intermediate),
         (tokens, intermediate, hidden), (tokens, hidden, vocab), (tokens, vocab, hidden)]
  dw = [(hidden, tokens, hidden), (hidden, tokens, intermediate),
        (intermediate, tokens, hidden), (hidden, tokens, vocab)]
  return fwd + dw


def _time(fn, reps: int) -> float:
  fn()
  t0 = time.perf_counter()
  for _ in range(reps):
    fn()
  return (time.perf_counter() - t0) / reps


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = parser.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from configs.llama_tiny import get_config
  torch.set_num_threads(args.threads)
  m = get_config("bench").model
  kv = m.hidden_size // m.num_attention_heads * m.num_key_value_heads
  shapes = train_matmul_shapes(args.batch * args.seq, m.hidden_size, kv, m.intermediate_size,
                               m.vocab_size)
  dot = jax.jit(jnp.dot)
  rng = np.random.default_rng(0)
  total_j = total_t = 0.0
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} jax {jax.__version__} "
        f"torch {torch.__version__} ({args.threads} threads)")
  for mm, k, n in shapes:
    a = rng.standard_normal((mm, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    tj = _time(lambda: dot(ja, jb).block_until_ready(), args.reps)
    tt = _time(lambda: torch.mm(ta, tb), args.reps)
    total_j, total_t = total_j + tj, total_t + tt
    flops = 2.0 * mm * k * n
    print(f"{mm:5d} x {k:5d} x {n:5d}: jax {flops / tj / 1e9:6.1f}  torch "
          f"{flops / tt / 1e9:6.1f} GFLOP/s  ratio {tt / tj:.2f}x")
  print(f"all shapes once: jax {total_j * 1e3:.1f} ms, torch {total_t * 1e3:.1f} ms, "
        f"ratio {total_t / total_j:.2f}x")


if __name__ == "__main__":
  main()
