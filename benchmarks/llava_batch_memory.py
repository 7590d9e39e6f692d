r"""Device memory of the LLaVA programs a CoT job runs, per request batch, at LLaVA-NeXT-Video-7B.

Compiled from abstract shapes (no weights made, nothing run, no accelerator): the model of
`experts/random_weights.py`'s `LLAVA_NEXT_VIDEO_7B` built by `aotd_jax.models.abstract`, in
`--dtype` (bf16 by default; `llava.load`, which the CoT configs' registry roles call, loads
float32), `--frames` frames (32, the CoT configs': 4,608 video tokens), the CoT configs'
official QA prompt (4 options) and `--new_tokens` greedy decode steps (100, their cap). For
each request batch in `--batches` (the request buckets of `LlavaVideoQA`, whose default
(1, 2, 4, 8, 16) the CoT configs use), each program `LlavaVideoQA` compiles for a generation:

  features         the vision tower, pooling and projector on the clips' frames
                   (`llava._video_features`: one clip per request)
  prefix           with the KV prefix cache (the CoT configs' `prefix_cache_mb`): the prefill
                   of the prompt's prefix (template + video tokens), returning its keys and
                   values (`llava._prefix_kv`)
  generate_prefix  the question's prefill after the kept prefixes and the decode loop
                   (`generate.decode_after_prefix_jit`, the prefixes passed as the requests'
                   own arrays, joined inside, as the coalescer hands them)
  merge            without the prefix cache: the prompt's embeddings with the video features
                   written in (`llava_next_video.merge_jit`)
  generate         without the prefix cache: the whole prompt's prefill and the decode loop
                   (`generate.decode_jit`, the prompt left-padded to its `prompt_bucket`)

(Likelihood scoring, `choice_scoring="likelihood"`, is not what the CoT configs run.)
For each, XLA's `memory_analysis()`: argument, output, temporary and aliased bytes; the
weights' share of the arguments (resident anyway) and `batch_gb`, what the batch allocates
beyond the weights (other arguments + outputs + temporaries). `budget` adds the resident
rest of a CoT job's device (all experts' weights, OWLv2's image-feature cache, the prefix
cache) to each program's `batch_gb` (one batch at a time on an accelerator: the device
scheduler's default) and says which batches fit an 80 GB H100 and a 141 GB H200, at all of
their memory and at JAX's default 75 % (`XLA_PYTHON_CLIENT_MEM_FRACTION`).

The CPU backend compiles: the buffers are the same HLO's on a GPU; XLA:GPU fuses differently
(fewer, larger fusions, so temporaries can differ either way by a layer's activations) and
XLA:CPU upcasts bf16 dots to float32 (temporary float32 copies of an operand, ~2x a layer's
bf16 temporaries), which XLA:GPU does not. The attention is the same on both: the backend's
default `attention_impl="xla"` (query blocks of 64 over the keys, `causal_attention.py`;
`llava.load` does not pick cuDNN), so no flash kernel changes the score buffers on a GPU.

  python benchmarks/llava_batch_memory.py --out=mem.json       # ~2.5 min on the 2-core CPU
  python benchmarks/llava_batch_memory.py --batches=1,4 --programs=prefix,generate_prefix
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1e9
GIB = 2**30
PROGRAMS = ("features", "prefix", "generate_prefix", "merge", "generate")
# device memory (GiB) of each card that JAX can address, as nvidia-smi reports it
DEVICES_GIB = {"H100 80GB": 79.6, "H200 141GB": 139.8}
JAX_DEFAULT_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default
# the CoT configs' device-resident caches (configs/common.py; OWLv2's is the registry default)
PREFIX_CACHE_MB = 16384
OWL_FEATURE_CACHE_MB = 8192
UNIVTG_FEATURE_CACHE_MB = 64


def _nbytes(tree) -> int:
  import jax
  import numpy as np

  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _temp_live_peaks(dump_dir: str) -> tuple[float, float]:
  """(peak live bytes of the program's temporaries, the same without XLA:CPU's float32 copies of
  bf16 weights), from the XLA dump of its one compilation: the buffer assignment's
  preallocated-temp values and the live ranges of the scheduled HLO. XLA:CPU has no bf16 dot:
  it converts every bf16 weight matrix to float32 (`wrapped_convert` of a parameter's shape),
  and in a program with a decode loop these copies are hoisted and all live at once (~27 GB
  at 7B); XLA:GPU makes none. Peaks ignore fragmentation (XLA's packed temp size is larger)."""
  import glob
  import re

  import numpy as np

  (assignment,) = glob.glob(os.path.join(dump_dir, "*after_optimizations-buffer-assignment.txt"))
  (live,) = glob.glob(os.path.join(dump_dir, "*after_optimizations-live-range.txt"))
  params, temps, in_temp = set(), {}, False
  value = re.compile(r"value: <\d+ (\S+)(?: \(phi\))? @\d+> \(size=(\d+),offset=(\d+)\): (\S+)")
  with open(assignment, encoding="utf-8") as f:
    for line in f:
      if line.startswith("allocation"):
        in_temp = "preallocated-temp" in line
        shape = re.search(r"parameter \d+, shape \|bf16\[([\d,]*)\]", line)
        if shape:
          params.add(shape.group(1))
        continue
      m = value.search(line) if in_temp else None
      if m:
        name = m.group(1) if "{" in m.group(1) else m.group(1) + "{}"
        dims = re.match(r"f32\[([\d,]*)\]", m.group(4))
        upcast = name.startswith("wrapped_convert") and dims is not None and dims.group(1) in params
        temps[name] = (int(m.group(2)), int(m.group(3)), upcast)
  ranges = {}
  with open(live, encoding="utf-8") as f:
    for line in f:
      m = re.match(r"^\s+(\S+\{[^}]*\}):(\d+)-(\d+)$", line)
      if m and m.group(1) in temps:
        ranges[m.group(1)] = (int(m.group(2)), int(m.group(3)))
  # bytes in use at a time: the union of the live values' address ranges (values that share
  # a buffer, a loop's carried state, count once); the peak is at some value's start
  names = sorted(ranges)
  start = np.array([ranges[n][0] for n in names])
  stop = np.array([ranges[n][1] for n in names])
  lo = np.array([temps[n][1] for n in names])
  hi = lo + np.array([temps[n][0] for n in names])
  upcast = np.array([temps[n][2] for n in names])
  peaks = []
  for keep in (np.ones_like(upcast), ~upcast):
    peak = 0
    for t in np.unique(start[keep]):
      at = keep & (start <= t) & (stop >= t)
      order = np.argsort(lo[at])
      a, z = lo[at][order], hi[at][order]
      reach = np.maximum.accumulate(z)
      # a new run of addresses starts where a range begins past all the earlier ones' ends
      new = np.concatenate([[True], a[1:] > reach[:-1]])
      run_ends = np.append(np.flatnonzero(new)[1:] - 1, len(a) - 1)
      peak = max(peak, int(np.sum(reach[run_ends] - a[new])))
    peaks.append(peak)
  return peaks[0], peaks[1]


def _memory(compiled, rows_bytes: int, seconds: float, dump_dir: str) -> dict:
  """A compiled program's buffers (GB): XLA:CPU's figures, and `batch_gpu_gb`, the estimate of
  what the batch allocates on a GPU beyond the resident weights (its own inputs, outputs and
  the temporaries' live peak without the float32 weight copies)."""
  m = compiled.memory_analysis()
  arg, out, temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
  alias = m.alias_size_in_bytes
  live, live_gpu = _temp_live_peaks(dump_dir)
  return {
    "argument_gb": round(arg / GB, 3),
    "weights_gb": round((arg - rows_bytes) / GB, 3),  # the weights the program reads
    "inputs_gb": round(rows_bytes / GB, 3),  # the batch's own inputs
    "output_gb": round(out / GB, 3),
    "temp_gb": round(temp / GB, 3),
    "alias_gb": round(alias / GB, 3),
    "batch_cpu_gb": round((rows_bytes + out + temp - alias) / GB, 3),
    "temp_live_peak_gb": round(live / GB, 3),
    "temp_live_peak_no_upcast_gb": round(live_gpu / GB, 3),
    "batch_gpu_gb": round((rows_bytes + out + live_gpu - alias) / GB, 3),
    "compile_s": round(seconds, 1),
  }


def _other_experts_gb(dtype: str) -> dict:
  """Weights (GB) of the CoT configs' other model experts at their released sizes (abstract
  models, float32 as their registry roles load them) and LLaVA's own in `dtype`."""
  from aotd_jax.models.abstract import abstract_model
  from experts import random_weights as rw

  def size_of(build) -> float:
    from flax import nnx

    return _nbytes(nnx.state(abstract_model(build))) / GB

  def owl(rngs):
    from aotd_jax.models.owlv2 import Owlv2Config, Owlv2ForObjectDetection

    text, vision = rw._clip_configs(rw.OWLV2_B16)
    cfg = Owlv2Config(text_config=text, vision_config=vision, projection_dim=512)
    return Owlv2ForObjectDetection(cfg, rngs=rngs)

  def clip(rngs):
    from aotd_jax.models.clip import CLIPConfig, CLIPModel

    text, vision = rw._clip_configs(rw.CLIP_B32)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    return CLIPModel(cfg, rngs=rngs)

  def univtg(rngs):
    from aotd_jax.models.univtg import UniVTG, UniVTGConfig

    cfg = UniVTGConfig(v_feat_dims=(512,), t_feat_dim=512, **rw.UNIVTG_RELEASED)
    return UniVTG(cfg, rngs=rngs)

  return {"owlv2_b16": size_of(owl), "clip_b32": size_of(clip), "univtg": size_of(univtg)}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batches", default="1,2,4,8,16", help="request batches (buckets) to compile")
  ap.add_argument("--programs", default=",".join(PROGRAMS), help=f"any of {','.join(PROGRAMS)}")
  ap.add_argument("--frames", type=int, default=32)
  ap.add_argument("--new_tokens", type=int, default=100)
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--out", default="", help="also write the JSON result here")
  args = ap.parse_args(argv)
  try:
    batches = sorted({int(b) for b in args.batches.split(",")})
  except ValueError:
    raise SystemExit(f"--batches={args.batches!r}: not integers like 1,4,16") from None
  programs = [p for p in args.programs.split(",") if p]
  bad = [p for p in programs if p not in PROGRAMS]
  if bad or not programs:
    raise SystemExit(f"--programs={args.programs!r}: {bad or 'none'}; choose from {PROGRAMS}")
  if batches[0] < 1 or args.frames < 1 or args.new_tokens < 1:
    raise SystemExit("need --batches >= 1, --frames >= 1, --new_tokens >= 1")

  import shutil
  import tempfile

  # one XLA dump per compilation (buffer assignment and live ranges: `_temp_live_peaks`); set
  # before JAX starts its backend
  dump_dir = tempfile.mkdtemp(prefix="llava_batch_memory_")
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir} --xla_dump_hlo_module_re=^jit_"
  )
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from aotd_jax.data.conversation import ANSWER_SUFFIX, format_question
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models import generate as g
  from aotd_jax.models import llava_next_video as lnv
  from aotd_jax.models.abstract import abstract_model
  from experts import random_weights as rw
  from experts.backends import llava

  size = dict(rw.LLAVA_NEXT_VIDEO_7B, dtype=args.dtype)
  cfg = rw.llava_config(size)
  # what `llava.load` builds, but for the dtype: `attention_impl` "xla" (query blocks), the
  # CPU kernels off (a GPU has none)
  options = ComputeOptions(dtype=args.dtype, param_dtype=args.dtype, cpu_kernels=False)
  model = abstract_model(
    lambda rngs: lnv.LlavaNextVideoForConditionalGeneration(cfg, options=options, rngs=rngs)
  )
  v = size["vocab"]
  tok = rw.WordTokenizer(v, video_token_id=v - 2, image_token_id=v - 1)
  qa = llava.LlavaVideoQA(model, tok, num_frames=args.frames, prompt_format="official")
  question = llava.action_question("official", "cup", True)
  choices = ["Took.", "Put down.", "Washed.", "Threw."]
  ids = qa.prompt_ids(format_question(question, choices, "official") + "\n" + ANSWER_SUFFIX)
  length, p = ids.shape[1], qa.prefix_length(ids)
  width, full = g.prompt_bucket(length - p), g.prompt_bucket(length)
  tokens = args.frames * cfg.video_tokens_per_frame()
  text = cfg.text_config
  dtype, i32, f32 = jnp.dtype(args.dtype), jnp.int32, jnp.float32
  vc = cfg.vision_config

  graphdef, state = nnx.split(model)
  graphdef = g.static_graphdef(graphdef)
  lm_graphdef, lm_state = nnx.split(model.language_model)
  lm_graphdef = g.static_graphdef(lm_graphdef)
  weights = _nbytes(state)

  def sds(shape, dt):
    return jax.ShapeDtypeStruct(shape, dt)

  sampling = (
    sds((1,), i32),  # eos
    sds((), i32),  # pad
    sds((), f32),  # temperature
    sds((), f32),  # top_p
    jax.eval_shape(lambda: jax.random.PRNGKey(0)),
  )

  def compile_program(name: str, b: int):
    feats = sds((b, tokens, text.hidden_size), dtype)
    if name == "features":
      pixels = sds((b, args.frames, 3, vc.image_size, vc.image_size), f32)
      fn = jax.jit(functools.partial(llava._video_features, graphdef))
      return fn.lower(pixels, state), pixels
    if name == "prefix":
      fn = jax.jit(functools.partial(llava._prefix_kv, graphdef))
      inputs = (sds((b, p), i32), feats)
      return fn.lower(inputs, state), inputs
    if name == "generate_prefix":
      # each request's kept (1, kv_heads, P, head_dim) arrays per layer, as the coalescer
      # hands a full batch to `generate_after_prefix` (a padded one repeats a reference)
      row = sds((1, text.num_key_value_heads, p, text.head_dim), dtype)
      blocks = tuple((row,) * b for _ in range(text.num_hidden_layers))
      lowered = g.decode_after_prefix_jit.lower(
        lm_graphdef,
        lm_state,
        blocks,
        blocks,
        sds((b, width), i32),
        sds((b, width), i32),
        *sampling,
        max_new_tokens=args.new_tokens,
        sample=False,
      )
      return lowered, (blocks, blocks, sds((b, width), i32), sds((b, width), i32))
    if name == "merge":
      lowered = lnv.merge_jit.lower(
        graphdef, state, sds((b, full), i32), None, None, feats, image_sizes=None
      )
      return lowered, (sds((b, full), i32), feats)
    lowered = g.decode_jit.lower(
      lm_graphdef,
      lm_state,
      None,
      sds((b, full, text.hidden_size), dtype),
      sds((b, full), i32),
      *sampling,
      None,
      None,
      max_new_tokens=args.new_tokens,
      sample=False,
    )
    return lowered, (sds((b, full, text.hidden_size), dtype), sds((b, full), i32))

  rows = {}
  for name in programs:
    for b in batches:
      t0 = time.perf_counter()
      lowered, inputs = compile_program(name, b)
      shutil.rmtree(dump_dir, ignore_errors=True)
      os.makedirs(dump_dir)
      compiled = lowered.compile()
      seconds = time.perf_counter() - t0
      rows.setdefault(name, {})[str(b)] = _memory(compiled, _nbytes(inputs), seconds, dump_dir)
      print(name, b, rows[name][str(b)], flush=True)
      del compiled, lowered
  shutil.rmtree(dump_dir, ignore_errors=True)

  others = _other_experts_gb(args.dtype)
  resident = {
    "llava_7b_weights": weights / GB,
    **others,
    "owlv2_feature_cache": OWL_FEATURE_CACHE_MB * 2**20 / GB,
    "univtg_feature_cache": UNIVTG_FEATURE_CACHE_MB * 2**20 / GB,
  }
  resident_gb = sum(resident.values())
  prefix_cache_gb = PREFIX_CACHE_MB * 2**20 / GB
  budget = {}
  for b in batches:
    # the prefix cache's bytes are resident where it is on; a batch's kept prefixes (the
    # generation's arguments) are counted besides it (evicted ones stay alive while a request
    # holds them)
    paths = {
      "prefix_cache": ("features", "prefix", "generate_prefix"),
      "no_prefix_cache": ("features", "merge", "generate"),
    }
    entry = {}
    for label, names in paths.items():
      if not all(n in rows for n in names):
        continue  # a path's budget needs all of its programs compiled
      extra = prefix_cache_gb if label == "prefix_cache" else 0.0
      peak = resident_gb + extra + max(rows[n][str(b)]["batch_gpu_gb"] for n in names)
      entry[label] = {
        "peak_gb": round(peak, 1),
        "peak_gib": round(peak * GB / GIB, 1),
        **{
          f"fits {dev}" + (f" at {frac:.0%}" if frac < 1 else ""): peak * GB / GIB <= gib * frac
          for dev, gib in DEVICES_GIB.items()
          for frac in (1.0, JAX_DEFAULT_FRACTION)
        },
      }
    budget[str(b)] = entry

  result = {
    "model": f"LLaVA-NeXT-Video-7B, {args.dtype} (abstract: compiled, not run)",
    "backend_compiled_on": jax.devices()[0].platform,
    "frames": args.frames,
    "video_tokens": tokens,
    "prompt_tokens": length,
    "prompt_bucket": full,
    "prefix_tokens": p,
    "suffix_bucket": width,
    "new_tokens": args.new_tokens,
    "one_prefix_gb": round(
      2
      * text.num_hidden_layers
      * text.num_key_value_heads
      * p
      * text.head_dim
      * dtype.itemsize
      / GB,
      3,
    ),
    "programs": rows,
    "resident_gb": {k: round(v, 3) for k, v in resident.items()},
    "prefix_cache_gb": round(prefix_cache_gb, 3),
    "budget": budget,
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
