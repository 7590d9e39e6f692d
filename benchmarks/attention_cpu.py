r"""Causal attention forward + backward on the CPU: blocked vs one einsum block vs PyTorch SDPA.

  OMP_NUM_THREADS=2 python benchmarks/attention_cpu.py            # the Llama bench layer's shape
  python benchmarks/attention_cpu.py --batch=4 --length=192         # the LLaVA bench LM's shape

Times one layer's attention core (queries after RoPE -> outputs, then the gradients of all
three inputs) for `blocked_causal_attention` at several block sizes, for the einsum path the
model used before (`attention_block_size=0`), and for transformers' default on the same
tensors, `torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (a fused
flash-attention kernel on the CPU), in one process. The outputs are checked to agree first.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from aotd_jax.kernels import causal_attention as attention_kernel
from aotd_jax.models.causal_attention import blocked_causal_attention


def einsum_attention(q, k, v, mask):
  """The einsum path of `LlamaAttention` (one L x L block)."""
  b, length, kv, groups, d = q.shape
  s = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32) * d ** -0.5
  s = jnp.where(mask[:, None, None], s, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bkgls,bskd->blkgd", jax.nn.softmax(s, -1), v).reshape(b, length, -1)


def median_ms(fn, reps: int) -> float:
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--blocks", default="32,64,128", help="comma-separated block sizes")
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args(argv)
  b, length, h, kv, d = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
  torch.set_num_threads(torch.get_num_threads())
  print(f"machine: {jax.device_count()} jax cpu devices, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); attention fwd+bwd, batch {b}, length {length}, "
        f"{h} heads / {kv} kv heads of {d}, float32, causal")
  rng = np.random.default_rng(0)
  q = rng.standard_normal((b, length, kv, h // kv, d), np.float32)
  k = rng.standard_normal((b, length, kv, d), np.float32)
  v = rng.standard_normal((b, length, kv, d), np.float32)
  mask = jnp.asarray(np.tril(np.ones((length, length), bool))[None].repeat(b, 0))
  weights = rng.standard_normal((b, length, h * d), np.float32)

  def grad_fn(attention):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v) * weights), argnums=(0, 1, 2)))

  contenders = {"einsum (one block)": lambda q, k, v: einsum_attention(q, k, v, mask)}
  for block in (int(x) for x in args.blocks.split(",")):
    contenders[f"blocked {block}"] = lambda q, k, v, block=block: blocked_causal_attention(
        q, k, v, mask, block, cpu_kernel=False)
    if attention_kernel.use_kernel(q, k, v, mask):
      contenders[f"kernel {block}"] = lambda q, k, v, block=block: attention_kernel.causal_attention(
          q, k, v, mask, block)

  tq, tk, tv = (torch.tensor(x).transpose(1, 2).contiguous().requires_grad_() for x in
                (q.reshape(b, length, h, d), k, v))
  tw = torch.tensor(weights)

  def torch_out():
    kk, vv = tk.repeat_interleave(h // kv, 1), tv.repeat_interleave(h // kv, 1)
    out = torch.nn.functional.scaled_dot_product_attention(tq, kk, vv, is_causal=True)
    return out.transpose(1, 2).reshape(b, length, h * d)

  def torch_step():
    tq.grad = tk.grad = tv.grad = None
    (torch_out() * tw).sum().backward()

  ref = torch_out().detach().numpy()
  torch_ms = median_ms(torch_step, args.reps)
  print(f"{'torch SDPA (flash, CPU)':22s} {torch_ms:7.1f} ms")
  for name, attention in contenders.items():
    np.testing.assert_allclose(np.asarray(jax.jit(attention)(q, k, v)), ref, atol=1e-4)
    g = grad_fn(attention)
    ms = median_ms(lambda: jax.block_until_ready(g(q, k, v)), args.reps)
    print(f"{name:22s} {ms:7.1f} ms  ->  jax/torch speed {torch_ms / ms:.2f}x")


if __name__ == "__main__":
  main()
