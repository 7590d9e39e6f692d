r"""CoT job expert side: questions/s of STAR-like programs, cross-program batching on vs off.

A CoT job runs `num_threads` programs at once. Each STAR-like program here calls every model
expert on its question clip (`frames` frames sampled over a `span` of seconds), through the
real `experts.Toolbox` (tool cache, detector feature LRU):

  window = Filter_frames_with_act(clip, action)      # UniVTG on CLIP frame features + text
  kept   = Filter_frames_with_obj(clip, objects[0])  # OWLv2 image side + class head
  seen   = exist(clip, objects[1])                   # OWLv2: class head on cached features
  acts   = Query_Actions(window or clip, objects[0], choices)  # LLaVA-NeXT-Video (generates)
  about  = Video_summary(clip)                       # LLaVA, every other question
  answer = select_answer(question, choices, {...})   # keyword selector (no model)

Random weights (experts/random_weights.py), LLaVA as configs/cot/star.py asks it (greedy reply
snapped to a choice, "official" prompts); a random model never emits EOS, so every reply is
`new_tokens` long (`--new_tokens`; the cpu preset 8, the gpu preset 100, the CoT configs' cap,
so that its seconds per question bound a real run's). The sandbox and the LLM stages are not in
the loop: this is the expert side.

Modes, on the same backends and the same pixels (a fresh tool cache and feature LRU per run):
  on:         every expert's coalescer on (experts/coalesce.py), all run by one device
              scheduler (experts/scheduler.py) that knows the programs in flight: a batch
              when they are all blocked on expert calls, the cheapest queue first
              (`--scheduler_order`, `--scheduler_window_cost`);
              `--scheduler_workers` batches at once (default as the CoT configs: 2 on a
              CPU, 1 on an accelerator);
  per_expert: the coalescers each with their own worker thread and wait window (the design
              before the scheduler; `--modes=on,per_expert,off,serial` adds it);
  off:        the coalescers bypassed, `threads` programs in flight, each call its own batch;
  serial:     off, one program at a time (the official agent's design).
A warm-up run of each mode compiles first; the timed rounds alternate modes and the best
round of each is kept. Reported: questions/s and s/question per mode, ratios, per-expert call
seconds (sum of call latencies) per mode, requests per batch and worker busy seconds per
coalescer, the busy fraction of the expert workers (sum of the coalescers' busy seconds / wall:
how much of the run an expert batch was executing; > 1 when experts overlap), the process's
CPU seconds per question (all threads: the work done, whatever the machine's load), XLA compilations
during the timed rounds (should be 0) and during the warm-up (with their compile seconds summed:
the coalescers compile their buckets from parallel threads, so the sum exceeds the wall time
`warmup_compile_s` when compilations overlap), and whether all modes gave the same answers;
`phase_s` and `xla_compilations_by_phase` give each phase's seconds and its compilations by
program name (benchmarks/budget.py).

The gpu preset runs under a time budget, for a lent device's 10-minute command: a timed round
predicted (from its mode's warm-up run) to end past `--time_budget_s` (500 s) is skipped and
listed in `skipped`, and at `--deadline_s` (570 s) the run prints and writes what it has and
exits with status 3. `--compilation_cache_dir=DIR` (off by default) keeps the compiled programs
in JAX's persistent cache, for a rerun on the same machine (docs/experts.md, "The GPU command").

  python benchmarks/cot_throughput.py --preset=cpu           # scaled-down experts (RESULTS.md)
  python benchmarks/cot_throughput.py --preset=tiny          # a smoke run (seconds)
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 python benchmarks/cot_throughput.py --preset=gpu \
    --out=cot_gpu.json                                         # real sizes, one GPU, < 10 min
  python benchmarks/cot_throughput.py --preset=gpu --smoke   # the gpu code path, tiny widths
  python benchmarks/cot_throughput.py --batch_cost            # + each expert at 1 vs 16 requests
  python benchmarks/cot_throughput.py --questions_per_video=7  # STAR-like: 7 questions a video

`--questions_per_video=N` (default 1: every question its own video) makes N consecutive
questions ask about one video and see the same frames, as STAR's ~7 questions per video do
when the whole video is the window (158.6K questions over ~22K videos): their image sides hit
OWLv2's device feature cache, UniVTG's frame-feature cache (`--feature_cache_mb`, 0: off) and
LLaVA's video-feature cache (`--llava_feature_cache_mb`, 0: off; a `Query_Actions` on the same
sampled frames as another call, e.g. the whole clip, runs only the language model), and a
repeated `Video_summary` the tool cache. Each mode starts with empty caches; the hits, calls
shared with another program and misses of the feature caches are reported per mode.

`--llava_size=hidden=1024,intermediate=2816,layers=4,...` (and `--llava_frames`) change the
preset's LLaVA: the size sweep of docs/experts.md, where the language model's weights read per
decode step (`llava_decode_weight_mb` in the output) grow past this CPU's caches as 7B's
~13 GB do past a GPU's. `cpu_ms_per_question_by_thread` splits each mode's CPU per question by
thread: the program threads (`time.thread_time` around each program), the scheduler's
workers, XLA's pools (`/proc/self/task`).

`--llava_prefix_cache_mb=MB` keeps LLaVA's KV cache of each clip's prompt prefix (template +
video tokens) on the device, so a generation on kept frames prefills only its question (the
gpu preset: 16384, as the CoT configs; others 0); a mode named `<mode>-noprefix` (e.g.
`--modes=on,off,serial,on-noprefix,serial-noprefix`) runs it with the prefix cache off, and
`ratio_prefix_cache_on_vs_off` compares them.

`--batch_cost` also times each coalesced expert part on its first request alone and on 16
copies of it in one call (the same compiled buckets): the gain batching can give that part at
most (16 x one / sixteen); a part whose gain is far below 16 is compute-bound at that size.

gpu: OWLv2 B/16 at 960 px, UniVTG at the released size (hidden 1024, 4 layers) on CLIP B/32,
LLaVA-NeXT-Video-7B shapes in bf16 (32 frames: 4,608 video tokens); `--smoke` keeps its
buckets, dtypes, frame count and modes but shrinks every width and depth (checks on a CPU that
the gpu preset runs). One JSON object is printed at the end and written to `--out`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.budget import DEADLINE_EXIT, RunClock  # noqa: E402
from experts import random_weights as rw  # noqa: E402

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
  # real sizes (see the module docstring); STAR's 32 frames per question. LLaVA batches of at
  # most 4 requests: a 4,650-token prefill is compute-bound already, and 4 keeps its KV cache
  # and attention scores (~11 + ~27 GB) clear of OWLv2's 32-frame batch on one 141 GB device
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
# the CoT configs' cap (100 tokens), its request buckets the CoT configs' (the backend's
# default); 32 questions, one round (the one-at-a-time mode alone takes ~2.5 min)
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
OBJECTS = ("cup", "book", "laptop", "towel", "bag", "pillow", "sandwich", "door")
ACTIONS = (
  "person opens the door",
  "person holds the cup",
  "person sits on the sofa",
  "person puts down the book",
)
CHOICES = (
  ("Took.", "Put down.", "Washed.", "Threw."),
  ("The cup.", "The book.", "The towel.", "The bag."),
)


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


def decode_weight_mb(model) -> float:
  """Megabytes of the language model's weights one decode step reads: all but the input
  embedding table (one row per token); the LM head is read whole."""
  import jax
  from flax import nnx

  leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model.language_model, nnx.Param))
  nbytes = {jax.tree_util.keystr(k): x.size * x.dtype.itemsize for k, x in leaves}
  table = sum(v for k, v in nbytes.items() if "embed_tokens" in k)
  return (sum(nbytes.values()) - table) / 2**20


def thread_cpu_s() -> dict[int, tuple[str, float]]:
  """CPU seconds (user + system) so far of each thread of this process, by native thread id,
  with the thread's name: the Python thread's, else the OS name (`/proc/self/task/*/comm`, e.g.
  XLA's pools); {} where there is no /proc. Clock-tick resolution (10 ms): for totals."""
  try:
    tids = os.listdir("/proc/self/task")
  except OSError:
    return {}
  names = {t.native_id: t.name for t in threading.enumerate()}
  tick, out = os.sysconf("SC_CLK_TCK"), {}
  for tid in map(int, tids):
    try:
      with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
        stat = f.read()
      with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
        comm = f.read().strip()
    except OSError:  # the thread ended meanwhile
      continue
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 14 and 15 of proc(5): utime, stime
    out[tid] = (names.get(tid, comm), (int(fields[11]) + int(fields[12])) / tick)
  return out


def cpu_by_thread(before: dict, after: dict, programs_s: float, questions: int) -> dict:
  """CPU milliseconds per question by kind of thread over a run: `programs` (the program
  threads' own CPU, `time.thread_time` around each program: tools, host pre/post-processing,
  dispatch when a call runs on its caller), the device scheduler's and coalescers' workers
  (by thread name, numbers dropped), and the other threads by OS name (XLA CPU's intra-op
  pool `tf_XLAEigen`; `python`: native threads that kept the process's name, XLA's runtime
  threads among them); `process` is their sum (threads that ended in the run, the programs
  aside, are not counted)."""
  import re

  kinds: dict[str, float] = {}
  for tid, (name, cpu) in after.items():
    if tid in before and before[tid][0] == name:  # else started during the run
      cpu -= before[tid][1]
    kind = re.sub(r"[/_-]?\d+$", "", name)
    kinds[kind] = kinds.get(kind, 0.0) + cpu
  kinds = {k: v for k, v in kinds.items() if v > 0}
  kinds["programs"] = programs_s
  out = {k: round(v / questions * 1e3, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
  out["process"] = round(sum(kinds.values()) / questions * 1e3, 2)
  return out


class Timed:
  """A backend whose expert calls add their latency to `seconds[role]` (thread-safe)."""

  METHODS = ("detect", "ground", "answer", "recognize", "summarize")

  def __init__(self, backend, role: str, seconds: dict, lock: threading.Lock):
    self._backend, self._role, self._seconds, self._lock = backend, role, seconds, lock

  def __getattr__(self, name):
    attr = getattr(self._backend, name)
    if name not in self.METHODS:
      return attr

    def timed(*args, **kwargs):
      t0 = time.perf_counter()
      try:
        return attr(*args, **kwargs)
      finally:
        with self._lock:
          self._seconds[self._role] = self._seconds.get(self._role, 0.0) + time.perf_counter() - t0

    return timed


class Experts:
  """The three model backends, built once, their coalescers on one `DeviceScheduler`;
  `bypass()` runs them without coalescers, `per_expert()` with a worker thread each."""

  def __init__(
    self,
    p: dict,
    wait_s: float,
    feature_cache_mb: float = 64.0,
    workers: int = 1,
    llava_cache_mb: float = 1024.0,
    llava_prefix_cache_mb: float = 0.0,
    scheduler_order: str = "cheapest",
    scheduler_window_cost: float = 0.5,
  ):
    from experts.backends.llava import LlavaVideoQA
    from experts.backends.owlv2 import Owlv2Detector
    from experts.backends.univtg import UniVTGGrounder
    from experts.scheduler import DeviceScheduler

    t0 = time.perf_counter()
    self.wait_s = wait_s
    self.scheduler = scheduler = DeviceScheduler(
      workers=workers, order=scheduler_order, window_cost=scheduler_window_cost
    )
    self.detector = Owlv2Detector(
      rw.owlv2(p["owl"]),
      rw.word_tokenize(p["owl"]["vocab"], p["owl"]["text_length"]),
      buckets=p["owl_buckets"],
      nms_threshold=None,
      coalesce=True,
      coalesce_wait_s=wait_s,
      scheduler=scheduler,
      query_template="a photo of a {}",
    )
    univtg, clip_model = rw.univtg(p["univtg"], p["clip"])
    self.grounder = UniVTGGrounder(
      univtg,
      clip_model,
      rw.word_tokenize(p["clip"]["vocab"], p["clip"]["text_length"]),
      buckets=p["buckets"],
      image_buckets=p.get("image_buckets"),
      coalesce=True,
      coalesce_wait_s=wait_s,
      scheduler=scheduler,
      feature_cache_mb=feature_cache_mb,
    )
    model, tokenizer = rw.llava(p["llava"])
    self.llava = LlavaVideoQA(
      model,
      tokenizer,
      num_frames=p["llava_frames"],
      max_new_tokens=p["new_tokens"],
      choice_scoring="generate",
      prompt_format="official",
      summary_prompt="ours",
      action_prompt="official",
      buckets=p["llava_buckets"],
      coalesce=True,
      coalesce_wait_s=wait_s,
      scheduler=scheduler,
      feature_cache_mb=llava_cache_mb,
      prefix_cache_mb=llava_prefix_cache_mb,
    )
    self.build_s = time.perf_counter() - t0

  def coalescers(self) -> dict:
    out = {"owlv2/image": self.detector.coalescer} if self.detector.coalescer else {}
    out.update({f"univtg/{k}": c for k, c in self.grounder.coalescers.items()})
    out.update({f"llava/{k}": c for k, c in self.llava.coalescers.items()})
    return out

  @contextlib.contextmanager
  def bypass(self):
    """Calls go straight to the bucketed functions (the same compiled programs)."""
    saved = (
      self.detector.coalescer,
      self.grounder.coalescers,
      self.llava.coalescers,
      self.llava.coalesce,
    )
    self.detector.coalescer, self.grounder.coalescers = None, {}
    self.llava.coalescers, self.llava.coalesce = {}, False
    try:
      yield
    finally:
      (
        self.detector.coalescer,
        self.grounder.coalescers,
        self.llava.coalescers,
        self.llava.coalesce,
      ) = saved

  @contextlib.contextmanager
  def per_expert(self):
    """Each coalescer replaced by one on the same function with its own worker thread."""
    from experts.coalesce import Coalescer

    def twin(c):
      return Coalescer(c.fn, wait_s=c.wait_s, output=c.output, name=c.name + "/own")

    saved = (self.detector.coalescer, self.grounder.coalescers, self.llava.coalescers)
    self.detector.coalescer = twin(saved[0])
    self.grounder.coalescers = {k: twin(c) for k, c in saved[1].items()}
    self.llava.coalescers = {k: twin(c) for k, c in saved[2].items()}
    twins = self.coalescers()
    try:
      yield twins
    finally:
      for c in twins.values():
        c.close()
      self.detector.coalescer, self.grounder.coalescers, self.llava.coalescers = saved

  @contextlib.contextmanager
  def without_prefix_cache(self, mode: str):
    """`mode` with LLaVA's KV prefix cache off (whole prompts prefilled)."""
    kept, self.llava.prefix_cache = self.llava.prefix_cache, None
    try:
      with self.mode(mode):
        yield
    finally:
      self.llava.prefix_cache = kept

  def mode(self, mode: str):
    """The context a mode runs in (see the module docstring)."""
    if mode.endswith("-noprefix"):
      return self.without_prefix_cache(mode.removesuffix("-noprefix"))
    if mode == "on":
      return contextlib.nullcontext()
    if mode == "per_expert":
      return self.per_expert()
    return self.bypass()

  def close(self):
    for backend in (self.detector, self.grounder, self.llava):
      backend.close()
    self.scheduler.close()


def make_questions(p: dict, tag: str, seed: int) -> list[dict]:
  """`questions` clips of `frames` frames sampled over one of `spans` seconds (30 fps source);
  `per_video` consecutive questions ask about the same video and see the same frames (as
  STAR's questions of a video do with the whole video as window), each its own clip object."""
  import experts

  rng = np.random.default_rng(seed)
  h, w = p["frame_hw"]
  per_video = p.get("per_video", 1)
  out = []
  for i in range(p["questions"]):
    v = i // per_video
    span = float(p["spans"][v % len(p["spans"])])
    ids = np.linspace(0, span * 30 - 1, p["frames"]).round().astype(np.int64)
    if i % per_video == 0:
      frames = rng.integers(0, 255, (p["frames"], h, w, 3), dtype=np.uint8)
    objs = [OBJECTS[j] for j in rng.permutation(len(OBJECTS))[:2]]
    out.append(
      {
        "clip": experts.VideoClip(frames, fps=30.0, video_id=f"{tag}-{v}", frame_ids=ids),
        "objects": objs,
        "action": ACTIONS[i % len(ACTIONS)],
        "choices": list(CHOICES[i % len(CHOICES)]),
        "summary": i % 2 == 0,
        "question": f"What did the person do with the {objs[0]}?",
      }
    )
  return out


def program(tools: dict, q: dict) -> tuple:
  clip = q["clip"]
  window = tools["Filter_frames_with_act"](clip, q["action"])
  kept = tools["Filter_frames_with_obj"](clip, q["objects"][0])
  seen = tools["exist"](clip, q["objects"][1])
  acts = tools["Query_Actions"](window if len(window) else clip, q["objects"][0], q["choices"])
  info = {
    "window": [window.start_frame, window.end_frame],
    "frames": kept.num_frames,
    "seen": seen,
    "actions": acts,
  }
  if q["summary"]:
    info["summary"] = tools["Video_summary"](clip)
  answer = tools["select_answer"](q["question"], q["choices"], info)
  return answer, json.dumps(info, sort_keys=True, default=str)


def warm_coalescer(c) -> int:
  """What `Coalescer.warm()` compiles, less what no batch of this benchmark runs; returns the
  calls made. `fn` at every bucket size on each row shape seen; in "device" mode the
  per-request gathers only for the request's own bucket (a row shape's requests all bring the
  same number of rows here: a 32-frame clip to OWLv2, one prefix to LLaVA), and none where the
  request fills the chunk alone (the coalescer then hands the output back whole), their
  indices made on the host (an eager `jnp.zeros` compiles a program per length). A gather the
  warm-up runs find missing is compiled there, and one left for a timed round is counted in
  `xla_compilations_timed`."""
  import jax

  from experts.batching import bucket_size, num_rows, pad_rows
  from experts.coalesce import _take_jit  # the coalescer's own jitted gather: its compilations

  calls = 0
  for rows, args in c.samples():
    n, buckets = num_rows(rows), c.fn.buckets
    # one row (a device array of one row as it is: slicing it would copy it)
    row = jax.tree.map(lambda a: a if a.shape[0] == 1 else a[:1], rows)
    own = bucket_size(n, buckets)
    for size in buckets:
      out = c.fn.run_chunk(pad_rows(row, size), *args)
      if c.output == "host":
        jax.tree.map(np.asarray, out)
      elif own <= size and n != size:
        jax.block_until_ready(_take_jit(out, jax.numpy.asarray(np.zeros(own, np.int32))))
      else:
        jax.block_until_ready(out)
      calls += 1
  return calls


def warm_coalescers(coalescers: dict, seen: dict | None = None) -> dict:
  """`warm_coalescer` of each coalescer in its own thread (their compilations overlap), or
  with `seen` ({name: row shapes warmed}) only of those that have seen new row shapes since;
  returns {name: row shapes warmed now}."""
  seen = seen or {}
  todo = {k: c for k, c in coalescers.items() if len(c.samples()) > seen.get(k, 0)}
  counts = {k: len(c.samples()) for k, c in coalescers.items()}
  if todo:
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
      list(pool.map(warm_coalescer, todo.values()))
  return counts


def batch_cost(ex: Experts, copies: int = 16, repeats: int = 5) -> dict:
  """Per coalesced part: seconds of one call on its first request alone and on `copies`
  copies of it (best of `repeats`), and the gain `copies` x one / together."""
  import jax

  out = {}
  for name, c in ex.coalescers().items():
    for i, (rows, args) in enumerate(c.samples()):
      many = jax.tree.map(lambda a: np.concatenate([a] * copies), rows)
      times = []
      for batch in (rows, many):
        c.fn(batch, *args, to_host=True)  # compiled (warm), but run once untimed
        best = float("inf")
        for _ in range(repeats):
          t0 = time.perf_counter()
          c.fn(batch, *args, to_host=True)
          best = min(best, time.perf_counter() - t0)
        times.append(best)
      out[name + (f"#{i}" if i else "")] = {
        "rows_per_request": int(jax.tree.leaves(rows)[0].shape[0]),
        "one_request_ms": round(times[0] * 1e3, 2),
        f"{copies}_requests_ms": round(times[1] * 1e3, 2),
        "gain": round(copies * times[0] / times[1], 2),
      }
  return out


def run(ex: Experts, questions: list[dict], threads: int, threshold: float) -> dict:
  import experts
  from experts.backends import oracle

  ex.detector.clear_features()
  ex.grounder.clear_features()
  ex.llava.clear_features()
  caches = {
    "owlv2/image": ex.detector.feature_cache,
    "univtg/frames": ex.grounder.feature_cache,
    "llava/video": ex.llava.feature_cache,
    "llava/prefix": ex.llava.prefix_cache,
  }
  caches = {k: c for k, c in caches.items() if c is not None}
  cache0 = {k: dataclasses.replace(c.stats) for k, c in caches.items()}
  seconds, lock = {}, threading.Lock()
  box = experts.Toolbox(
    detector=Timed(ex.detector, "owlv2", seconds, lock),
    grounder=Timed(ex.grounder, "univtg+clip", seconds, lock),
    action_recognizer=Timed(ex.llava, "llava", seconds, lock),
    video_qa=Timed(ex.llava, "llava", seconds, lock),
    selector=oracle.KeywordSelector(),
    detect_threshold=threshold,
    find="frames",
    exist="detector",
  )
  tools = box.tools()
  before = {
    k: (c.stats.busy_s, c.stats.batches, c.stats.requests) for k, c in ex.coalescers().items()
  }
  sched = ex.scheduler.stats
  sched0 = dataclasses.replace(sched)
  ex.scheduler.history.clear()

  programs_s = [0.0]

  def one(q):
    c0 = time.thread_time()
    try:
      with ex.scheduler.program():  # the scheduler knows the programs in flight
        return program(tools, q)
    finally:
      spent = time.thread_time() - c0
      with lock:
        programs_s[0] += spent

  threads0 = thread_cpu_s()
  t0, cpu0 = time.perf_counter(), time.process_time()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    answers = list(pool.map(one, questions))
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  by_thread = cpu_by_thread(threads0, thread_cpu_s(), programs_s[0], len(questions))
  workers = {}
  for k, c in ex.coalescers().items():
    busy, batches, requests = (
      a - b
      for a, b in zip(
        (c.stats.busy_s, c.stats.batches, c.stats.requests), before.get(k, (0.0, 0, 0))
      )
    )
    if batches:
      workers[k] = {
        "busy_s": round(busy, 3),
        "batches": batches,
        "requests_per_batch": round(requests / batches, 2),
      }
  rules = {
    k: getattr(sched, k) - getattr(sched0, k) for k in ("quiescent", "full", "window", "closing")
  }
  feature_caches = {
    k: {
      "hits": c.stats.hits - cache0[k].hits,
      "shared": c.stats.shared - cache0[k].shared,
      "misses": c.stats.misses - cache0[k].misses,
      "bytes": c.stats.bytes,
    }
    for k, c in caches.items()
  }
  return {
    "wall_s": wall,
    "cpu_s": cpu,
    "cpu_ms_per_question_by_thread": by_thread,
    "feature_caches": feature_caches,
    "answers": answers,
    "expert_call_s": seconds,
    "workers": workers,
    "scheduler_batches_by_rule": {k: v for k, v in rules.items() if v},
    # the batches in the order they ran: "expert part:requests:rule"
    "scheduler_history": [f"{n}:{k}:{r}" for n, k, r in ex.scheduler.history],
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  ap.add_argument(
    "--smoke",
    action="store_true",
    help="the preset's code path with tiny widths and depths (runs on a CPU)",
  )
  ap.add_argument("--threads", type=int, default=0, help="programs in flight (0: the preset's)")
  ap.add_argument("--rounds", type=int, default=0, help="timed rounds per mode (best kept)")
  ap.add_argument("--questions", type=int, default=0, help="questions per round (0: preset's)")
  ap.add_argument("--wait_ms", type=float, default=2.0, help="the coalescers' wait window")
  ap.add_argument(
    "--modes",
    default="on,off,serial",
    help="comma-separated, of on, per_expert, off, serial (on, off and serial are needed), "
    "each also as <mode>-noprefix: LLaVA's KV prefix cache off",
  )
  ap.add_argument(
    "--batch_cost", action="store_true", help="also time each expert part at 1 vs 16 requests"
  )
  ap.add_argument(
    "--questions_per_video",
    type=int,
    default=1,
    help="consecutive questions on the same video and frames (1: every question its own "
    "video; STAR has ~7 per video: 158.6K questions over ~22K videos)",
  )
  ap.add_argument(
    "--feature_cache_mb",
    type=float,
    default=64.0,
    help="UniVTG's per-frame feature cache (0: none; OWLv2's device cache is always on)",
  )
  ap.add_argument(
    "--llava_feature_cache_mb",
    type=float,
    default=1024.0,
    help="LLaVA's per-clip video-feature cache (0: none)",
  )
  ap.add_argument(
    "--llava_prefix_cache_mb",
    type=float,
    default=None,
    help="LLaVA's per-clip KV prefix cache on the device (0: none; default: the preset's, "
    "16384 for gpu as the CoT configs, else 0)",
  )
  ap.add_argument(
    "--new_tokens",
    type=int,
    default=0,
    help="tokens each LLaVA reply generates (0: the preset's; the CoT configs cap replies at "
    "100, the official AoTD's max_new_tokens, and a random model runs every reply to the cap)",
  )
  ap.add_argument(
    "--llava_frames", type=int, default=0, help="LLaVA's frames per clip (0: the preset's)"
  )
  ap.add_argument(
    "--llava_size",
    default="",
    help="LLaVA size keys over the preset's, e.g. layers=4,hidden=256,intermediate=512 "
    "(experts/random_weights.py's LLAVA_NEXT_VIDEO_7B keys)",
  )
  ap.add_argument(
    "--llava_buckets",
    default="",
    help="LLaVA's request batch sizes, e.g. 1,4,16 (default: the preset's; the CoT configs "
    "use the backend's 1,2,4,8,16)",
  )
  ap.add_argument(
    "--scheduler_workers",
    type=int,
    default=0,
    help="batches the `on` mode's device scheduler runs at once (0: as the CoT configs, "
    "experts.registry.scheduler_workers: 2 on a CPU, 1 on an accelerator)",
  )
  ap.add_argument(
    "--scheduler_order",
    default="cheapest",
    choices=("cheapest", "fullest"),
    help="which released queue the `on` mode's scheduler runs (experts/scheduler.py)",
  )
  ap.add_argument(
    "--scheduler_window_cost",
    type=float,
    default=0.5,
    help="a queue's window is at least this times its recent batch seconds (0: --wait_ms)",
  )
  ap.add_argument("--out", default="", help="also write the JSON result here")
  ap.add_argument(
    "--time_budget_s",
    type=float,
    default=None,
    help="soft limit on the run's wall time from the start of main (0: none; default: the "
    "preset's, 500 for gpu, else none): a warm-up run or timed round is started only if it "
    "is predicted to end within it (a timed round from its mode's warm-up run); skipped ones "
    "are listed in the output's `skipped`",
  )
  ap.add_argument(
    "--deadline_s",
    type=float,
    default=None,
    help="hard limit (0: none; default: the preset's, 570 for gpu, else none): at this many "
    "seconds the output so far (phase seconds, compilations, finished modes, `aborted`) is "
    f"printed and written to --out and the process exits with status {DEADLINE_EXIT}, "
    "whatever it is doing (a lent device's command has 600 s)",
  )
  ap.add_argument(
    "--compilation_cache_dir",
    default="",
    help="JAX's persistent compilation cache here (every program, also those under 1 s; "
    "with XLA's per-fusion autotuning cache on a GPU): a rerun on the same machine loads "
    "its programs instead of compiling them. Off by default: the first run's figures are "
    "cold compilations",
  )
  args = ap.parse_args(argv)
  limits = [
    PRESETS[args.preset].get(k, 0.0) if getattr(args, k) is None else getattr(args, k)
    for k in ("time_budget_s", "deadline_s")
  ]
  if min(limits) < 0:
    raise SystemExit("--time_budget_s and --deadline_s must be >= 0 (0: none)")
  return run_benchmark(args, RunClock(*limits))


def run_benchmark(args, clock: RunClock) -> dict:
  """`main` after the flags: builds, warms and times the modes under `clock`."""
  p = dict(PRESETS[args.preset])
  if args.smoke:
    p = smoke_sizes(p)
  for key in ("threads", "rounds", "questions", "new_tokens"):
    if getattr(args, key):
      p[key] = getattr(args, key)
  if min(p["questions"], p["threads"], p["rounds"], p["new_tokens"]) < 1:
    raise SystemExit("--questions, --threads, --rounds and --new_tokens must be >= 1")
  if (
    args.questions_per_video < 1
    or min(
      args.feature_cache_mb,
      args.llava_feature_cache_mb,
      args.scheduler_workers,
      args.scheduler_window_cost,
    )
    < 0
  ):
    raise SystemExit(
      "--questions_per_video must be >= 1, --feature_cache_mb, --llava_feature_cache_mb, "
      "--scheduler_workers and --scheduler_window_cost >= 0"
    )
  p["per_video"] = args.questions_per_video
  if args.llava_frames:
    p["llava_frames"] = args.llava_frames
  for item in filter(None, args.llava_size.split(",")):
    k, _, v = item.partition("=")
    if k not in p["llava"] or not v:
      raise SystemExit(f"--llava_size: {item!r} is not KEY=VALUE of {sorted(p['llava'])}")
    p["llava"] = dict(p["llava"], **{k: v if k == "dtype" else int(v)})
  if args.llava_buckets:
    try:
      p["llava_buckets"] = tuple(sorted({int(b) for b in args.llava_buckets.split(",")}))
    except ValueError:
      raise SystemExit(f"--llava_buckets={args.llava_buckets!r}: not integers like 1,4,16")
    if p["llava_buckets"][0] < 1:
      raise SystemExit(f"--llava_buckets={args.llava_buckets!r}: sizes must be >= 1")
  prefix_mb = args.llava_prefix_cache_mb
  prefix_mb = p.get("llava_prefix_cache_mb", 0.0) if prefix_mb is None else prefix_mb
  if prefix_mb < 0:
    raise SystemExit("--llava_prefix_cache_mb must be >= 0")
  names = [m for m in args.modes.split(",") if m]
  if not {"on", "off", "serial"} <= set(names) or not set(names) <= set(MODES):
    raise SystemExit(f"--modes={args.modes!r}: need on, off and serial, of {MODES}")
  modes = {m: 1 if m.startswith("serial") else p["threads"] for m in MODES if m in names}
  import jax

  if args.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(args.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  from experts.registry import scheduler_workers

  device = jax.devices()[0]
  workers = scheduler_workers(args.scheduler_workers)
  # what the output says of the run, filled as it goes: the deadline reports it as it stands
  result = {
    "preset": args.preset + (" (smoke)" if args.smoke else ""),
    "platform": device.platform,
    "device_kind": device.device_kind,
    "threads": p["threads"],
    "questions": p["questions"],
    "questions_per_video": p["per_video"],
    "univtg_feature_cache_mb": args.feature_cache_mb,
    "llava_feature_cache_mb": args.llava_feature_cache_mb,
    "llava_prefix_cache_mb": prefix_mb,
    "scheduler_workers": workers,
    "scheduler_order": args.scheduler_order,
    "scheduler_window_cost": args.scheduler_window_cost,
    "rounds": p["rounds"],
    "modes": list(modes),
    "frames_per_question": p["frames"],
    "frame_hw": list(p["frame_hw"]),
    "llava_frames": p["llava_frames"],
    "llava_buckets": list(p["llava_buckets"]),
    "new_tokens": p["new_tokens"],
    "llava_lm": {
      k: v for k, v in p["llava"].items() if not k.startswith(("vision", "image", "patch"))
    },
    "wait_ms": args.wait_ms,
    "compilation_cache_dir": args.compilation_cache_dir or None,
    "questions_per_s": {},
  }
  clock.start_deadline(lambda: dict(result, load_average=list(os.getloadavg())), args.out)
  try:
    with clock.counting_compilations():
      out = measure(args, p, modes, workers, clock, result)
  finally:  # an error ends the run here: no report from the timer later (or in a test's process)
    clock.cancel_deadline()
  out.update(clock.report())
  out["total_s"] = round(clock.elapsed(), 1)
  out["load_average"] = [round(x, 1) for x in os.getloadavg()]
  text = json.dumps(out, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return out


def measure(args, p: dict, modes: dict, workers: int, clock: RunClock, result: dict) -> dict:
  """The phases of a run (build, probe, warm-up, timed rounds, batch cost) under `clock`;
  `result` gets each figure as it is known."""
  with clock.phase("build"):
    ex = Experts(
      p,
      args.wait_ms / 1000,
      args.feature_cache_mb,
      workers,
      args.llava_feature_cache_mb,
      result["llava_prefix_cache_mb"],
      args.scheduler_order,
      args.scheduler_window_cost,
    )
  result["llava_decode_weight_mb"] = round(decode_weight_mb(ex.llava.model), 2)
  result["build_s"] = round(ex.build_s, 1)
  with clock.phase("probe"):
    # the detection threshold: the 99th percentile of the random model's scores (some boxes)
    probe = make_questions(dict(p, questions=1), "probe", 99)[0]["clip"]
    logits = ex.detector.raw_outputs(probe, [OBJECTS[0]])[0]
    threshold = float(np.quantile(1 / (1 + np.exp(-logits.astype(np.float64))), 0.99))
  warm = make_questions(dict(p, per_video=1), "warm", 1)  # compiles every mode's shapes
  warm_wall = {}  # mode -> (seconds, questions) of its warm-up run
  t0 = time.perf_counter()
  if clock.fits("warmup"):
    # two questions (both spans, a summary) with coalescing on, one at a time, show every
    # coalescer its row shapes (each request a batch of its own: the programs of its own
    # bucket compile here, whatever the timing); then all coalescers compile every other
    # bucket at once, from parallel threads (XLA compiles outside the GIL: at real sizes the
    # programs compile side by side, not one after the other through the scheduler); the
    # warm-up runs then find them compiled
    with clock.phase("warmup/first_pass"), ex.mode("on"):
      run(ex, warm[:2], 1, threshold)
    with clock.phase("warmup/coalescers"):
      seen = warm_coalescers(ex.coalescers())
    for mode, threads in modes.items():
      # off/serial run each call alone: two questions cover their shapes
      qs = warm if mode.split("-")[0] in ("on", "per_expert") else warm[:2]
      if not clock.fits(f"warmup/{mode}"):
        continue
      with clock.phase(f"warmup/{mode}"), ex.mode(mode):
        warm_wall[mode] = (run(ex, qs, threads, threshold)["wall_s"], len(qs))
    # every batch size a timed round may form, for row shapes first seen after the first pass
    with clock.phase("warmup/coalescers_late"):
      warm_coalescers(ex.coalescers(), seen)
  result["warmup_compile_s"] = round(time.perf_counter() - t0, 1)
  n, secs = clock.compiled("warmup")
  result["xla_compilations_warmup"] = n
  result["xla_compile_s_warmup_summed"] = round(secs, 1)

  best = {}
  answers = {}
  for r in range(p["rounds"]):
    qs = make_questions(p, f"r{r}", 10 + r)
    for mode, threads in modes.items():
      # from its warm-up run; a mode whose warm-up did not run (None) would compile while
      # timed: not started either
      predicted = (
        warm_wall[mode][0] * p["questions"] / warm_wall[mode][1] if mode in warm_wall else None
      )
      if not clock.fits(f"timed/{mode}/r{r}", predicted):
        continue
      with clock.phase(f"timed/{mode}"), ex.mode(mode):
        out = run(ex, qs, threads, threshold)
      answers.setdefault(mode, out["answers"])
      if mode not in best or out["wall_s"] < best[mode]["wall_s"]:
        best[mode] = out
        result["questions_per_s"][mode] = round(p["questions"] / out["wall_s"], 3)
  cost = None
  if args.batch_cost and clock.fits("batch_cost"):
    with clock.phase("batch_cost"):
      cost = batch_cost(ex)
  ex.close()
  return dict(result, **summary(p, best, answers, clock), **({"batch_cost": cost} if cost else {}))


def summary(p: dict, best: dict, answers: dict, clock: RunClock) -> dict:
  """The figures of the timed modes that ran (a mode skipped by the budget has none; a ratio
  needing it is null)."""
  qps = {m: p["questions"] / b["wall_s"] for m, b in best.items()}

  def ratio(a: str, b: str):
    return round(qps[a] / qps[b], 2) if a in qps and b in qps else None

  out = {
    "questions_per_s": {m: round(v, 3) for m, v in qps.items()},
    "seconds_per_question": {m: round(1 / v, 4) for m, v in qps.items()},
    "process_cpu_s_per_question": {
      m: round(b["cpu_s"] / p["questions"], 4) for m, b in best.items()
    },
    "cpu_ms_per_question_by_thread": {
      m: b["cpu_ms_per_question_by_thread"] for m, b in best.items()
    },
    "ratio_on_vs_off": ratio("on", "off"),
    "ratio_on_vs_serial": ratio("on", "serial"),
    "ratio_prefix_cache_on_vs_off": {
      m: ratio(m, f"{m}-noprefix") for m in qps if f"{m}-noprefix" in qps
    },
    "expert_call_s": {
      m: {k: round(v, 3) for k, v in b["expert_call_s"].items()} for m, b in best.items()
    },
    "feature_caches": {m: b["feature_caches"] for m, b in best.items()},
  }
  on = best.get("on")
  if on is not None:
    busy = sum(w["busy_s"] for w in on["workers"].values())
    out.update(
      coalescers_on=on["workers"],
      scheduler_batches_by_rule_on=on["scheduler_batches_by_rule"],
      scheduler_history_on=on["scheduler_history"],
      expert_workers_busy_fraction_on=round(busy / on["wall_s"], 3),
    )
  if "per_expert" in best:
    out.update(
      ratio_on_vs_per_expert=ratio("on", "per_expert"),
      coalescers_per_expert=best["per_expert"]["workers"],
    )
  ref = answers.get("off")
  out.update(
    same_answers=None if ref is None else all(a == ref for a in answers.values()),
    # questions of the first round whose answer or trace differs from the off mode's: in bf16
    # (the gpu preset) a batch's rounding can flip a greedy token of a long reply (~50 tokens
    # into a random model's summary), as it can in any batched bf16 inference
    answers_differing_from_off=None
    if ref is None
    else {m: sum(x != y for x, y in zip(a, ref)) for m, a in answers.items()},
    xla_compilations_timed=clock.compiled("timed")[0],
  )
  return out


if __name__ == "__main__":
  main()
