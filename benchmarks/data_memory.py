"""Memory of the trainer's data at AGQA scale (CPU): peak RSS of the trainer process and of
each Grain worker, and the time to the first batch, with the annotations parsed into memory
(`config.data.cache_dir=off`) and through the record cache (`aotd_jax.data.record_cache`),
the cache first written (a host's first run) and then found (every later run or host).

    python benchmarks/data_memory.py --questions 1000000 [--workers 2] [--dir /tmp/agqa_mem]
        [--modes memory,cache_cold,cache_warm] [--tree DIR]

Writes a synthetic AGQA 2.0 file (`--questions` records shaped as
tests/fixtures/annotations/agqa_balanced.json, each with its program and a scene-graph
grounding, over 7 tiny real videos) into `--dir` once, then runs each mode in a fresh process
through `train.data.make_pipeline_data` (the trainer's path: read, subsample, mix, shard,
spawned workers), takes 3 batches and reports, as one JSON line per mode: the trainer's peak
RSS (`ru_maxrss`) and its RSS after the batches, each worker's peak (`VmHWM`) and its
anonymous / file-backed RSS (file pages of the mapped cache are shared between processes), the
peak of the largest child that has ended (the parse's child on a first run),
the pickle of the mixed dataset, and the seconds to the first batch. `--tree` runs the modes
on another checkout (e.g. `git archive cd66231`, the tree before the cache: mode `memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))
VIDEOS = 7


def write_videos(d: str) -> None:
  """`VIDEOS` tiny real videos `d/videos/V<i>.mp4` (12 frames of 16x16 noise)."""
  import numpy as np

  from aotd_jax.data import video as V

  os.makedirs(os.path.join(d, "videos"), exist_ok=True)
  rng = np.random.default_rng(0)
  for v in range(VIDEOS):
    frames = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    V.write_video(os.path.join(d, "videos", f"V{v}.mp4"), frames, 10)


def generate(d: str, n: int) -> str:
  """The synthetic AGQA file (written once; reused when it has `n` questions)."""
  path = os.path.join(d, f"agqa_{n}.json")
  if os.path.exists(path):
    return path
  write_videos(d)
  objects = ("blanket", "broom", "cup", "door", "sofa", "phone", "book", "towel")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("{")
    for i in range(n):
      a, b = objects[i % 8], objects[(i * 3 + 1) % 8]
      rec = {
        "question": f"Did they contact a {a} before or after holding a {b} ({i})?",
        "answer": ("before", "after", "yes", "no", a)[i % 5],
        "video_id": f"V{i % VIDEOS}",
        "global": ["obj-act"],
        "local": f"v{i % 97:03d}-o{i % 31:03d}",
        "ans_type": "binary" if i % 2 else "open",
        "steps": 2 + i % 4,
        "semantic": "object",
        "structural": "compare",
        "program": f"Compare(Iterate(Filter({a}), Query({b})))",
        "sg_grounding": {a: [i % 40, i % 40 + 12]},
      }
      f.write(("," if i else "") + json.dumps(f"q{i:08d}") + ":" + json.dumps(rec))
    f.write("}")
  os.replace(tmp, path)
  return path


def rss_kb(pid: int) -> dict:
  """VmHWM, VmRSS, RssAnon, RssFile of a process, in KiB."""
  out = {}
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
        out[key] = int(value.split()[0])
  return out


def child_pids() -> list[int]:
  me = str(os.getpid())
  pids = []
  for p in os.listdir("/proc"):
    if p.isdigit():
      try:
        with open(f"/proc/{p}/stat") as f:
          if f.read().rsplit(")", 1)[1].split()[1] == me:
            pids.append(int(p))
      except OSError:
        pass
  return pids


def run_mode(path: str, d: str, mode: str, workers: int) -> dict:
  """One mode in this (fresh) process: the trainer's data path, 3 batches, the figures."""
  import ml_collections

  from aotd_jax.train import data as train_data
  from fixtures.tiny_tokenizer import make_tokenizer

  tok = make_tokenizer(
    ["Did they contact a before or after holding ( ) ? Question Options"]
    + ["blanket broom cup door sofa phone book towel yes no"]
    + [str(i) for i in range(1000)]
  )
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=8), video_tokens=lambda frames: 2 * frames
    )
  )
  cfg = ml_collections.ConfigDict(
    dict(
      batch_size=4,
      seed=0,
      data=dict(
        kind="pipeline",
        tokenizer="unused",
        seq_len=128,
        num_frames=2,
        decode_size=16,
        fit_check=False,
        prompt_format="official",
        answer_style="letter",
        window="whole",
        mixing="concat_epoch",
        num_workers=workers,
        datasets=dict(
          agqa=dict(
            format="agqa",
            annotations=path,
            video_root=os.path.join(d, "videos"),
            cots="",
            max_examples=0,
          )
        ),
      ),
    )
  )
  cache_dir = "" if mode == "memory" else os.path.join(d, "cache")
  if mode == "cache_cold" and os.path.isdir(cache_dir):
    for name in os.listdir(cache_dir):
      os.remove(os.path.join(cache_dir, name))
  from aotd_jax.data import pipeline

  handed, make = {}, pipeline.make_pipeline

  def make_pipeline(tokenizer, sources, pc, **kw):
    handed["sources"] = sources
    return make(tokenizer, sources, pc, **kw)

  pipeline.make_pipeline = make_pipeline
  t0 = time.perf_counter()
  # the tree before the cache (--tree) has no cache_dir: its one path parses into memory
  kw = {"cache_dir": cache_dir} if mode != "memory" else {}
  it = train_data.make_pipeline_data(cfg, student, tokenizer=tok, **kw)
  built = time.perf_counter() - t0
  next(it)
  first = time.perf_counter() - t0
  next(it), next(it)
  workers_rss = [rss_kb(p) for p in child_pids()]
  # what each worker unpickles: the mixed sources (plus the tokenizer and options)
  pickled = len(pickle.dumps(handed["sources"]))
  me = rss_kb(os.getpid())
  it.close()
  return {
    "mode": mode,
    "questions": int(os.path.basename(path).split("_")[1].split(".")[0]),
    "workers": workers,
    "trainer_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    # the largest child that has ended: the parse's (`parse_in_subprocess`) on a first run
    "ended_child_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "trainer_rss_mb": me["VmRSS"] / 1024,
    "worker_peak_mb": [w["VmHWM"] / 1024 for w in workers_rss],
    "worker_anon_mb": [w["RssAnon"] / 1024 for w in workers_rss],
    "worker_file_mb": [w["RssFile"] / 1024 for w in workers_rss],
    "pickled_dataset_mb": pickled / 2**20,
    "build_s": built,
    "first_batch_s": first,
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--questions", type=int, default=1_000_000)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--dir", default="/tmp/agqa_mem")
  p.add_argument("--modes", default="memory,cache_cold,cache_warm")
  p.add_argument("--tree", default="", help="the checkout whose aotd_jax the modes run")
  p.add_argument("--mode", default="", help=argparse.SUPPRESS)  # one mode, in a child
  args = p.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  path = generate(args.dir, args.questions)
  if args.mode:
    print(json.dumps(run_mode(path, args.dir, args.mode, args.workers)), flush=True)
    return
  print(f"# {path}: {os.path.getsize(path) / 2**20:.0f} MiB; load {os.getloadavg()}", flush=True)
  for mode in filter(None, args.modes.split(",")):
    out = subprocess.run(
      [
        sys.executable,
        __file__,
        f"--questions={args.questions}",
        f"--workers={args.workers}",
        f"--dir={args.dir}",
        f"--mode={mode}",
      ],
      check=True,
      capture_output=True,
      text=True,
    )
    print(out.stdout.strip().splitlines()[-1], f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
  main()
