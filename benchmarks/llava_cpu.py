r"""LLaVA-NeXT-Video on CPU: our jitted train step and video-conditioned greedy decoding vs
transformers' PyTorch (eager), same random weights, same inputs, one run.

  python benchmarks/llava_cpu.py                 # ~40M params, 8 frames of 112x112, f32, AdamW
  python benchmarks/llava_cpu.py --variant=tiny  # seconds, for a quick check

Prints the f32 matmul peak (a large jnp matmul), the train-step time of both (each as a fraction
of that peak; FLOPs = 6 x matmul params x tokens for the tower, projector and LM, plus
attention), and decode tokens/s (prefill with the merged video embeddings + KV-cache loop) vs
transformers' `generate`. JAX and PyTorch runs alternate so load from other processes hits
both alike; medians are reported.

Ours is measured on one JAX device and on a mesh over `--devices` host CPU devices
(`jax_num_cpu_devices`; `--train_mesh`, `--decode_mesh`, as in `llama_cpu.py`); losses and
decoded tokens are checked against transformers for each.
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
  add_row_args,
  first_step,
  keep_memory,
  matmul_peak_flops,  # noqa: E402
  mesh_scope,
  parse_mesh,
  print_first_losses,
  run_step,
  set_host_devices,
  time_rounds,
)

VARIANTS = {
  # ~40M parameters: CLIP-ish tower 4 x 384, Llama 6 x 512, 8 frames of 112^2 (8x8 patches,
  # pooled to 4x4 = 16 tokens per frame, 128 video tokens).
  "bench": dict(
    vision=dict(
      hidden_size=384,
      intermediate_size=1536,
      num_hidden_layers=4,
      num_attention_heads=6,
      image_size=112,
      patch_size=14,
    ),
    text=dict(
      vocab_size=14000,
      hidden_size=512,
      intermediate_size=1408,
      num_hidden_layers=6,
      num_attention_heads=8,
      num_key_value_heads=4,
    ),
    frames=8,
    batch=4,
    text_tokens=64,
    prompt_text=16,
    new_tokens=64,
  ),
  "tiny": dict(
    vision=dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=28,
      patch_size=7,
    ),
    text=dict(
      vocab_size=128,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
    ),
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

  vision = transformers.CLIPVisionConfig(projection_dim=v["vision"]["hidden_size"], **v["vision"])
  text = transformers.LlamaConfig(
    max_position_embeddings=1024, pad_token_id=0, eos_token_id=2, **v["text"]
  )
  vocab = v["text"]["vocab_size"]
  cfg = transformers.LlavaNextVideoConfig(
    vision_config=vision, text_config=text, video_token_index=vocab - 1, image_token_index=vocab - 2
  )
  torch.manual_seed(0)
  return transformers.LlavaNextVideoForConditionalGeneration(cfg)


def step_flops(model, batch: int, seq: int, frames: int) -> float:
  """Train-step FLOPs: 6 x (matmul params x tokens through them) + attention (x3 for backward)."""
  from flax import nnx

  cfg = model.config
  vc, tc = cfg.vision_config, cfg.text_config

  def matmul_params(module, skip=()):
    n = 0
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
      name = "/".join(map(str, path))
      if var.get_value().ndim >= 2 and not any(s in name for s in skip):
        n += var.get_value().size
    return n

  images = batch * frames
  patches = (vc.image_size // vc.patch_size) ** 2 + 1
  video_tokens = frames * cfg.video_tokens_per_frame()
  tower = matmul_params(model.vision_tower, ("position_embedding",)) * images * patches
  tower_attn = 4 * vc.num_hidden_layers * vc.hidden_size * patches**2 * images
  proj = matmul_params(model.multi_modal_projector) * batch * video_tokens
  lm = matmul_params(model.language_model, ("embed_tokens",)) * batch * seq
  lm_attn = 4 * tc.num_hidden_layers * tc.num_attention_heads * tc.head_dim * seq * seq * batch
  return 6 * (tower + proj + lm) + 3 * (tower_attn + lm_attn)


def build_jax_step(model, lr=1e-4):
  """A jitted AdamW step on (params, opt_state), both donated; next-token CE on text positions."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(lr, weight_decay=0.0)

  def loss_fn(p, ids, videos):
    logits = nnx.merge(graphdef, p)(ids, pixel_values_videos=videos).logits[:, :-1]
    logits = logits.astype(jnp.float32)
    labels = ids[:, 1:]
    gold = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - gold)

  def step(p, opt_state, ids, videos):
    loss, grads = jax.value_and_grad(loss_fn)(p, ids, videos)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  return graphdef, params, jax.jit(tx.init)(params), jax.jit(step, donate_argnums=(0, 1))


def build_torch_step(model, lr=1e-4):
  import torch

  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

  def step(ids, videos):
    logits = model(input_ids=ids, pixel_values_videos=videos).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  return step


def main(argv=None, *, variants=None, make_hf_model=None, flops=None):
  """The benchmark; another LLaVA-family student (`onevision_cpu.py`) passes its `variants`,
  its transformers model builder `make_hf_model(variant)` and its `flops(model, batch, seq,
  frames)`."""
  variants = variants or VARIANTS
  make_hf_model = make_hf_model or hf_model
  flops_fn = flops or step_flops
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="bench", choices=sorted(variants))
  parser.add_argument("--steps", type=int, default=4)
  add_row_args(parser)
  args = parser.parse_args(argv)
  kept = keep_memory(args)
  v = variants[args.variant]
  set_host_devices(args.devices)

  import jax
  import torch
  from flax import nnx
  from aotd_jax import hf, sharding
  from aotd_jax.models import llava_next_video as lnv

  ref = make_hf_model(v)
  tmp_dir = tempfile.TemporaryDirectory()
  tmp = tmp_dir.name
  ref.save_pretrained(tmp)
  model = hf.from_pretrained(tmp)
  cfg = model.config
  n_params = sum(p.numel() for p in ref.parameters())
  batch, frames, side = v["batch"], v["frames"], cfg.vision_config.image_size
  video_tokens = cfg.video_tokens(frames)
  seq = video_tokens + v["text_tokens"]
  print(
    f"machine: {os.cpu_count()} CPUs, jax {jax.__version__} ({len(jax.devices())} "
    f"{jax.devices()[0].platform} devices), torch {torch.__version__} ({torch.get_num_threads()} threads), "
    f"keep_freed_memory={kept}"
  )
  print(
    f"model: {type(ref).__name__}, {n_params / 1e6:.1f}M params; batch {batch} x ({frames} frames {side}x{side} -> "
    f"{video_tokens} video tokens + {v['text_tokens']} text), float32, AdamW"
  )
  peak = matmul_peak_flops()
  print(f"f32 matmul peak (jnp 2048^3): {peak / 1e9:.1f} GFLOP/s")

  # ---- train step: ours on each mesh, interleaved with torch ----
  rng = np.random.default_rng(0)
  vocab = cfg.text_config.vocab_size
  ids_np = np.concatenate(
    [
      rng.integers(3, vocab - 2, (batch, 4)),
      np.full((batch, video_tokens), cfg.video_token_index),
      rng.integers(3, vocab - 2, (batch, v["text_tokens"] - 4)),
    ],
    1,
  ).astype(np.int32)
  videos_np = rng.standard_normal((batch, frames, 3, side, side)).astype(np.float32)
  ids_t, videos_t = torch.tensor(ids_np, dtype=torch.long), torch.tensor(videos_np)
  meshes = {"1 device": None}
  if args.devices > 1:
    for spec in filter(None, args.train_mesh.split(";")):
      meshes[f"mesh {spec}"] = sharding.make_mesh(parse_mesh(spec))
  build = lambda mesh: build_jax_step(model if mesh is None else hf.from_pretrained(tmp, mesh=mesh))
  runs = {name: first_step(mesh, build, (ids_np, videos_np)) for name, mesh in meshes.items()}
  from aotd_jax.kernels import amx_matmul
  from aotd_jax.models.options import with_options

  precision_rows = {}  # row name -> matmul_precision
  for precision in filter(None, args.precision_rows.split(",")):
    name = f"1 device, {precision}{'' if amx_matmul.available() else ' (no AMX: f32 dots)'}"
    precision_rows[name] = precision
    runs[name] = first_step(
      None,
      lambda _, p=precision: build_jax_step(
        with_options(hf.from_pretrained(tmp), matmul_precision=p)
      ),
      (ids_np, videos_np),
    )
  torch_step = build_torch_step(ref.train())
  print_first_losses(runs, torch_step(ids_t, videos_t).item())
  torch_run = dict(times=[], cpu=[])
  calls = [(r, lambda r=r: run_step(r)) for r in runs.values()]
  time_rounds(calls + [(torch_run, lambda: torch_step(ids_t, videos_t))], args.steps)
  flops = flops_fn(model, batch, seq, frames)
  tt = statistics.median(torch_run["times"])
  print(f"train step: torch {tt * 1e3:.0f} ms ({flops / tt / peak:.0%} of peak)")
  for name, r in runs.items():
    tj = statistics.median(r["times"])
    print(
      f"train step: jax[{name}] {tj * 1e3:.0f} ms ({flops / tj / peak:.0%} of peak)  "
      f"->  jax/torch speed {tt / tj:.2f}x"
    )
  print(
    "  step times (ms): "
    + "; ".join(
      f"{name} " + " ".join(f"{t * 1e3:.0f}" for t in r["times"])
      for name, r in [("torch", torch_run), *runs.items()]
    )
  )

  # ---- video-conditioned greedy decoding ----
  trained = runs["1 device"]
  model = nnx.merge(
    trained["graphdef"], trained["state"][0]
  )  # the step donated the original buffers
  with tempfile.TemporaryDirectory() as tmp2:  # same (trained) weights on both sides again
    hf.save_pretrained(model, tmp2)
    ref = type(ref).from_pretrained(tmp2).eval()
    decoders = {"1 device": (None, model)}
    if args.devices > 1:
      mesh = sharding.make_mesh(parse_mesh(args.decode_mesh))
      decoders[f"mesh {args.decode_mesh}"] = (mesh, hf.from_pretrained(tmp2, mesh=mesh))
    for name, precision in precision_rows.items():  # vision tower and prefill take the AMX kernel
      decoders[name] = (None, with_options(model, matmul_precision=precision))
  prompt = np.concatenate(
    [
      np.full((batch, video_tokens), cfg.video_token_index),
      rng.integers(3, vocab - 2, (batch, v["prompt_text"])),
    ],
    1,
  ).astype(np.int32)
  mask = np.ones_like(prompt)
  n_new = v["new_tokens"]
  kw = dict(max_new_tokens=n_new, eos_token_id=-1, pad_token_id=0)

  def run_jax(name):
    mesh, m = decoders[name]
    with mesh_scope(mesh):
      return lnv.generate(m, prompt, mask, pixel_values_videos=videos_np, **kw)

  seqs = {name: np.asarray(run_jax(name).sequences) for name in decoders}  # compile
  records = {name: dict(times=[], cpu=[]) for name in decoders}
  torch_run = dict(times=[], cpu=[])
  with torch.no_grad():
    tp, tm = torch.tensor(prompt, dtype=torch.long), torch.tensor(mask)
    gen = dict(
      input_ids=tp,
      attention_mask=tm,
      pixel_values_videos=videos_t,
      do_sample=False,
      max_new_tokens=n_new,
      min_new_tokens=n_new,
      pad_token_id=0,
    )
    theirs = ref.generate(**gen).numpy()[:, prompt.shape[1] :]  # warm-up
    calls = [
      (records[name], lambda name=name: run_jax(name).sequences.block_until_ready())
      for name in decoders
    ]
    time_rounds(calls + [(torch_run, lambda: ref.generate(**gen))], args.steps)
  tokens = batch * n_new
  tt = statistics.median(torch_run["times"])
  # Each decode step streams the LM's matmul weights once for `batch` rows.
  lm_matmul = sum(
    var.get_value().size
    for path, var in nnx.to_flat_state(nnx.state(model.language_model, nnx.Param))
    if var.get_value().ndim >= 2 and "embed_tokens" not in "/".join(map(str, path))
  )
  dflops = 2 * lm_matmul
  print(
    f"greedy decode (batch {batch}, {video_tokens} video + {v['prompt_text']} text prompt, {n_new} new): "
    f"torch {tokens / tt:.0f} tok/s ({dflops * tokens / tt / peak:.1%} of peak)"
  )
  for name in decoders:
    tj = statistics.median(records[name]["times"])
    same = float(np.mean(seqs[name] == theirs))
    print(
      f"greedy decode: jax[{name}] {tokens / tj:.0f} tok/s ({dflops * tokens / tj / peak:.1%} of peak)  "
      f"->  jax/torch speed {tt / tj:.2f}x  (same tokens as torch: {same:.0%})"
    )
  tmp_dir.cleanup()


if __name__ == "__main__":
  main()
