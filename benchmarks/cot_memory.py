"""Memory of the trainer's CoT data at STAR scale (CPU): a CoT JSONL file of `--cots` records
(shaped as the CoT job's kept records: conversation, rationale, a trace) read into memory
(`cache_dir` off) or through the CoT cache (`aotd_jax.data.cot_cache`: first run, then found),
and the same records as ArrayRecord (the CoT job's own shards, read lazily) for reference.

    python benchmarks/cot_memory.py --cots 32000 [--workers 2] [--dir /tmp/cot_mem]
        [--modes memory,cache_cold,cache_warm,array_record]

Each mode runs in a fresh process through `train.data.make_pipeline_data` (one CoT source,
spawned workers), takes 3 batches and prints one JSON line: the trainer's peak RSS and its RSS
and anonymous RSS after the batches, each worker's anonymous RSS and peak, the pickle of the
sources (what each worker unpickles) and the seconds to the first batch
(`benchmarks/data_memory.py` measures the annotations the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))
sys.path.insert(2, os.path.join(ROOT, "benchmarks"))
from data_memory import VIDEOS  # noqa: E402


def generate(d: str, n: int) -> str:
  """The synthetic CoT JSONL file and its ArrayRecord twin (written once)."""
  path = os.path.join(d, f"cots_{n}.jsonl")
  if os.path.exists(path):
    return path
  import data_memory as DM
  from aotd_jax.data import pipeline

  DM.write_videos(d)
  choices = ["Put down the cup.", "Took the book.", "Opened the door.", "Sat on the sofa."]
  records = []
  for i in range(n):
    q = f"What did the person do with the cup after holding the book ({i})?"
    rationale = (
      f"We first find the frames where the person holds the book ({i}): frames 3-9. "
      "Then we look at what happens after it: the person picks up the cup and puts it down "
      "on the table in frames 10-15. The cup is on the table at the end of the clip. "
      * 3
      + "So the answer is Put down the cup."
    )
    call = {"name": "Find", "args": {"object": "cup" * 60}, "result": "box " * 150}
    records.append(
      {
        "qid": f"q{i:08d}",
        "video_id": f"V{i % VIDEOS}",
        "video_path": f"/cot_machine/videos/V{i % VIDEOS}.mp4",
        "video": f"V{i % VIDEOS}.mp4",
        "question": q,
        "choices": choices,
        "answer": choices[0],
        "kept": True,
        "conversation": [
          {"from": "human", "value": "<video>\n" + q + "\n" + "\n".join(choices)},
          {"from": "gpt", "value": rationale},
        ],
        "rationale": rationale,
        "trace": {"calls": [call] * 3},
      }
    )
  pipeline.write_cot_array_record(path.replace(".jsonl", ".array_record"), records)
  with open(path + ".tmp", "w") as f:
    for rec in records:
      f.write(json.dumps(rec) + "\n")
  os.replace(path + ".tmp", path)
  return path


def run_mode(path: str, d: str, mode: str, workers: int) -> dict:
  """One mode in this (fresh) process: the trainer's data path, 3 batches, the figures."""
  import ml_collections

  import data_memory as DM
  from aotd_jax.data import pipeline
  from aotd_jax.train import data as train_data
  from fixtures.tiny_tokenizer import make_tokenizer

  tok = make_tokenizer(
    ["What did the person do with cup after holding book ( ) ? We first find frames where"]
    + [str(i) for i in range(1000)]
  )
  student = types.SimpleNamespace(
    config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=8), video_tokens=lambda frames: 2 * frames
    )
  )
  source = path.replace(".jsonl", ".array_record") if mode == "array_record" else path
  cfg = ml_collections.ConfigDict(
    dict(
      batch_size=4,
      seed=0,
      data=dict(
        kind="pipeline",
        tokenizer="unused",
        seq_len=512,
        num_frames=2,
        decode_size=16,
        fit_check=False,
        prompt_format="official",
        mixing="concat_epoch",
        num_workers=workers,
        cot=[dict(path=source, video_root=os.path.join(d, "videos"))],
      ),
    )
  )
  cache_dir = "" if mode == "memory" else os.path.join(d, "cache")
  if mode == "cache_cold":
    shutil.rmtree(cache_dir, ignore_errors=True)
  handed, make = {}, pipeline.make_pipeline

  def make_pipeline(tokenizer, sources, pc, **kw):
    handed["sources"] = sources
    return make(tokenizer, sources, pc, **kw)

  pipeline.make_pipeline = make_pipeline
  t0 = time.perf_counter()
  it = train_data.make_pipeline_data(cfg, student, tokenizer=tok, cache_dir=cache_dir)
  next(it)
  first = time.perf_counter() - t0
  next(it), next(it)
  workers_rss = [DM.rss_kb(p) for p in DM.child_pids()]
  workers_rss = [w for w in workers_rss if w.get("RssAnon", 0) > 50 * 1024]  # not helpers
  me = DM.rss_kb(os.getpid())
  pickled = len(pickle.dumps(handed["sources"]))
  it.close()
  return {
    "mode": mode,
    "cots": int(os.path.basename(path).split("_")[1].split(".")[0]),
    "workers": workers,
    "trainer_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "trainer_rss_mb": round(me["VmRSS"] / 1024),
    "trainer_anon_mb": round(me["RssAnon"] / 1024),
    "worker_anon_mb": [round(w["RssAnon"] / 1024) for w in workers_rss],
    "worker_peak_mb": [round(w["VmHWM"] / 1024) for w in workers_rss],
    "pickled_sources_kb": round(pickled / 1024, 1),
    "first_batch_s": round(first, 1),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--cots", type=int, default=32000)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--dir", default="/tmp/cot_mem")
  p.add_argument("--modes", default="memory,cache_cold,cache_warm,array_record")
  p.add_argument("--mode", default="", help=argparse.SUPPRESS)  # one mode, in a child
  args = p.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  if args.mode:
    path = generate(args.dir, args.cots)
    if args.mode != "generate":
      print(json.dumps(run_mode(path, args.dir, args.mode, args.workers)), flush=True)
    return
  # generated in a child: a process's peak RSS is inherited by the children it starts
  base = [sys.executable, __file__, f"--cots={args.cots}", f"--workers={args.workers}"]
  subprocess.run(base + [f"--dir={args.dir}", "--mode=generate"], check=True)
  path = os.path.join(args.dir, f"cots_{args.cots}.jsonl")
  size = os.path.getsize(path) / 2**20
  print(f"# {path}: {size:.0f} MiB; load {os.getloadavg()}", flush=True)
  for mode in filter(None, args.modes.split(",")):
    out = subprocess.run(
      base + [f"--dir={args.dir}", f"--mode={mode}"],
      check=True,
      capture_output=True,
      text=True,
    )
    print(out.stdout.strip().splitlines()[-1], f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
  main()
