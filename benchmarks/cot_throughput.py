r"""CoT job expert side: questions/s of STAR-like programs with the OWLv2 detector coalesced.

A CoT job runs `num_threads` programs at once; each STAR-like program calls the detector on its
own (grounded, hence short) clip: `Filter_frames_with_obj`, `Find` and `exist`, each for a
different object. Per run: `questions` clips of random length (`min_len`..`max_len` frames,
distinct videos), a fresh `Toolbox` (empty tool cache) and an empty feature LRU; `threads`
programs in flight (a thread pool, as `CotJob._execute`'s). Two detectors on the same random
OWLv2 weights:
  off:    `Owlv2Detector(coalesce=False)`: each call runs its own bucketed image side;
  on:     `Owlv2Detector(coalesce=True)`: concurrent calls share one batch (experts/coalesce.py);
  serial: coalesce=False and one program at a time (the official agent's design).
Both are compiled (a warm-up run) before timing; the runs alternate for `--rounds` and the
best of each is kept (the CPU box is shared). Printed: questions/s per mode, the ratios, the
coalescer's requests per batch, and whether both runs found the same boxes.
The sandbox and the LLM stages are not in the loop: this measures the expert side only.

  python benchmarks/cot_throughput.py                 # CPU, scaled-down OWLv2 (RESULTS.md)
  python benchmarks/cot_throughput.py --preset=tiny   # a smoke run
  python benchmarks/cot_throughput.py --preset=gpu    # OWLv2 B/16 at 960 px, random weights
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    # scaled-down OWLv2 (the size of benchmarks/experts_tools.py's cpu preset)
    "cpu": dict(image_size=96, patch_size=16, vision_hidden=96, vision_layers=2, heads=4,
                text_hidden=64, text_layers=1, projection=64, vocab=99, questions=64,
                min_len=1, max_len=8, frame_hw=(72, 96), precision="default"),
    "tiny": dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, heads=2,
                 text_hidden=32, text_layers=1, projection=32, vocab=99, questions=16,
                 min_len=1, max_len=4, frame_hw=(24, 32), precision="default"),
    # OWLv2 B/16 at 960 px (owlv2-base-patch16-ensemble's shapes: 3600 patches)
    "gpu": dict(image_size=960, patch_size=16, vision_hidden=768, vision_layers=12, heads=12,
                text_hidden=512, text_layers=12, projection=512, vocab=49408, questions=256,
                min_len=1, max_len=8, frame_hw=(480, 640), precision="default"),
}
BUCKETS = (1, 2, 4, 8, 16, 32)
OBJECTS = ("cup", "book", "laptop", "towel", "bag", "pillow", "sandwich", "door")


def build_model(p):
  from flax import nnx
  from aotd_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
  from aotd_jax.models.owlv2 import Owlv2Config, Owlv2ForObjectDetection
  v = p["vocab"]
  text = CLIPTextConfig(vocab_size=v, hidden_size=p["text_hidden"],
                        intermediate_size=4 * p["text_hidden"], projection_dim=p["projection"],
                        num_hidden_layers=p["text_layers"],
                        num_attention_heads=max(1, p["text_hidden"] // 64),
                        max_position_embeddings=16, pad_token_id=0, bos_token_id=v - 2,
                        eos_token_id=v - 1)
  vision = CLIPVisionConfig(hidden_size=p["vision_hidden"],
                            intermediate_size=4 * p["vision_hidden"],
                            projection_dim=p["projection"], num_hidden_layers=p["vision_layers"],
                            num_attention_heads=p["heads"], image_size=p["image_size"],
                            patch_size=p["patch_size"])
  cfg = Owlv2Config(text_config=text, vision_config=vision, projection_dim=p["projection"],
                    matmul_precision=p["precision"])
  return Owlv2ForObjectDetection(cfg, rngs=nnx.Rngs(0))


def make_tokenize(vocab):
  def tokenize(texts):
    ids = np.zeros((len(texts), 16), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
      toks = [vocab - 2] + [3 + sum(map(ord, w)) % (vocab - 6) for w in t.split()] + [vocab - 1]
      ids[i, :len(toks)], mask[i, :len(toks)] = toks, 1
    return ids, mask
  return tokenize


def program(box, clip, objs):
  """STAR-like: which frames show a, where is b, is c there at all."""
  kept = box.Filter_frames_with_obj(clip, objs[0])
  found = box.Find(clip, objs[1])
  seen = box.exist(clip, objs[2])
  return len(kept), len(found), bool(seen)


def run(det, questions, threads, threshold):
  import experts
  det.clear_features()
  box = experts.Toolbox(detector=det, detect_threshold=threshold, find="frames",
                        exist="detector")
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    answers = list(pool.map(lambda q: program(box, *q), questions))
  return time.perf_counter() - t0, answers


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  ap.add_argument("--threads", type=int, default=16, help="programs in flight")
  ap.add_argument("--rounds", type=int, default=2, help="timed rounds each (best kept)")
  ap.add_argument("--questions", type=int, default=0, help="override the preset's count")
  ap.add_argument("--wait_ms", type=float, default=2.0, help="the coalescer's window")
  ap.add_argument("--switch_ms", type=float, default=0.0,
                  help="sys.setswitchinterval for every mode (0: Python's default, 5 ms)")
  args = ap.parse_args(argv)
  if args.switch_ms:
    sys.setswitchinterval(args.switch_ms / 1000)
  p = dict(PRESETS[args.preset])
  if args.questions:
    p["questions"] = args.questions
  import jax
  import experts
  from experts.backends.owlv2 import Owlv2Detector

  t_build = time.perf_counter()
  model = build_model(p)
  t_build = time.perf_counter() - t_build
  tokenize = make_tokenize(p["vocab"])
  rng = np.random.default_rng(0)
  h, w = p["frame_hw"]

  def questions(tag):  # distinct videos per run: nothing cached from an earlier run
    rng_q = np.random.default_rng(1)
    out = []
    for i in range(p["questions"]):
      n = int(rng_q.integers(p["min_len"], p["max_len"] + 1))
      frames = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
      objs = [OBJECTS[j] for j in rng_q.permutation(len(OBJECTS))[:3]]
      out.append((experts.VideoClip(frames, video_id=f"{tag}-v{i}"), objs))
    return out

  dets = {"off": Owlv2Detector(model, tokenize, buckets=BUCKETS, nms_threshold=None),
          "on": Owlv2Detector(model, tokenize, buckets=BUCKETS, nms_threshold=None,
                              coalesce=True, coalesce_wait_s=args.wait_ms / 1000)}
  # warm-up: compile every bucket of the image side and the heads (1 and 2 queries) for both
  t_compile = time.perf_counter()
  for det in dets.values():
    for b in BUCKETS:
      clip = experts.VideoClip(rng.integers(0, 255, (b, h, w, 3), dtype=np.uint8),
                               video_id=f"warm{b}")
      det.raw_outputs(clip, ["cup"])  # the programs ask for one object per call
  t_compile = time.perf_counter() - t_compile
  # threshold: the 99th percentile of the random model's scores (some boxes, not all)
  warm_logits = dets["off"].raw_outputs(questions("warm")[0][0], ["cup"])[0]
  threshold = float(np.quantile(1 / (1 + np.exp(-warm_logits)), 0.99))
  for det in dets.values():  # the first threaded pass (thread pools, coalescer warm)
    run(det, questions("pre")[:args.threads], args.threads, threshold)

  best = {"off": float("inf"), "on": float("inf"), "serial": float("inf")}
  answers = {}
  for r in range(args.rounds):
    qs = questions(f"r{r}")  # the same pixels for every mode within a round
    for mode in ("off", "on", "serial"):
      t, answers[mode] = run(dets["off" if mode == "serial" else mode], qs,
                             1 if mode == "serial" else args.threads, threshold)
      best[mode] = min(best[mode], t)
  stats = dets["on"].coalescer.stats
  qps = {m: p["questions"] / t for m, t in best.items()}
  busy = {}
  for r in range(1):  # one more "on" run to see how busy the coalescer's worker is
    before = stats.busy_s
    t, _ = run(dets["on"], questions("busy"), args.threads, threshold)
    busy = {"worker_busy_fraction": round((stats.busy_s - before) / t, 3)}
  frames = sum(len(c) for c, _ in questions("count"))
  result = {
      "preset": args.preset, "device": str(jax.devices()[0].platform),
      "device_kind": jax.devices()[0].device_kind, "threads": args.threads,
      "questions": p["questions"], "frames": frames, "image_size": p["image_size"],
      "frame_hw": [h, w], "wait_ms": args.wait_ms,
      "switch_ms": round(sys.getswitchinterval() * 1000, 3),
      "questions_per_s_off": round(qps["off"], 2), "questions_per_s_on": round(qps["on"], 2),
      "seconds_per_question_on": round(1 / qps["on"], 4),
      "questions_per_s_serial": round(qps["serial"], 2),
      "ratio_on_vs_off": round(qps["on"] / qps["off"], 2),
      "ratio_on_vs_serial": round(qps["on"] / qps["serial"], 2),
      "requests_per_batch": round(stats.requests_per_batch, 2),
      "padded_rows_fraction": round(1 - stats.rows / max(stats.padded_rows, 1), 3),
      "same_answers": answers["on"] == answers["off"] == answers["serial"],
      **busy,
      "image_side_compilations": {m: d.image_fn.compiles for m, d in dets.items()},
      "build_s": round(t_build, 1), "compile_s": round(t_compile, 1),
  }
  print(json.dumps(result, indent=1))
  dets["on"].close()
  return result


if __name__ == "__main__":
  main()
