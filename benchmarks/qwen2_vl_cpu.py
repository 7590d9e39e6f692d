r"""Qwen2-VL on CPU: our jitted train step and video-conditioned greedy decoding vs transformers'
PyTorch `Qwen2VLForConditionalGeneration` (eager), same random weights, same inputs, one run.

  python benchmarks/qwen2_vl_cpu.py                 # ~40M params, 8 frames of 112x112, f32, AdamW
  python benchmarks/qwen2_vl_cpu.py --variant=tiny  # seconds, for a quick check

The bench student: a 4 x 384 ViT (8x8 patches of 14 px per pair of frames, 2-D rotary), the 2x2
merger, a Qwen2 LM 6 x 512 with M-RoPE; 8 frames of 112x112 are 4 x 16 = 64 video tokens.
Our side takes the frames (B, T, 3, H, W) and patchifies them in the graph (M-RoPE positions
from the ids under jit, as the trainer does); transformers takes its video processor's patches
(the same values, `qwen2_vl.patchify_frames`), `video_grid_thw` and `mm_token_type_ids`. JAX and
PyTorch runs alternate; medians are reported, with the first-step losses and the fraction of
decoded tokens that agree. One JAX device, plus `--precision_rows` (matmul_precision rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_cpu import (
  first_step,
  keep_memory,
  matmul_peak_flops,
  print_first_losses,  # noqa: E402
  run_step,
  time_rounds,
)
from llava_cpu import build_jax_step  # noqa: E402

VARIANTS = {
  "bench": dict(
    vision=dict(depth=4, embed_dim=384, num_heads=6, mlp_ratio=4, patch_size=14),
    text=dict(
      vocab_size=14000,
      hidden_size=512,
      intermediate_size=1408,
      num_hidden_layers=6,
      num_attention_heads=8,
      num_key_value_heads=4,
    ),
    mrope=[16, 8, 8],
    side=112,
    frames=8,
    batch=4,
    text_tokens=64,
    prompt_text=16,
    new_tokens=64,
  ),
  "tiny": dict(
    vision=dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2, patch_size=7),
    text=dict(
      vocab_size=128,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
    ),
    mrope=[2, 1, 1],
    side=28,
    frames=4,
    batch=2,
    text_tokens=16,
    prompt_text=8,
    new_tokens=8,
  ),
}


def hf_model(v):
  import torch
  import transformers

  vocab = v["text"]["vocab_size"]
  text = dict(
    v["text"],
    max_position_embeddings=1024,
    pad_token_id=0,
    eos_token_id=2,
    rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=v["mrope"]),
  )
  vision = dict(
    v["vision"], hidden_size=v["text"]["hidden_size"], spatial_merge_size=2, temporal_patch_size=2
  )
  cfg = transformers.Qwen2VLConfig(
    vision_config=vision,
    text_config=text,
    video_token_id=vocab - 1,
    image_token_id=vocab - 2,
    vision_start_token_id=vocab - 3,
    vision_end_token_id=vocab - 4,
  )
  torch.manual_seed(0)
  return transformers.Qwen2VLForConditionalGeneration(cfg)


def step_flops(model, batch: int, seq: int, frames: int, side: int) -> float:
  """Train-step FLOPs: 6 x (matmul params x tokens through them) + attention (x3 for backward)."""
  from flax import nnx

  cfg = model.config
  vc, tc = cfg.vision_config, cfg.text_config

  def matmul_params(module, skip=()):
    return sum(
      var.get_value().size
      for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))
      if var.get_value().ndim >= 2 and not any(s in "/".join(map(str, path)) for s in skip)
    )

  slices = -(-frames // vc.temporal_patch_size)
  per_slice = (side // vc.patch_size) ** 2
  patches = batch * slices * per_slice
  merger = matmul_params(model.visual.merger)
  tower = (matmul_params(model.visual) - merger) * patches + merger * patches // 4
  tower_attn = 4 * vc.depth * vc.embed_dim * per_slice**2 * batch * slices
  lm = matmul_params(model.language_model, ("embed_tokens",)) * batch * seq
  lm_attn = 4 * tc.num_hidden_layers * tc.num_attention_heads * tc.head_dim * seq * seq * batch
  return 6 * (tower + lm) + 3 * (tower_attn + lm_attn)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="bench", choices=sorted(VARIANTS))
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument(
    "--precision_rows",
    default="highest",
    help="comma-separated matmul_precision values also timed on one device",
  )
  parser.add_argument("--keep_freed_memory", type=int, default=1)
  args = parser.parse_args(argv)
  kept = keep_memory(args)
  v = VARIANTS[args.variant]

  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx
  from aotd_jax import hf
  from aotd_jax.models import qwen2_vl
  from aotd_jax.models.options import with_options

  ref = hf_model(v)
  tmp_dir = tempfile.TemporaryDirectory()
  tmp = tmp_dir.name
  ref.save_pretrained(tmp)
  model = hf.from_pretrained(tmp)
  cfg = model.config
  n_params = sum(p.numel() for p in ref.parameters())
  batch, frames, side = v["batch"], v["frames"], v["side"]
  grid = cfg.grid(frames, side, side)
  video_tokens = cfg.tokens(grid)
  seq = video_tokens + v["text_tokens"]
  print(
    f"machine: {os.cpu_count()} CPUs, jax {jax.__version__} ({len(jax.devices())} "
    f"{jax.devices()[0].platform} devices), torch {torch.__version__} "
    f"({torch.get_num_threads()} threads), keep_freed_memory={kept}"
  )
  print(
    f"model: {type(ref).__name__}, {n_params / 1e6:.1f}M params; batch {batch} x ({frames} "
    f"frames {side}x{side} -> grid {grid}, {video_tokens} video tokens + {v['text_tokens']} "
    "text), float32, AdamW"
  )
  peak = matmul_peak_flops()
  print(f"f32 matmul peak (jnp 2048^3): {peak / 1e9:.1f} GFLOP/s")

  rng = np.random.default_rng(0)
  vocab = cfg.text_config.vocab_size

  def prompt_ids(n_text_before, n_text_after):
    return np.concatenate(
      [
        rng.integers(3, vocab - 4, (batch, n_text_before)),
        np.full((batch, 1), cfg.vision_start_token_id),
        np.full((batch, video_tokens), cfg.video_token_id),
        np.full((batch, 1), cfg.vision_end_token_id),
        rng.integers(3, vocab - 4, (batch, n_text_after)),
      ],
      1,
    ).astype(np.int32)

  ids_np = prompt_ids(4, v["text_tokens"] - 6)
  videos_np = rng.standard_normal((batch, frames, 3, side, side)).astype(np.float32)
  patches = np.asarray(qwen2_vl.patchify_frames(cfg, jnp.asarray(videos_np))[0])
  media_t = dict(
    pixel_values_videos=torch.tensor(patches), video_grid_thw=torch.tensor([list(grid)] * batch)
  )

  def torch_types(ids):
    return torch.tensor(np.where(ids == cfg.video_token_id, 2, 0))

  # ---- train step ----
  runs = {"1 device": first_step(None, lambda _: build_jax_step(model), (ids_np, videos_np))}
  from aotd_jax.kernels import amx_matmul

  precisions = {}
  for precision in filter(None, args.precision_rows.split(",")):
    name = f"1 device, {precision}{'' if amx_matmul.available() else ' (no AMX: f32 dots)'}"
    precisions[name] = precision
    runs[name] = first_step(
      None,
      lambda _, p=precision: build_jax_step(
        with_options(hf.from_pretrained(tmp), matmul_precision=p)
      ),
      (ids_np, videos_np),
    )
  ref.train()
  opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.0)
  ids_t, types_t = torch.tensor(ids_np, dtype=torch.long), torch_types(ids_np)

  def torch_step():
    logits = ref(input_ids=ids_t, mm_token_type_ids=types_t, **media_t).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]).float(), ids_t[:, 1:].reshape(-1)
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  print_first_losses(runs, torch_step().item())
  torch_run = dict(times=[], cpu=[])
  time_rounds(
    [(r, lambda r=r: run_step(r)) for r in runs.values()] + [(torch_run, torch_step)], args.steps
  )
  flops = step_flops(model, batch, seq, frames, side)
  tt = statistics.median(torch_run["times"])
  print(f"train step: torch {tt * 1e3:.0f} ms ({flops / tt / peak:.0%} of peak)")
  for name, r in runs.items():
    tj = statistics.median(r["times"])
    print(
      f"train step: jax[{name}] {tj * 1e3:.0f} ms ({flops / tj / peak:.0%} of peak)  "
      f"->  jax/torch speed {tt / tj:.2f}x"
    )

  # ---- video-conditioned greedy decoding (same trained weights on both sides) ----
  trained = runs["1 device"]
  model = nnx.merge(trained["graphdef"], trained["state"][0])
  with tempfile.TemporaryDirectory() as tmp2:
    hf.save_pretrained(model, tmp2)
    ref = type(ref).from_pretrained(tmp2).eval()
  decoders = {"1 device": model}
  for name, precision in precisions.items():
    decoders[name] = with_options(model, matmul_precision=precision)
  prompt = prompt_ids(2, v["prompt_text"])
  mask = np.ones_like(prompt)
  n_new = v["new_tokens"]

  def run_jax(m):
    return qwen2_vl.generate(
      m,
      prompt,
      mask,
      pixel_values_videos=videos_np,
      max_new_tokens=n_new,
      eos_token_id=-1,
      pad_token_id=0,
    )

  seqs = {name: np.asarray(run_jax(m).sequences) for name, m in decoders.items()}  # compile
  records = {name: dict(times=[], cpu=[]) for name in decoders}
  torch_run = dict(times=[], cpu=[])
  with torch.no_grad():
    gen = dict(
      input_ids=torch.tensor(prompt, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      mm_token_type_ids=torch_types(prompt),
      do_sample=False,
      max_new_tokens=n_new,
      min_new_tokens=n_new,
      pad_token_id=0,
      **media_t,
    )
    theirs = ref.generate(**gen).numpy()[:, prompt.shape[1] :]  # warm-up
    calls = [
      (records[name], lambda m=m: run_jax(m).sequences.block_until_ready())
      for name, m in decoders.items()
    ]
    time_rounds(calls + [(torch_run, lambda: ref.generate(**gen))], args.steps)
  tokens = batch * n_new
  tt = statistics.median(torch_run["times"])
  print(
    f"greedy decode (batch {batch}, {video_tokens} video + {v['prompt_text'] + 4} text prompt, "
    f"{n_new} new): torch {tokens / tt:.0f} tok/s"
  )
  for name in decoders:
    tj = statistics.median(records[name]["times"])
    same = float(np.mean(seqs[name] == theirs))
    print(
      f"greedy decode: jax[{name}] {tokens / tj:.0f} tok/s  ->  jax/torch speed {tt / tj:.2f}x"
      f"  (same tokens as torch: {same:.0%})"
    )
  tmp_dir.cleanup()


if __name__ == "__main__":
  main()
