"""Data benchmark (CPU): seek-based vs decode-everything frame sampling on a 60 s clip, and
clips/s of the Grain pipeline with 2 decoding workers vs 1 (and in-process).

    python benchmarks/data_cpu.py [--quick]

Prints each figure and its ratio to the reference measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from aotd_jax.data import pipeline as DP
from aotd_jax.data import video as V
from aotd_jax.data.annotations import VideoQA


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
  """Moving gradient + noise: compresses like video, not like a flat colour."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  out = np.empty((n, h, w, 3), np.uint8)
  for t in range(n):
    out[t, ..., 0] = (x + 3 * t) % 256
    out[t, ..., 1] = (y + 2 * t) % 256
    out[t, ..., 2] = rng.integers(0, 64, (h, w))
  return out


def _best(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def bench_seek(d: str, quick: bool) -> dict:
  fps, seconds, (h, w) = 25, 60, (240, 320)
  path = os.path.join(d, "long.mp4")
  V.write_video(path, _frames(fps * seconds, h, w, 0), fps, gop=50)
  out = {}
  for name, window in [("whole clip", (None, None)), ("10 s window at 40 s", (40.0, 50.0))]:
    seek = _best(lambda: V.read_frames(path, 8, start=window[0], end=window[1], seek=True), 3)
    full = _best(
      lambda: V.decode_frames(path, V.sample_indices(fps * seconds, fps, 8, *window), seek=False),
      1 if quick else 2,
    )
    all_frames = _best(
      lambda: V.decode_all(path)[V.sample_indices(fps * seconds, fps, 8, *window)], 1
    )
    out[name] = {
      "seek_s": seek,
      "decode_forward_s": full,
      "decode_all_s": all_frames,
      "speedup_vs_decode_all": all_frames / seek,
    }
    print(
      f"8 frames, {name}: seek {seek * 1e3:.1f} ms | decode forward {full * 1e3:.1f} ms | "
      f"decode all {all_frames * 1e3:.1f} ms -> seek is {all_frames / seek:.1f}x decode-all"
    )
  return out


def bench_pipeline(d: str, quick: bool) -> dict:
  n_clips, fps, seconds = 16, 25, 10
  records = []
  for i in range(n_clips):
    V.write_video(os.path.join(d, f"c{i}.mp4"), _frames(fps * seconds, 240, 320, i), fps, gop=50)
    records.append(
      VideoQA(
        qid=f"q{i}",
        video_id=f"c{i}",
        question="what moves",
        choices=["a", "b"],
        answer="a",
        answer_index=0,
        start=1.0,
        end=9.0,
      )
    )
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
  from fixtures.tiny_tokenizer import make_tokenizer  # pylint: disable=g-import-not-at-top

  tok = make_tokenizer(["what moves a b"])
  batches = 4 if quick else 8
  out = {}
  for workers in (0, 1, 2):
    cfg = DP.PipelineConfig(
      batch_size=4,
      num_frames=8,
      image_size=224,
      decode_size=None,
      buckets=(64,),
      num_workers=workers,
      worker_buffer_size=2,
    )
    it = DP.make_pipeline(tok, [DP.qa_source(records, video_root=d)], cfg)
    try:
      next(it)  # start-up (worker spawn) excluded
      t0 = time.perf_counter()
      for _ in range(batches):
        next(it)
      dt = time.perf_counter() - t0
    finally:
      it.close()
    out[workers] = batches * cfg.batch_size / dt
    print(f"pipeline, {workers} worker(s): {out[workers]:.1f} clips/s")
  print(
    f"2 workers vs 1: {out[2] / out[1]:.2f}x; 1 worker vs in-process: {out[1] / out[0]:.2f}x "
    f"({os.cpu_count()} CPUs)"
  )
  return {"clips_per_s": out, "ratio_2_vs_1": out[2] / out[1]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as d:
    result = {"seek": bench_seek(d, args.quick), "pipeline": bench_pipeline(d, args.quick)}
  print(json.dumps(result, default=str))


if __name__ == "__main__":
  main()
