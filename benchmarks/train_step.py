r"""Distillation train-step throughput: our jitted, sharded `Trainer` step (L_label + λ·L_rationale,
AdamW, donated state) vs transformers' PyTorch training step on the same model and batch, and
the MFU estimate (6 × matmul params × tokens + attention FLOPs, ÷ step time ÷ peak).

CPU (issue 7's `train_cpu` figure; peak = a large f32 matmul measured in the same run):
  python benchmarks/train_step.py --preset=cpu
GPU (MFU of a ~1B-parameter Llama-architecture student in bf16 on one H100/H200):
  python benchmarks/train_step.py --preset=gpu_1b --no_torch
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

PRESETS = {
  # ~30M parameters, batch 8 × 256 tokens, float32
  "cpu": dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=8192,
    batch=8,
    seq=256,
    dtype="float32",
    remat=False,
  ),
  # TinyLlama-1.1B shape, batch 8 × 2048 tokens, bf16 compute, f32 master params, remat
  "gpu_1b": dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    batch=8,
    seq=2048,
    dtype="bfloat16",
    remat=True,
  ),
  "tiny": dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    batch=4,
    seq=64,
    dtype="float32",
    remat=False,
  ),
}


def hf_config(p):
  return dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    vocab_size=p["vocab_size"],
    hidden_size=p["hidden_size"],
    intermediate_size=p["intermediate_size"],
    num_hidden_layers=p["num_hidden_layers"],
    num_attention_heads=p["num_attention_heads"],
    num_key_value_heads=p["num_key_value_heads"],
    max_position_embeddings=max(4096, p["seq"]),
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
  )


def batch(p, seed=0):
  rng = np.random.default_rng(seed)
  b, l = p["batch"], p["seq"]
  ids = rng.integers(3, p["vocab_size"], (b, l)).astype(np.int32)
  label = np.zeros((b, l), np.int32)
  rationale = np.zeros((b, l), np.int32)
  label[:, -8:] = 1
  rationale[: b // 2, l // 2 : -8] = 1  # half the batch are CoT samples
  return dict(
    input_ids=ids,
    attention_mask=np.ones((b, l), np.int32),
    label_mask=label,
    rationale_mask=rationale,
  )


def step_flops(p, n_matmul_params):
  tokens = p["batch"] * p["seq"]
  attn = 12 * p["num_hidden_layers"] * p["hidden_size"] * p["seq"] * tokens  # QK^T and PV, fwd+bwd
  return 6 * n_matmul_params * tokens + attn


def matmul_peak(jnp_dtype="float32", n=2048, reps=5):
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp_dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t)


def fast_random_init(p):
  """The student with N(0, 0.02) weights and unit norms, made one jitted kernel per distinct
  shape: a 1B model's full `jax.jit(init)` takes minutes to compile, this takes seconds."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from aotd_jax.hf import registry
  from aotd_jax.layers.compute import ComputeOptions

  adapter = registry.adapter_for("LlamaForCausalLM")
  config = adapter.config_from_hf(hf_config(p))
  options = ComputeOptions(
    dtype=p["dtype"],
    remat="full" if p["remat"] else "none",
    attention_impl=p.get("attention_impl", "xla"),
    matmul_precision=p.get("matmul_precision", "default"),
  )
  model = nnx.eval_shape(lambda: adapter.model_class(config, options=options, rngs=nnx.Rngs(0)))
  normal = jax.jit(
    lambda key, shape: 0.02 * jax.random.normal(key, shape, jnp.float32), static_argnums=1
  )
  key = jax.random.key(0)
  for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
    shape = var.get_value().shape
    if path[-1] == "scale":
      var.set_value(jnp.ones(shape, jnp.float32))
    else:
      var.set_value(normal(jax.random.fold_in(key, i), tuple(shape)))
  return model


def run_ours(p, steps):
  from aotd_jax import sharding
  from aotd_jax.train.optim import make_optimizer
  from aotd_jax.train.trainer import Trainer, matmul_flops_per_token

  mesh = sharding.make_mesh({"data": -1})
  model = fast_random_init(p)
  n_params = matmul_flops_per_token(model) / 6
  trainer = Trainer(
    model, make_optimizer({"learning_rate": 1e-4, "grad_clip": 1.0}, 1000), mesh=mesh
  )
  b = batch(p)
  trainer.train_step(b)  # compile
  trainer.train_step(b)
  t = time.perf_counter()
  for _ in range(steps):
    m = trainer.train_step(b)
  dt = (time.perf_counter() - t) / steps
  return dt, n_params, m.loss


def run_torch(p, steps):
  import torch
  import transformers

  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(**{k: v for k, v in hf_config(p).items() if k != "architectures"})
  model = transformers.LlamaForCausalLM(cfg)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  b = {k: torch.tensor(v).long() for k, v in batch(p).items()}

  def masked_ce(logits, ids, mask):
    ce = torch.nn.functional.cross_entropy(
      logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none"
    )
    m = mask[:, 1:].reshape(-1).float()
    return (ce * m).sum() / m.sum().clamp(min=1)

  def step():
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    loss = masked_ce(logits, b["input_ids"], b["label_mask"]) + masked_ce(
      logits, b["input_ids"], b["rationale_mask"]
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss

  step()
  t = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - t) / steps


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--no_torch", action="store_true")
  ap.add_argument(
    "--attention_impl", default="xla", choices=["xla", "dot_product_attention", "causal"]
  )
  ap.add_argument(
    "--matmul_precision",
    default="default",
    choices=["default", "high", "highest"],
    help="'high': bf16x3, 'highest': bf16x6 dense-layer matmuls (the AMX kernel on Intel CPUs)",
  )
  ap.add_argument(
    "--keep_freed_memory",
    type=int,
    default=1,
    help="1: keep freed host memory for reuse in this process, for both sides "
    "(aotd_jax/host_memory.py)",
  )
  ap.add_argument("--remat", type=int, default=-1, help="override the preset's remat (0/1)")
  ap.add_argument("--batch", type=int, default=0, help="override the preset's batch size")
  ap.add_argument(
    "--peak_flops",
    type=float,
    default=0.0,
    help="hardware peak; default: measured with a large matmul in this run",
  )
  args = ap.parse_args()
  from aotd_jax import host_memory

  kept = bool(args.keep_freed_memory) and host_memory.keep_freed_memory()
  p = dict(
    PRESETS[args.preset], attention_impl=args.attention_impl, matmul_precision=args.matmul_precision
  )
  if args.remat >= 0:
    p["remat"] = bool(args.remat)
  if args.batch:
    p["batch"] = args.batch
  import jax

  peak = args.peak_flops or matmul_peak(
    "float32" if p["dtype"] == "float32" else "bfloat16",
    n=2048 if jax.default_backend() == "cpu" else 8192,
  )
  dt, n_params, loss = run_ours(p, args.steps)
  tokens = p["batch"] * p["seq"]
  flops = step_flops(p, n_params)
  out = {
    "preset": args.preset,
    "attention_impl": p["attention_impl"],
    "matmul_precision": p["matmul_precision"],
    "remat": p["remat"],
    "keep_freed_memory": kept,
    "batch": p["batch"],
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0]),
    "matmul_params_M": round(n_params / 1e6, 1),
    "tokens_per_step": tokens,
    "ours_step_s": round(dt, 4),
    "ours_tokens_per_s": round(tokens / dt, 1),
    "peak_tflops": round(peak / 1e12, 2),
    "ours_mfu": round(flops / dt / peak, 4),
    "loss": round(float(loss), 4),
  }
  if not args.no_torch:
    tdt = run_torch(p, args.steps)
    out.update(
      torch_step_s=round(tdt, 4),
      torch_tokens_per_s=round(tokens / tdt, 1),
      torch_mfu=round(flops / tdt / peak, 4),
      speedup_vs_torch=round(tdt / dt, 2),
    )
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
