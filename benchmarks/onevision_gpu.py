r"""LLaVA-OneVision-7B distillation train step on one GPU: step time and MFU, random weights.

  python benchmarks/onevision_gpu.py             # 7B shapes, bf16, one H200 (~8.0B params)
  python benchmarks/onevision_gpu.py --cpu_smoke # tiny shapes on CPUs: checks the script only

The student is `llava-onevision-qwen2-7b-ov-hf`'s architecture (`onevision_7b_config`: SigLIP
so400m tower, 26 layers; Qwen2-7B LM) with random weights, trained as `configs/distill/
onevision7b.py` does: frozen vision tower, bf16 compute, remat, cuDNN flash attention
(`attention_impl="causal"`), L_label + L_rationale, AdamW with global-norm clipping, through
the real `Trainer`. One GPU holds AdamW state for the 7.6B trainable parameters only in bf16
(`--param_dtype=bfloat16`, the default here; the 8-GPU config keeps float32 master weights,
sharded). A batch is `--batch` clips of `--frames` 384x384 frames (T x 196 + 1 video tokens)
and `--text` text tokens, half of them rationale samples.

MFU = model FLOPs / step time / `--peak_flops` (989 TFLOP/s, H100/H200 bf16 dense). Model
FLOPs: 6 x trainable matmul params x tokens (LM, projector) + 2 x tower params x patches (the
frozen tower runs forward only) + attention (causal LM: 6 x layers x heads x head_dim x L^2,
fwd+bwd; tower: 4 x layers x hidden x P^2 per frame, forward). Remat's recomputation is not
counted (hardware FLOPs are higher).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_train_step  # noqa: E402


def random_init(config, options):
  """The model with N(0, 0.02) weights and unit norms, one jitted kernel per distinct shape (a
  7B model's full `jax.jit(init)` takes minutes to compile; this takes seconds)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from aotd_jax.models.llava_onevision import LlavaOnevisionForConditionalGeneration

  model = nnx.eval_shape(
    lambda: LlavaOnevisionForConditionalGeneration(config, options=options, rngs=nnx.Rngs(0))
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


def model_flops(model, batch: int, frames: int, seq: int) -> float:
  from flax import nnx

  cfg = model.config
  vc, tc = cfg.vision_config, cfg.text_config

  def matmul_params(module, skip=()):
    return sum(
      v.get_value().size
      for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))
      if v.get_value().ndim >= 2 and not any(s in "/".join(map(str, p)) for s in skip)
    )

  images, patches = batch * frames, (vc.image_size // vc.patch_size) ** 2
  tower = 2 * matmul_params(model.vision_tower, ("position_embedding",)) * images * patches
  tower += 4 * vc.num_hidden_layers * vc.hidden_size * patches**2 * images
  proj = 6 * matmul_params(model.multi_modal_projector) * images * patches
  lm = 6 * matmul_params(model.language_model, ("embed_tokens",)) * batch * seq
  lm += 6 * tc.num_hidden_layers * tc.num_attention_heads * tc.head_dim * seq * seq * batch
  return tower + proj + lm


def make_batch(config, batch: int, frames: int, text: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  vc = config.vision_config
  n_video = config.video_tokens(frames)
  ids = np.concatenate(
    [
      rng.integers(3, 1000, (batch, 8)),
      np.full((batch, n_video), config.video_token_index),
      rng.integers(3, 1000, (batch, text - 8)),
    ],
    1,
  ).astype(np.int32)
  b, l = ids.shape
  label, rationale = np.zeros((b, l), np.int32), np.zeros((b, l), np.int32)
  label[:, -8:] = 1
  rationale[: max(b // 2, 1), -text // 2 : -8] = 1
  videos = rng.standard_normal((b, frames, vc.num_channels, vc.image_size, vc.image_size))
  return dict(
    input_ids=ids,
    attention_mask=np.ones((b, l), np.int32),
    label_mask=label,
    rationale_mask=rationale,
    pixel_values_videos=videos.astype(np.float32),
  )


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  gpu_train_step.add_flags(ap, frames=32)
  args = ap.parse_args(argv)

  import dataclasses
  import jax
  from aotd_jax import sharding
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models import llava_onevision as lov
  from aotd_jax.models.llama import LlamaConfig
  from aotd_jax.models.siglip import SiglipVisionConfig
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
  config = lov.onevision_7b_config()
  if args.cpu_smoke:
    config = dataclasses.replace(
      config,
      vision_config=SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
      ),
      text_config=dataclasses.replace(
        LlamaConfig(),
        **{
          f.name: getattr(config.text_config, f.name)
          for f in dataclasses.fields(LlamaConfig)
          if f.name
          not in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
          )
        },
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
      ),
    )
    args.frames, args.text, args.steps = min(args.frames, 4), min(args.text, 32), min(args.steps, 2)
  t0 = time.perf_counter()
  model = random_init(config, options)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  trainer = Trainer(
    model,
    make_optimizer({"learning_rate": 4e-5, "grad_clip": 1.0}, 1000),
    mesh=mesh,
    trainable=lov.trainable_filter(options),
  )
  batch = make_batch(config, args.batch, args.frames, args.text)
  init_s = time.perf_counter() - t0
  seq = batch["input_ids"].shape[1]
  gpu_train_step.run(
    args,
    model,
    trainer,
    batch,
    init_s=init_s,
    flops=model_flops(model, args.batch, args.frames, seq),
    frames=args.frames,
    video_tokens=config.video_tokens(args.frames),
  )


if __name__ == "__main__":
  main()
