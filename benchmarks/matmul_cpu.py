r"""The train step's matmuls alone: XLA's f32 dots vs PyTorch's, shape by shape, in one run.

  OMP_NUM_THREADS=2 python benchmarks/matmul_cpu.py                 # the Llama bench config
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/matmul_cpu.py  # another dot backend

For `configs/llama_tiny.py:bench` at batch x seq tokens, times every distinct matmul of a
train step (forward X @ W, backward dX = dY @ W^T has the same shape class, dW = X^T @ dY)
as a jitted `jnp.dot` and as `torch.mm` on the same arrays, and prints GFLOP/s and the ratio
(torch time / ours: > 1 means ours is faster). On a CPU with AMX-BF16 it also times our
AMX kernel (`aotd_jax/kernels/amx_matmul.py`) for `Precision.HIGH` (bf16x3) and
`Precision.HIGHEST` (bf16x6, float32 accuracy); the weight gradients read X^T in place, as in
the train step. Each one's max error relative to a float64 product is printed too. The issue's
train-step target (1.2x PyTorch) needs these to run at least as fast as
PyTorch's. `benchmarks/RESULTS.md` has the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_matmul_shapes(
  tokens: int, hidden: int, kv: int, intermediate: int, vocab: int
) -> list[tuple[int, int, int]]:
  """(M, K, N) of the forward matmuls and of the weight gradients (X^T dY) of a Llama step."""
  fwd = [
    (tokens, hidden, hidden),
    (tokens, hidden, kv),
    (tokens, hidden, intermediate),
    (tokens, intermediate, hidden),
    (tokens, hidden, vocab),
    (tokens, vocab, hidden),
  ]
  dw = [
    (hidden, tokens, hidden),
    (hidden, tokens, intermediate),
    (intermediate, tokens, hidden),
    (hidden, tokens, vocab),
  ]
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

  from aotd_jax.kernels import amx_matmul
  from configs.llama_tiny import get_config

  torch.set_num_threads(args.threads)
  m = get_config("bench").model
  kv = m.hidden_size // m.num_attention_heads * m.num_key_value_heads
  shapes = train_matmul_shapes(
    args.batch * args.seq, m.hidden_size, kv, m.intermediate_size, m.vocab_size
  )
  dot = jax.jit(jnp.dot)
  high = amx_matmul.available()
  kernel = jax.jit(amx_matmul.kernel_matmul, static_argnums=(2, 3, 4))  # (a, b, ta, tb, passes)
  rng = np.random.default_rng(0)
  total = {"jax": 0.0, "torch": 0.0, "high": 0.0, "highest": 0.0}
  print(
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} jax {jax.__version__} "
    f"torch {torch.__version__} ({args.threads} threads), AMX kernel (high: bf16x3, "
    f"highest: bf16x6): {'yes' if high else 'no (not timed)'}"
  )
  for i, (mm, k, n) in enumerate(shapes):
    a = rng.standard_normal((mm, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    err = lambda out: float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    times = {
      "jax": _time(lambda: dot(ja, jb).block_until_ready(), args.reps),
      "torch": _time(lambda: torch.mm(ta, tb), args.reps),
    }
    errs = {"jax": err(dot(ja, jb)), "torch": err(torch.mm(ta, tb).numpy())}
    flops = 2.0 * mm * k * n
    line = (
      f"{mm:5d} x {k:5d} x {n:5d}: jax {flops / times['jax'] / 1e9:6.1f}  torch "
      f"{flops / times['torch'] / 1e9:6.1f}"
    )
    if high:
      weight_grad = i >= 6  # X^T @ dY: the kernel reads X (tokens x M) transposed in place
      ha = jnp.asarray(a.T.copy()) if weight_grad else ja
      for name, passes in (("high", 3), ("highest", 6)):
        run = lambda: kernel(ha, jb, weight_grad, False, passes).block_until_ready()
        times[name] = _time(run, args.reps)
        errs[name] = err(run())
        line += f"  {name} {flops / times[name] / 1e9:6.1f}"
    line += f" GFLOP/s  ratio {times['torch'] / times['jax']:.2f}x"
    if high:
      line += f", high {times['torch'] / times['high']:.2f}x, highest {times['torch'] / times['highest']:.2f}x"
    print(line + "  |  rel. error " + " ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    for key, t in times.items():
      total[key] += t
  print(
    f"all shapes once: jax {total['jax'] * 1e3:.1f} ms, torch {total['torch'] * 1e3:.1f} ms, "
    f"ratio {total['torch'] / total['jax']:.2f}x"
    + (
      f"; high {total['high'] * 1e3:.1f} ms, ratio {total['torch'] / total['high']:.2f}x"
      f"; highest {total['highest'] * 1e3:.1f} ms, ratio "
      f"{total['torch'] / total['highest']:.2f}x"
      if high
      else ""
    )
  )


if __name__ == "__main__":
  main()
