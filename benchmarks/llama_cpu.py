r"""Llama on CPU: our jitted train step and KV-cache decode vs transformers' PyTorch, same weights.

  python benchmarks/llama_cpu.py                 # ~30M params, batch 8 x 256, f32, AdamW
  python benchmarks/llama_cpu.py --variant=tiny  # seconds, for a quick check

Prints, from one run on one CPU: the f32 matmul peak (a large jnp matmul), the train-step time of
both (each also as a fraction of that peak; step FLOPs = 6 x matmul params x tokens + attention),
and greedy decode tokens/s with a KV cache vs transformers' `generate`. JAX and PyTorch steps are
interleaved so that load from other processes hits both alike; the median is reported.
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


def matmul_peak_flops(n: int = 2048, reps: int = 6) -> float:
  """FLOP/s of a large f32 jnp matmul (best of `reps`)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(reps))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def train_flops(cfg, batch: int, seq: int, matmul_params: int) -> float:
  """6 x matmul params x tokens, plus QK^T and PV (forward 4·L²·heads·head_dim, x3 with backward)."""
  attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq * seq * batch
  return 6 * matmul_params * batch * seq + attn


def build_jax_step(model, lr=1e-4, loss="full"):
  """A jitted AdamW step on (params, opt_state), both donated; next-token CE without a one-hot.

  loss="full" scores all L positions and masks the last (its label would wrap around), so the
  LM-head dots keep the batch x L token count; "shift" slices logits[:, :-1] as transformers does.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(lr, weight_decay=0.0)

  def loss_fn(p, ids):
    logits = nnx.merge(graphdef, p)(ids).logits.astype(jnp.float32)
    if loss == "shift":
      logits, labels, weight = logits[:, :-1], ids[:, 1:], jnp.ones(ids[:, 1:].shape, jnp.float32)
    else:
      labels = jnp.roll(ids, -1, axis=1)
      weight = (jnp.arange(ids.shape[1]) < ids.shape[1] - 1).astype(jnp.float32)[None]
    gold = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = (jax.nn.logsumexp(logits, axis=-1) - gold) * weight
    return jnp.sum(nll) / jnp.sum(jnp.broadcast_to(weight, nll.shape))

  @jax.jit
  def init(p):
    return tx.init(p)

  def step(p, opt_state, ids):
    loss, grads = jax.value_and_grad(loss_fn)(p, ids)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  return graphdef, params, init(params), jax.jit(step, donate_argnums=(0, 1))


def build_torch_step(model, lr=1e-4):
  import torch
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

  def step(ids):
    logits = model(input_ids=ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return step


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="bench", choices=["bench", "tiny"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--loss", default="full", choices=["full", "shift"])
  parser.add_argument("--skip_decode", action="store_true")
  args = parser.parse_args(argv)

  import jax
  import torch
  import transformers
  from flax import nnx
  from configs.llama_tiny import get_config
  from aotd_jax import hf
  from aotd_jax.models.generate import generate

  fields = dict(get_config(args.variant).model)
  for k in ("dtype", "param_dtype"):
    fields.pop(k)
  torch.manual_seed(0)
  ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields, initializer_range=0.02))
  with tempfile.TemporaryDirectory() as tmp:
    ref.save_pretrained(tmp)
    model = hf.from_pretrained(tmp)
  cfg = model.config
  n_params = sum(p.numel() for p in ref.parameters())
  # The embedding lookup is no matmul (unless tied, when it is also the LM head); norms neither.
  norms = sum(p.numel() for n, p in ref.named_parameters() if "norm" in n)
  matmul_params = n_params - norms - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
  print(f"machine: {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"model: {n_params / 1e6:.1f}M params ({matmul_params / 1e6:.1f}M in matmuls), "
        f"batch {args.batch} x seq {args.seq}, float32, AdamW")

  peak = matmul_peak_flops()
  print(f"f32 matmul peak (jnp 2048^3): {peak / 1e9:.1f} GFLOP/s")

  # ---- train step ----
  rng = np.random.default_rng(0)
  ids_np = rng.integers(3, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
  ids_jax, ids_torch = jax.numpy.asarray(ids_np), torch.tensor(ids_np, dtype=torch.long)
  graphdef, params, opt_state, jax_step = build_jax_step(model, loss=args.loss)
  torch_step = build_torch_step(ref.train())
  start = time.perf_counter()
  params, opt_state, loss = jax_step(params, opt_state, ids_jax)
  loss.block_until_ready()
  compile_s = time.perf_counter() - start
  torch_loss = float(torch_step(ids_torch))
  print(f"first-step loss: jax {float(loss):.4f}  torch {torch_loss:.4f}  (jax compile+run {compile_s:.1f}s)")
  jax_times, torch_times, jax_cpu, torch_cpu = [], [], [], []
  for _ in range(args.steps):
    start, cpu = time.perf_counter(), time.process_time()
    params, opt_state, loss = jax_step(params, opt_state, ids_jax)
    loss.block_until_ready()
    jax_times.append(time.perf_counter() - start)
    jax_cpu.append(time.process_time() - cpu)
    cpu = time.process_time()
    torch_times.append(_timed(lambda: torch_step(ids_torch)))
    torch_cpu.append(time.process_time() - cpu)
  flops = train_flops(cfg, args.batch, args.seq, matmul_params)
  tj, tt = statistics.median(jax_times), statistics.median(torch_times)
  print(f"train step: jax {tj * 1e3:.0f} ms ({flops / tj / peak:.0%} of peak)  "
        f"torch {tt * 1e3:.0f} ms ({flops / tt / peak:.0%} of peak)  ->  jax/torch speed {tt / tj:.2f}x")
  # CPU seconds of both thread pools: less sensitive to other processes than wall time on a
  # loaded box (OpenMP spin-waiting counts against torch), never a substitute for a quiet run.
  print(f"train step CPU time: jax {statistics.median(jax_cpu) * 1e3:.0f} ms  "
        f"torch {statistics.median(torch_cpu) * 1e3:.0f} ms")

  # ---- greedy decode with a KV cache ----
  if args.skip_decode:
    return
  ref.eval()
  prompt = rng.integers(3, cfg.vocab_size, (args.batch, args.prompt)).astype(np.int32)
  mask = np.ones_like(prompt)
  kw = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
  model = nnx.merge(graphdef, params)  # the step donated the original buffers
  generate(model, prompt, mask, **kw).sequences.block_until_ready()  # compile
  tj = min(_timed(lambda: generate(model, prompt, mask, **kw).sequences.block_until_ready())
           for _ in range(2))
  with torch.no_grad():
    tp, tm = torch.tensor(prompt, dtype=torch.long), torch.tensor(mask)
    ref.generate(input_ids=tp, attention_mask=tm, do_sample=False, **kw)  # warm-up
    tt = min(_timed(lambda: ref.generate(input_ids=tp, attention_mask=tm, do_sample=False,
                                         min_new_tokens=args.new_tokens, **kw)) for _ in range(2))
  tokens = args.batch * args.new_tokens
  print(f"greedy decode (batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new): "
        f"jax {tokens / tj:.0f} tok/s  torch {tokens / tt:.0f} tok/s  ->  jax/torch speed {tt / tj:.2f}x")


if __name__ == "__main__":
  main()
