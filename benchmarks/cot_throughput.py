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
`new_tokens` long (`--new_tokens`; the cpu preset 8, the scaled and gpu presets 100, the CoT configs' cap,
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

  python benchmarks/cot_throughput.py --preset=scaled        # issue 22's scaled-down size
  python benchmarks/cot_throughput.py --preset=cpu           # small experts (a minute)
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

scaled: the cpu preset's OWLv2, CLIP and UniVTG with LLaVA's language model at hidden 1024, 8
layers and a 32,064-token vocabulary (517 MB of float32 weights read per decode step, past
this CPU's caches as 7B's are past a GPU's: LLaVA the one large model, as at real sizes),
100-token replies and LLaVA's buckets the backend's default (1, 2, 4, 8, 16); 32 questions,
one round.
gpu: OWLv2 B/16 at 960 px, UniVTG at the released size (hidden 1024, 4 layers) on CLIP B/32,
LLaVA-NeXT-Video-7B shapes in bf16 (32 frames: 4,608 video tokens); `--smoke` keeps its
buckets, dtypes, frame count and modes but shrinks every width and depth (checks on a CPU that
the gpu preset runs). One JSON object is printed at the end and written to `--out`.

This file reads the flags; the benchmark is in benchmarks/cot_bench/: `presets` (the sizes),
`harness` (the experts and their modes), `questions` (the clips and the STAR-like program),
`runs` (one run of a mode, the coalescers' warm-up, the batch cost), `phases` (the phases
under the time budget, the summary), `accounting` (CPU by thread, decode weight bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.budget import DEADLINE_EXIT, RunClock  # noqa: E402
from benchmarks.cot_bench.phases import measure  # noqa: E402
from benchmarks.cot_bench.presets import MODES, PRESETS, smoke_sizes  # noqa: E402


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


if __name__ == "__main__":
  main()
