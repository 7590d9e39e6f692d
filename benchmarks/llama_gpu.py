r"""Llama on one GPU: our jitted train step and KV-cache decode vs transformers' PyTorch on CUDA.

  python benchmarks/llama_gpu.py                       # the CPU benchmark's ~30M config
  python benchmarks/llama_gpu.py --hidden=2048 --layers=16 --intermediate=5632 --vocab=32000

The same comparison as `llama_cpu.py` on a GPU, with the same weights: an AdamW train step
(median of `--steps`, interleaved) and greedy decoding with a KV cache against transformers'
`generate`, in float32 with full-precision matmuls on both sides (JAX
`jax_default_matmul_precision="highest"`, torch TF32 off), then in bfloat16 (our bf16 params and
compute; torch's model in bf16). Checks that the first-step losses agree, that the decoded
tokens agree, and that the CPU-only FFI kernels (`aotd_jax/kernels`) stay out of the GPU program.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llama_cpu import build_jax_step, build_torch_step, rotated, train_flops  # noqa: E402


def _timed_rounds(calls, rounds: int, sync) -> None:
  for i in range(rounds):
    for times, call in rotated(calls, i):
      sync()
      start = time.perf_counter()
      call()
      sync()
      times.append(time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--intermediate", type=int, default=1408)
  parser.add_argument("--layers", type=int, default=7)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument(
    "--attention_impl",
    default="xla",
    help="ours: xla (blocked, the default) or causal (cuDNN flash attention in bf16)",
  )
  parser.add_argument(
    "--cpu_smoke", action="store_true", help="run on CPUs (checks the script only)"
  )
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from flax import nnx
  from aotd_jax import hf
  from aotd_jax.models import generate as gen
  from aotd_jax.models.options import with_options  # rebuilds a loaded model under other options

  gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  if not gpu and not args.cpu_smoke:
    raise SystemExit(
      f"needs a GPU for both JAX ({jax.default_backend()}) and torch "
      f"(cuda: {torch.cuda.is_available()})"
    )
  dev = "cuda" if gpu else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  fields = dict(
    vocab_size=args.vocab,
    hidden_size=args.hidden,
    intermediate_size=args.intermediate,
    num_hidden_layers=args.layers,
    num_attention_heads=args.heads,
    num_key_value_heads=args.kv_heads,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    initializer_range=0.02,
  )
  torch.manual_seed(0)
  ref_cpu = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
  tmp = tempfile.mkdtemp()
  ref_cpu.save_pretrained(tmp)
  n_params = sum(p.numel() for p in ref_cpu.parameters())
  norms = sum(p.numel() for n, p in ref_cpu.named_parameters() if "norm" in n)
  matmul_params = n_params - norms - args.vocab * args.hidden
  print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}, torch {torch.__version__}")
  print(
    f"model: {n_params / 1e6:.1f}M params, batch {args.batch} x seq {args.seq}, AdamW, "
    f"our attention_impl={args.attention_impl}"
  )
  rng = np.random.default_rng(0)
  ids_np = rng.integers(3, args.vocab, (args.batch, args.seq)).astype(np.int32)
  prompt = rng.integers(3, args.vocab, (args.batch, args.prompt)).astype(np.int32)
  sync = lambda: (torch.cuda.synchronize() if gpu else None, jax.effects_barrier())

  for dtype in ("float32", "bfloat16"):
    precision = "highest" if dtype == "float32" else "default"
    with jax.default_matmul_precision(precision):
      model = hf.from_pretrained(tmp, dtype=jnp.dtype(dtype))
      model = with_options(model, attention_impl=args.attention_impl)
      ref = transformers.LlamaForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype)).to(dev)
      cfg = model.config
      graphdef, params, opt_state, step = build_jax_step(model)
      ids = jnp.asarray(ids_np)
      state = [params, opt_state]

      def run_jax():
        p, o, loss = step(*state, ids)
        state[:] = [p, o]
        return loss.block_until_ready()

      torch_step = build_torch_step(ref.train())
      ids_t = torch.tensor(ids_np, dtype=torch.long, device=dev)
      first_jax, first_torch = float(run_jax()), float(torch_step(ids_t))
      jt, tt = [], []
      _timed_rounds([(jt, run_jax), (tt, lambda: torch_step(ids_t))], args.steps, sync)
      flops = train_flops(cfg, args.batch, args.seq, matmul_params)
      j, t = statistics.median(jt), statistics.median(tt)
      print(
        f"[{dtype}] train step: first losses jax {first_jax:.4f} torch {first_torch:.4f}; "
        f"torch {t * 1e3:.1f} ms ({flops / t / 1e12:.1f} TFLOP/s), jax {j * 1e3:.1f} ms "
        f"({flops / j / 1e12:.1f} TFLOP/s)  ->  jax/torch speed {t / j:.2f}x"
      )

      model = nnx.merge(graphdef, state[0])
      hf.save_pretrained(model, tmp + "_trained")
      ref = (
        transformers.LlamaForCausalLM.from_pretrained(tmp + "_trained", dtype=getattr(torch, dtype))
        .to(dev)
        .eval()
      )
      kw = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
      mask = np.ones_like(prompt)
      gd, st = nnx.split(model)
      hlo = gen.decode_jit.lower(
        gd,
        st,
        jnp.asarray(prompt),
        None,
        jnp.asarray(mask),
        jnp.asarray([-1], jnp.int32),
        jnp.int32(0),
        jnp.float32(1e-6),
        jnp.float32(1.0),
        jax.random.PRNGKey(0),
        max_new_tokens=args.new_tokens,
        sample=False,
      ).as_text()
      assert not gpu or "aotd_" not in hlo, "a CPU FFI kernel reached the GPU program"
      run_gen = lambda: np.asarray(gen.generate(model, prompt, mask, **kw).sequences)
      tp = torch.tensor(prompt, dtype=torch.long, device=dev)
      with torch.no_grad():
        tgen = lambda: ref.generate(
          input_ids=tp,
          attention_mask=torch.ones_like(tp),
          do_sample=False,
          min_new_tokens=args.new_tokens,
          **kw,
        )
        ours, theirs = run_gen(), tgen()[:, args.prompt :].cpu().numpy()
        jt, tt = [], []
        _timed_rounds([(jt, run_gen), (tt, tgen)], max(3, args.steps // 2), sync)
      tokens = args.batch * args.new_tokens
      j, t = min(jt), min(tt)
      print(
        f"[{dtype}] greedy decode (batch {args.batch}, {args.new_tokens} new): torch {tokens / t:.0f} tok/s, "
        f"jax {tokens / j:.0f} tok/s  ->  jax/torch speed {t / j:.2f}x  "
        f"(same tokens: {float(np.mean(ours == theirs)):.0%}"
        f"{'; no CPU kernel in the program' if gpu else ', CPU smoke'})"
      )


if __name__ == "__main__":
  main()
