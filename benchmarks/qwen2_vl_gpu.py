r"""Qwen2-VL-7B distillation train step on one GPU: step time and MFU, random weights.

  python benchmarks/qwen2_vl_gpu.py             # 7B shapes, bf16, one H200 (~8.3B params)
  python benchmarks/qwen2_vl_gpu.py --cpu_smoke # tiny shapes on CPUs: checks the script only

The student is `Qwen/Qwen2-VL-7B-Instruct`'s architecture (`qwen2_vl_7b_config`: a 32-block
ViT with 2-D rotary embeddings and the 2x2 merger; the Qwen2-7B LM with M-RoPE) with random
weights, trained as `configs/distill/qwen2vl7b.py` does: frozen vision tower, bf16 compute,
remat, cuDNN flash attention (`attention_impl="causal"`), L_label + L_rationale, AdamW with
global-norm clipping, through the real `Trainer`. One GPU holds AdamW state for the 7.6B
trainable parameters only in bf16 (`--param_dtype=bfloat16`, the default here). A batch is
`--batch` clips of `--frames` frames of `--side` pixels ((T/2) x (side/28)^2 video tokens: 16
frames of 336 are 1152) and `--text` text tokens, half of them rationale samples; the frames
are patchified and the M-RoPE positions computed inside the step, as in training.

MFU = model FLOPs / step time / `--peak_flops` (989 TFLOP/s, H100/H200 bf16 dense). Model
FLOPs: 6 x trainable matmul params x tokens (LM) + 2 x tower params x patches (the frozen
tower runs forward only; the merger on a quarter of them) + attention (causal LM: 6 x layers x
heads x head_dim x L^2, fwd+bwd; tower: 4 x depth x embed_dim x P^2 per pair of frames,
forward). Remat's recomputation is not counted (hardware FLOPs are higher).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_train_step  # noqa: E402


def random_init(config, options):
  """The model with N(0, 0.02) weights, unit norms and zero biases, one jitted kernel per
  distinct shape (a full `jax.jit(init)` of 8B parameters takes minutes to compile)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from aotd_jax.models.qwen2_vl import Qwen2VLForConditionalGeneration

  model = nnx.eval_shape(
    lambda: Qwen2VLForConditionalGeneration(config, options=options, rngs=nnx.Rngs(0))
  )
  dtype = jnp.dtype(options.param_dtype)
  normal = jax.jit(
    lambda key, shape: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype),
    static_argnums=1,
  )
  key = jax.random.key(0)
  for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
    shape = tuple(var.get_value().shape)
    if path[-1] == "scale":
      var.set_value(jnp.ones(shape, dtype))
    elif path[-1] == "bias":
      var.set_value(jnp.zeros(shape, dtype))
    else:
      var.set_value(normal(jax.random.fold_in(key, i), shape))
  return model


def model_flops(model, batch: int, frames: int, side: int, seq: int) -> float:
  from flax import nnx

  cfg = model.config
  vc, tc = cfg.vision_config, cfg.text_config

  def matmul_params(module, skip=()):
    return sum(
      v.get_value().size
      for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))
      if v.get_value().ndim >= 2 and not any(s in "/".join(map(str, p)) for s in skip)
    )

  slices, per_slice = batch * -(-frames // vc.temporal_patch_size), (side // vc.patch_size) ** 2
  merger = matmul_params(model.visual.merger)
  tower = (
    2 * ((matmul_params(model.visual) - merger) * per_slice + merger * per_slice // 4) * slices
  )
  tower += 4 * vc.depth * vc.embed_dim * per_slice**2 * slices
  lm = 6 * matmul_params(model.language_model, ("embed_tokens",)) * batch * seq
  lm += 6 * tc.num_hidden_layers * tc.num_attention_heads * tc.head_dim * seq * seq * batch
  return tower + lm


def make_batch(config, batch: int, frames: int, side: int, text: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  n_video = config.tokens(config.grid(frames, side, side))
  ids = np.concatenate(
    [
      rng.integers(3, 1000, (batch, 8)),
      np.full((batch, 1), config.vision_start_token_id),
      np.full((batch, n_video), config.video_token_id),
      np.full((batch, 1), config.vision_end_token_id),
      rng.integers(3, 1000, (batch, text - 10)),
    ],
    1,
  ).astype(np.int32)
  b, l = ids.shape
  label, rationale = np.zeros((b, l), np.int32), np.zeros((b, l), np.int32)
  label[:, -8:] = 1
  rationale[: max(b // 2, 1), -text // 2 : -8] = 1
  videos = rng.standard_normal((b, frames, config.vision_config.in_channels, side, side))
  return dict(
    input_ids=ids,
    attention_mask=np.ones((b, l), np.int32),
    label_mask=label,
    rationale_mask=rationale,
    pixel_values_videos=videos.astype(np.float32),
  )


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  gpu_train_step.add_flags(ap, frames=16)
  ap.add_argument("--side", type=int, default=336, help="frame size (a multiple of 28)")
  args = ap.parse_args(argv)

  import jax
  from aotd_jax import sharding
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models import qwen2_vl
  from aotd_jax.train.optim import make_optimizer
  from aotd_jax.train.trainer import Trainer

  if jax.default_backend() != "gpu" and not args.cpu_smoke:
    raise SystemExit(
      f"needs a GPU (JAX backend: {jax.default_backend()}); --cpu_smoke checks the script"
    )
  options = ComputeOptions(
    dtype="bfloat16",
    param_dtype=args.param_dtype,
    remat="full" if args.remat else "none",
    attention_impl=args.attention_impl,
    freeze_vision_tower=True,
  )
  config = qwen2_vl.qwen2_vl_7b_config()
  if args.cpu_smoke:
    text = qwen2_vl.qwen2_vl_text_config(
      vocab_size=1024,
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      mrope_section=(4, 2, 2),
    )
    vision = qwen2_vl.Qwen2VLVisionConfig(depth=2, embed_dim=64, num_heads=4, hidden_size=64)
    config = qwen2_vl.Qwen2VLConfig(
      vision_config=vision,
      text_config=text,
      image_token_id=1020,
      video_token_id=1021,
      vision_start_token_id=1022,
      vision_end_token_id=1023,
    )
    args.frames, args.side, args.text, args.steps = 4, 56, 32, min(args.steps, 2)
  t0 = time.perf_counter()
  model = random_init(config, options)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  trainer = Trainer(
    model,
    make_optimizer({"learning_rate": 4e-5, "grad_clip": 1.0}, 1000),
    mesh=mesh,
    trainable=qwen2_vl.trainable_filter(options),
  )
  batch = make_batch(config, args.batch, args.frames, args.side, args.text)
  init_s = time.perf_counter() - t0
  seq = batch["input_ids"].shape[1]
  gpu_train_step.run(
    args,
    model,
    trainer,
    batch,
    init_s=init_s,
    flops=model_flops(model, args.batch, args.frames, args.side, seq),
    frames=args.frames,
    side=args.side,
    video_tokens=config.tokens(config.grid(args.frames, args.side, args.side)),
  )


if __name__ == "__main__":
  main()
