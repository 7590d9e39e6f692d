r"""Attention on the CPU: aotd_jax's C++ kernel vs XLA's ops vs PyTorch SDPA, same tensors.

  OMP_NUM_THREADS=2 python benchmarks/attention_cpu.py            # the Llama bench layer's shape
  python benchmarks/attention_cpu.py --batch=4 --length=192         # the LLaVA bench LM's shape
  python benchmarks/attention_cpu.py --full --batch=32 --length=65 --heads=6 --kv_heads=6
                                                                    # the LLaVA bench vision tower
  python benchmarks/attention_cpu.py --full --forward_only --batch=1 --length=3601 --heads=12 \
      --kv_heads=12 --reps=3                                        # OWLv2-B/16 at 960 px, inference

Causal (default): times one layer's attention core (queries after RoPE -> outputs, then the
gradients of all three inputs) for the query-block path of `blocked_causal_attention` at several
block sizes, with the kernel (`aotd_jax/kernels/attention.py`) and with XLA's ops, for the one
einsum block the model used before (`attention_block_size=0`), and for transformers' default on
the same tensors, `torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (a fused
flash-attention kernel on the CPU), in one process.

`--full`: attention without a causal mask (CLIP's towers, OWLv2's backbone): the kernel with
`causal=False` vs CLIP's einsum path (`CLIPAttention` with `cpu_kernels=False`) vs SDPA.
`--forward_only` times the forward pass alone (expert inference). Outputs are checked to agree
first.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(
  0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # run from a checkout
from aotd_jax.kernels import attention as attention_kernel
from aotd_jax.layers.causal_attention import blocked_causal_attention


def einsum_attention(q, k, v, mask):
  """The einsum path of `LlamaAttention` (one L x L block) and of `CLIPAttention`."""
  b, length, kv, groups, d = q.shape
  s = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32) * d**-0.5
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
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--blocks", default="32,64,128", help="comma-separated block sizes (causal)")
  parser.add_argument("--full", action="store_true", help="no causal mask (CLIP / OWLv2 towers)")
  parser.add_argument("--forward_only", action="store_true", help="time the forward pass alone")
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args(argv)
  b, length, h, kv, d = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
  torch.set_num_threads(torch.get_num_threads())
  print(
    f"machine: {jax.device_count()} jax cpu devices, torch {torch.__version__} "
    f"({torch.get_num_threads()} threads); attention {'fwd' if args.forward_only else 'fwd+bwd'}, "
    f"batch {b}, length {length}, {h} heads / {kv} kv heads of {d}, float32, "
    f"{'no mask' if args.full else 'causal'}"
  )
  rng = np.random.default_rng(0)
  q = rng.standard_normal((b, length, kv, h // kv, d), np.float32)
  k = rng.standard_normal((b, length, kv, d), np.float32)
  v = rng.standard_normal((b, length, kv, d), np.float32)
  causal = np.tril(np.ones((length, length), bool))
  mask = jnp.asarray(
    np.broadcast_to(np.ones_like(causal) if args.full else causal, (b, length, length))
  )
  weights = rng.standard_normal((b, length, h * d), np.float32)
  kernel = attention_kernel.use_kernel(q, k, v, mask)

  contenders = {
    ("XLA einsum" if args.full else "einsum (one block)"): lambda q, k, v: einsum_attention(
      q, k, v, mask
    )
  }
  if args.full and kernel:
    # No mask operand at all, as CLIP's vision tower calls it (a (B, L, L) mask of ones would
    # be 415 MB for 32 frames at 3601 tokens).
    contenders["kernel"] = lambda q, k, v: attention_kernel.attention(
      q, k, v, None, 64, causal=False
    )
  for block in [] if args.full else [int(x) for x in args.blocks.split(",")]:
    contenders[f"blocked {block}"] = lambda q, k, v, block=block: blocked_causal_attention(
      q, k, v, mask, block, cpu_kernel=False
    )
    if kernel:
      contenders[f"kernel {block}"] = lambda q, k, v, block=block: attention_kernel.attention(
        q, k, v, mask, block, causal=True
      )

  tq, tk, tv = (
    torch.tensor(x).transpose(1, 2).contiguous().requires_grad_(not args.forward_only)
    for x in (q.reshape(b, length, h, d), k, v)
  )
  tw = torch.tensor(weights)

  def torch_out():
    kk, vv = tk.repeat_interleave(h // kv, 1), tv.repeat_interleave(h // kv, 1)
    out = torch.nn.functional.scaled_dot_product_attention(tq, kk, vv, is_causal=not args.full)
    return out.transpose(1, 2).reshape(b, length, h * d)

  def torch_step():
    if args.forward_only:
      with torch.no_grad():
        return torch_out()
    tq.grad = tk.grad = tv.grad = None
    (torch_out() * tw).sum().backward()

  with torch.no_grad():
    ref = torch_out().numpy()
  torch_ms = median_ms(torch_step, args.reps)
  print(f"{'torch SDPA (flash, CPU)':22s} {torch_ms:7.1f} ms")
  for name, attention in contenders.items():
    np.testing.assert_allclose(np.asarray(jax.jit(attention)(q, k, v)), ref, atol=1e-4)
    if args.forward_only:
      g = jax.jit(attention)
    else:
      g = jax.jit(
        jax.grad(lambda q, k, v, f=attention: jnp.sum(f(q, k, v) * weights), argnums=(0, 1, 2))
      )
    ms = median_ms(lambda: jax.block_until_ready(g(q, k, v)), args.reps)
    print(f"{name:22s} {ms:7.1f} ms  ->  jax/torch speed {torch_ms / ms:.2f}x")


if __name__ == "__main__":
  main()
