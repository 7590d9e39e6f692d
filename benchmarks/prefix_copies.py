r"""What assembling a batch of kept LLaVA KV prefixes costs, at LLaVA-NeXT-Video-7B's shapes.

Compiled from abstract shapes (`jax.ShapeDtypeStruct`, the model built by `nnx.eval_shape`),
never run, so it needs no accelerator and no 15 GB of weights: the language model of
`experts/random_weights.py`'s `LLAVA_NEXT_VIDEO_7B` (bf16, 32 layers, 32 KV heads of 128),
`--frames` frames (32: 4,608 video tokens), the CoT configs' official Query_Actions prompt,
a coalesced batch of `--requests` generation requests padded to the bucket `--batch` (the gpu
preset's LLaVA buckets are (1, 4)) and `--new_tokens` decode steps.

Two ways a batch's kept prefixes (per request and layer a (1, kv_heads, P, head_dim) key and
value array) reach the jitted generation (`generate.decode_after_prefix_jit`):
  joined before: the coalescer concatenates the requests' arrays on the device (one eager
    program per layer and key/value), `BucketedJit` pads them to the bucket (another, when
    requests < batch), then the jitted call copies them into its larger cache;
  joined inside: the requests' own arrays are passed (`experts.batching.RowParts`, the padding
    a repeated reference) and joined inside the jitted call, in the fusion that writes the
    cache (the current code).
For each, the XLA programs' `memory_analysis()` (argument / output / temporary bytes) and
`cost_analysis()` "bytes accessed", summed over the eager programs where there are any, and
`joined_arrays_made`: instructions of the jitted program that make a joined (batch, kv_heads,
P, head_dim) array (0: the join is fused into the write of the larger cache, one copy).
The decode program's own temporaries on the CPU include float32 copies of the cache (XLA CPU
upcasts bf16 dots), which a GPU does not make; they are the same in both ways.
The CPU backend compiles them here; buffer sizes are the same on a GPU, fusion decisions
alike (the join and the pad are one loop fusion on both).

  python benchmarks/prefix_copies.py                 # requests=3, batch=4 (a padded batch)
  python benchmarks/prefix_copies.py --requests=4    # a full batch: no padding step
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1e9


def _cost_bytes(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("bytes accessed", 0.0))


def _program(compiled) -> dict:
  """A compiled program's buffers (GB): arguments, outputs, temporaries, bytes accessed."""
  m = compiled.memory_analysis()
  return {
    "argument_gb": m.argument_size_in_bytes / GB,
    "output_gb": m.output_size_in_bytes / GB,
    "temp_gb": m.temp_size_in_bytes / GB,
    "bytes_accessed_gb": _cost_bytes(compiled) / GB,
  }


def _sum(programs: list[dict]) -> dict:
  return {k: sum(p[k] for p in programs) for k in programs[0]} if programs else {}


def _rounded(d: dict) -> dict:
  return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--frames", type=int, default=32)
  ap.add_argument("--requests", type=int, default=3, help="requests in the coalesced batch")
  ap.add_argument("--batch", type=int, default=4, help="the bucket the batch is padded to")
  ap.add_argument("--new_tokens", type=int, default=8)
  ap.add_argument("--out", default="", help="also write the JSON result here")
  args = ap.parse_args(argv)
  if not 1 <= args.requests <= args.batch or args.frames < 1 or args.new_tokens < 1:
    raise SystemExit("need 1 <= --requests <= --batch, --frames >= 1, --new_tokens >= 1")

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from aotd_jax.data.conversation import ANSWER_SUFFIX, format_question
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models import generate as g
  from aotd_jax.models.llava_next_video import LlavaNextVideoForConditionalGeneration
  from experts import random_weights as rw
  from experts.backends.llava import LlavaVideoQA, action_question
  from experts.batching import RowParts, pad_rows

  size = rw.LLAVA_NEXT_VIDEO_7B
  cfg = rw.llava_config(size)
  options = ComputeOptions(dtype=size["dtype"], param_dtype=size["dtype"], cpu_kernels=False)
  model = nnx.eval_shape(
    lambda: LlavaNextVideoForConditionalGeneration(cfg, options=options, rngs=nnx.Rngs(0))
  )
  v = size["vocab"]
  tok = rw.WordTokenizer(v, video_token_id=v - 2, image_token_id=v - 1)
  qa = LlavaVideoQA(model, tok, num_frames=args.frames, prompt_format="official")
  question = action_question("official", "cup", True)
  choices = ["Took.", "Put down.", "Washed.", "Threw."]
  ids = qa.prompt_ids(format_question(question, choices, "official") + "\n" + ANSWER_SUFFIX)
  p = qa.prefix_length(ids)
  width = g.prompt_bucket(ids.shape[1] - p)
  text = cfg.text_config
  layers, kv_heads, head_dim = text.num_hidden_layers, text.num_key_value_heads, text.head_dim
  dtype = jnp.dtype(size["dtype"])
  row = jax.ShapeDtypeStruct((1, kv_heads, p, head_dim), dtype)
  joined = jax.ShapeDtypeStruct((args.batch, kv_heads, p, head_dim), dtype)
  b = args.batch
  graphdef, state = nnx.split(model.language_model)
  graphdef = g.static_graphdef(graphdef)
  i32 = jnp.int32
  rest = (
    jax.ShapeDtypeStruct((b, width), i32),  # suffix ids
    jax.ShapeDtypeStruct((b, width), i32),  # mask
    jax.ShapeDtypeStruct((1,), i32),  # eos
    jax.ShapeDtypeStruct((), i32),  # pad
    jax.ShapeDtypeStruct((), jnp.float32),  # temperature
    jax.ShapeDtypeStruct((), jnp.float32),  # top_p
    jax.eval_shape(lambda: jax.random.PRNGKey(0)),
  )

  def decode(blocks) -> dict:
    t0 = time.perf_counter()
    compiled = g.decode_after_prefix_jit.lower(
      graphdef,
      state,
      tuple(blocks for _ in range(layers)),
      tuple(blocks for _ in range(layers)),
      *rest,
      max_new_tokens=args.new_tokens,
      sample=False,
    ).compile()
    # a joined-but-unpadded (batch, kv_heads, P, head_dim) array made inside the program (not
    # passed in) would be a second copy of the kept bytes: count the instructions that make one
    shape = f"{jnp.dtype(size['dtype']).name[:4]}[{b},{kv_heads},{p},{head_dim}]"
    made = sum(
      1
      for line in compiled.as_text().splitlines()
      if f"= {shape}" in line and "parameter(" not in line
    )
    return dict(_program(compiled), joined_arrays_made=made, compile_s=time.perf_counter() - t0)

  # joined before: the coalescer's eager concatenation, then BucketedJit's eager padding (the
  # code before RowParts: `jnp.concatenate(parts)`, `pad_rows`' concatenate + repeat)
  eager = []
  concat = jax.jit(lambda *parts: jnp.concatenate(parts)).lower(*[row] * args.requests)
  eager.append(_program(concat.compile()))
  if args.requests < b:
    n = args.requests
    pad = jax.jit(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], b - n, axis=0)], axis=0)).lower(
      jax.ShapeDtypeStruct((n, kv_heads, p, head_dim), dtype)
    )
    eager.append(_program(pad.compile()))
  eager_one = _sum(eager)
  eager_all = {k: v * 2 * layers for k, v in eager_one.items()}  # every layer's keys and values
  before = decode((joined,))
  # joined inside: the requests' arrays, the padding a repeated reference (what pad_rows makes)
  after = decode(pad_rows(RowParts([row] * args.requests), b).parts)

  prefix_gb = 2 * layers * kv_heads * p * head_dim * dtype.itemsize / GB
  alloc_before = eager_all["output_gb"] + before["temp_gb"] + before["output_gb"]
  alloc_after = after["temp_gb"] + after["output_gb"]
  moved_before = eager_all["bytes_accessed_gb"] + before["bytes_accessed_gb"]
  result = {
    "model": "LLaVA-NeXT-Video-7B language model, bf16 (abstract: compiled, not run)",
    "backend_compiled_on": jax.devices()[0].platform,
    "frames": args.frames,
    "prefix_tokens": p,
    "suffix_bucket": width,
    "requests": args.requests,
    "batch": b,
    "new_tokens": args.new_tokens,
    "one_prefix_gb": round(prefix_gb, 3),
    "joined_before": {
      "eager_calls": len(eager) * 2 * layers,
      "eager": _rounded(eager_all),
      "decode": _rounded(before),
    },
    "joined_inside": {"eager_calls": 0, "decode": _rounded(after)},
    "allocated_per_batch_gb": {"before": round(alloc_before, 3), "inside": round(alloc_after, 3)},
    "bytes_accessed_per_batch_gb": {
      "before": round(moved_before, 3),
      "inside": round(after["bytes_accessed_gb"], 3),
    },
    "load_average": [round(x, 1) for x in os.getloadavg()],
  }
  text_out = json.dumps(result, indent=1)
  print(text_out)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text_out + "\n")
  return result


if __name__ == "__main__":
  main()
