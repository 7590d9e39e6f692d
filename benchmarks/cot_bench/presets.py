"""The benchmark's sizes: tiny, cpu, scaled and gpu presets, the smoke run's cut, the modes."""

from __future__ import annotations

from experts import random_weights as rw

TINY_OWL = dict(
  image_size=32,
  patch_size=8,
  vision_hidden=32,
  vision_layers=1,
  vision_heads=2,
  text_hidden=32,
  text_layers=1,
  text_heads=2,
  projection=32,
  vocab=99,
  text_length=16,
)
TINY_CLIP = dict(
  TINY_OWL, image_size=32, patch_size=16, vision_hidden=16, text_hidden=16, projection=12
)
TINY_UNIVTG = dict(hidden_dim=32, nheads=4, enc_layers=1, dim_feedforward=48, clip_length=2.0)
TINY_LLAVA = rw.LLAVA_TINY

PRESETS = {
  "tiny": dict(
    owl=TINY_OWL,
    clip=TINY_CLIP,
    univtg=TINY_UNIVTG,
    llava=TINY_LLAVA,
    questions=8,
    threads=4,
    frames=4,
    frame_hw=(24, 32),
    spans=(6.0, 10.0),
    llava_frames=2,
    new_tokens=3,
    owl_buckets=(1, 4),
    buckets=(1, 4, 16),
    llava_buckets=(1, 4),
    rounds=1,
  ),
  # scaled-down experts: widths and depths cut, the programs and call pattern unchanged
  "cpu": dict(
    owl=dict(
      TINY_OWL,
      image_size=96,
      patch_size=16,
      vision_hidden=96,
      vision_layers=2,
      vision_heads=4,
      text_hidden=64,
      projection=64,
    ),
    clip=dict(
      TINY_CLIP,
      image_size=64,
      patch_size=16,
      vision_hidden=64,
      vision_layers=2,
      vision_heads=4,
      text_hidden=64,
      text_layers=2,
      text_heads=4,
      projection=64,
    ),
    univtg=dict(hidden_dim=128, nheads=4, enc_layers=2, dim_feedforward=128, clip_length=2.0),
    llava=dict(
      vision_hidden=64,
      vision_layers=2,
      vision_heads=4,
      image_size=56,
      patch_size=14,
      hidden=128,
      intermediate=256,
      layers=2,
      heads=4,
      kv_heads=4,
      vocab=1000,
    ),
    questions=64,
    threads=16,
    frames=8,
    frame_hw=(72, 96),
    spans=(12.0, 20.0),
    llava_frames=4,
    new_tokens=8,
    owl_buckets=(1, 8, 32),
    buckets=(1, 4, 16, 64),
    llava_buckets=(1, 4, 16),
    rounds=2,
  ),
  # real sizes (benchmarks/cot_throughput.py's docstring); STAR's 32 frames per question.
  # LLaVA batches of at most 4 requests, an H200's setting: a 4-request prefix prefill holds
  # 33.0 GB (9.7 GB of keys/values, 23.2 GB of temporaries), a 69.3 GiB device peak beside the
  # CoT configs' resident experts and caches (benchmarks/llava_batch_memory.py); the CoT
  # configs cap at 2, what an 80 GB H100 holds (docs/experts.md)
  "gpu": dict(
    owl=rw.OWLV2_B16,
    clip=rw.CLIP_B32,
    univtg=rw.UNIVTG_RELEASED,
    llava=rw.LLAVA_NEXT_VIDEO_7B,
    questions=24,
    threads=16,
    frames=32,
    frame_hw=(336, 448),
    spans=(16.0, 24.0),
    llava_frames=32,
    # the CoT configs' cap on a reply (the official AoTD's max_new_tokens): a random model runs
    # every reply to it, real replies stop earlier, so the time per question is an upper bound
    new_tokens=100,
    owl_buckets=(32,),
    buckets=(1, 16),
    # every UniVTG call brings 8 or 12 frames (16 / 24 s in 2 s clips) and a batch a sum of
    # them, a multiple of 4: a CLIP image batch of 1 frame never forms, so it is not compiled
    image_buckets=(16,),
    llava_buckets=(1, 4),
    llava_prefix_cache_mb=16384,  # as the CoT configs
    rounds=1,
    # a lent device runs a command for 10 minutes: timed rounds that would end past 500 s
    # are skipped (and listed), and at 570 s the run reports what it has and exits
    time_budget_s=500.0,
    deadline_s=570.0,
  ),
}
# issue 22's scaled-down size: the cpu preset's experts with the real run's proportions, LLaVA's
# language model the one large model (hidden 1024, 8 layers, LLaMA's vocab: 517 MB of weights
# read per decode step, past this CPU's caches as 7B's ~13 GB are past a GPU's), its replies at
# the CoT configs' cap (100 tokens), its request buckets the backend's default (at this size
# memory does not bind; the CoT configs cap LLaVA-7B's at 2 for an 80 GB GPU's memory); 32
# questions, one round (the one-at-a-time mode alone takes ~2.5 min)
PRESETS["scaled"] = dict(
  PRESETS["cpu"],
  llava=dict(
    PRESETS["cpu"]["llava"],
    hidden=1024,
    intermediate=2816,
    layers=8,
    heads=16,
    kv_heads=16,
    vocab=32064,
  ),
  questions=32,
  new_tokens=100,
  llava_buckets=(1, 2, 4, 8, 16),
  rounds=1,
)
BASE_MODES = ("on", "per_expert", "off", "serial")
# each mode also with LLaVA's KV prefix cache off (`--llava_prefix_cache_mb` > 0 sets it on)
MODES = BASE_MODES + tuple(f"{m}-noprefix" for m in BASE_MODES)


def smoke_sizes(p: dict) -> dict:
  """The preset with every model's width and depth cut to the tiny ones (same code path)."""
  p = dict(
    p,
    owl=TINY_OWL,
    clip=TINY_CLIP,
    univtg=dict(TINY_UNIVTG, clip_length=p["univtg"]["clip_length"]),
    llava=dict(TINY_LLAVA, dtype=p["llava"].get("dtype", "float32")),
    frame_hw=(24, 32),
  )
  return p
