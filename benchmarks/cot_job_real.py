r"""The whole CoT job as the launcher runs it, with model experts: questions/s, coalescing on vs
off vs one program at a time, on the same questions and checkpoints.

Each mode runs `launch.generate_cots`' own job (`generate_cots.open_job` over
configs/cot/star.py: the experts loaded from checkpoint directories by `experts.registry`, the
sandbox pool, the pipelined stages with the clips decoded ahead by the decode pool, the program
/ rewrite / judge LLMs and the selector over HTTP, the filter, the fsync'd record log, the
manifest) on STAR questions over the rehearsal's 30 s mp4s (`aotd_jax.rehearsal.datasets`), one
video per question (the stub's program is the same for every question: two questions on one
video would hit the tool cache). The LLM side is the rehearsal's OpenAI-compatible stub
(`aotd_jax.rehearsal.stub_server`) answering every request after `--llm_latency_ms`; its
program calls every model expert (UniVTG on CLIP features, OWLv2, LLaVA-NeXT-Video's action
and summary replies) and the selector (an LLM request). A random LLaVA never emits EOS, so each
of its replies runs to the configs' 100-token cap.

Modes (the config keys each sets; everything else is configs/cot/star.py's):
  on:     experts.coalesce=True (the config's default): `--programs` programs in flight
          (sandbox.num_workers), their expert calls batched by one device scheduler;
  off:    experts.coalesce=False, the same programs in flight, each call its own batch;
  serial: experts.coalesce=False, sandbox.num_workers=1: one program at a time (the official
          agent's design). The LLM stages stay pipelined and batched as in the other modes,
          so the ratio is the expert side's within the whole job.

Sizes: `tiny`, the rehearsal's checkpoints (`aotd_jax.rehearsal.checkpoints`, hidden 32: a
smoke run of seconds, tests/test_cot_job_real_bench.py); `scaled`, written by transformers'
own classes and `save_pretrained` (UniVTG in the official checkpoint format) at issue 22's
scaled-down size: LLaVA-NeXT-Video whose language model is hidden 1024, intermediate 2816, 8
layers, 16 heads, vocabulary 32064 (517 MB of float32 weights read per decode step, as
benchmarks/cot_throughput.py's `scaled` preset), OWLv2, CLIP and UniVTG at that file's `cpu`
preset sizes. Checkpoints are kept in `--checkpoints` (a rerun reuses them).

Each mode first runs `--warmup_questions` other questions (other videos: nothing cached
carries over; -1: with coalescing on as many as programs in flight, so the batch sizes the
timed run meets are compiled; off, 2: each call is its own batch), then the timed questions.
Reported per mode: questions/s, seconds, per-stage busy seconds (`CotJob.times`: program,
execute (the sandbox running the programs), answer_judge and logic_judge (the filter),
rewrite; pipelined, they overlap), decode seconds (the decode pool's `make_args`, summed over
its threads), each tool's call seconds from the records'
traces (Filter_frames_with_act: UniVTG + CLIP; Query_Objs: OWLv2; Query_Actions,
Video_summary: LLaVA; select_answer: the selector's LLM request), the device scheduler's and
coalescers' busy seconds and requests per batch, the process's CPU utilisation (CPU seconds /
(wall x cores)), XLA compilations during the timed run, the stub's requests; then the ratios
and whether every mode wrote the same records (`timing` aside).

  python benchmarks/cot_job_real.py --size=tiny --questions=4          # a smoke run
  python benchmarks/cot_job_real.py --size=scaled --questions=32 --programs=16 \
    --checkpoints=/tmp/cot_job_real_ckpt --out=cot_job_real.json       # RESULTS.md's row
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cot_pipeline import TimedArgs  # noqa: E402 - the decode pool's seconds

MODES = ("on", "off", "serial")
ROLES = ("llava", "owlv2", "clip", "univtg")
# issue 22's scaled-down size (benchmarks/cot_throughput.py's `scaled` LLaVA language model and
# `cpu` preset towers), as transformers config fields; towers' MLPs 4x their width, as there
SCALED = {
  "llava": dict(
    vocab=32064,
    vision=dict(
      hidden_size=64,
      intermediate_size=256,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=56,
      patch_size=14,
    ),
    text=dict(
      hidden_size=1024,
      intermediate_size=2816,
      num_hidden_layers=8,
      num_attention_heads=16,
      num_key_value_heads=16,
    ),
  ),
  "owlv2": dict(
    vision=dict(
      hidden_size=96,
      intermediate_size=384,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=96,
      patch_size=16,
    ),
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2),
    projection_dim=64,
  ),
  "clip": dict(
    vision=dict(
      hidden_size=64,
      intermediate_size=256,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=64,
      patch_size=16,
    ),
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    projection_dim=64,
  ),
  "univtg": dict(
    feature_dim=64,  # CLIP's projection
    text_dim=64,  # CLIP's text width
    size=dict(hidden_dim=128, nheads=4, enc_layers=2, dim_feedforward=128, clip_length=2.0),
  ),
}
SIZES = {"tiny": {role: {} for role in ROLES}, "scaled": SCALED}
# tool -> the expert behind it (the stub's program calls these)
TOOL_EXPERTS = {
  "Filter_frames_with_act": "grounder (UniVTG + CLIP)",
  "Query_Objs": "detector (OWLv2)",
  "Query_Actions": "action_recognizer (LLaVA)",
  "Video_summary": "video_qa (LLaVA)",
  "select_answer": "selector (LLM over HTTP)",
}


def make_checkpoints(size: str, root: str) -> dict[str, str]:
  """role -> checkpoint path of `size`, written under `root/<size>` by the rehearsal's builders
  (transformers' `save_pretrained`; UniVTG's official format); reused when `root/<size>/.done`
  records the same sizes."""
  from aotd_jax.rehearsal import checkpoints, datasets

  spec = SIZES[size]
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
  where = os.path.join(root, size)
  done = os.path.join(where, ".done")
  if os.path.isfile(done):
    with open(done) as f:
      have = json.load(f)
    if have.get("spec") == key and all(os.path.exists(p) for p in have["paths"].values()):
      return have["paths"]
  os.makedirs(where, exist_ok=True)
  paths = {}
  for role in ROLES:
    name, build, takes_texts = checkpoints.BUILDERS[role]
    path = os.path.join(where, name)
    extra = dict(spec[role])
    paths[role] = build(path, datasets.texts(), **extra) if takes_texts else build(path, **extra)
  with open(done, "w") as f:
    json.dump({"spec": key, "paths": paths}, f)
  return paths


def coalescers(box) -> list:
  """The toolbox's coalescers (none when coalescing is off)."""
  out = []
  for backend in box.backends():
    if getattr(backend, "coalescer", None) is not None:  # OWLv2: one
      out.append(backend.coalescer)
    out += list(getattr(backend, "coalescers", {}).values())
  return out


def tool_seconds(records: list[dict]) -> dict[str, float]:
  """Seconds per tool over the records' traces (each call's latency as its program saw it)."""
  out: dict[str, float] = {}
  for r in records:
    calls = (r.get("trace") or {}).get("calls", [])
    for call, s in zip(calls, r["timing"]["tool_seconds"]):
      out[call["name"]] = out.get(call["name"], 0.0) + s
  return {k: round(v, 3) for k, v in sorted(out.items())}


def run_mode(mode: str, arg: str, programs: int, timed, warmup, out_dir: str, replies) -> dict:
  """One mode: the launcher's job built from configs/cot/star.py (`arg`) with the mode's keys,
  warmed on `warmup`, timed on `timed`."""
  from aotd_jax.agent import job, manifest
  from aotd_jax.agent.stages import StageTimes
  from configs.cot import star
  from experts import count_xla_compilations
  from launch import generate_cots

  config = star.get_config(arg)
  config.out_dir = out_dir
  config.report_samples = 0
  config.experts.coalesce = mode == "on"
  config.sandbox.num_workers = 1 if mode == "serial" else programs
  missing = generate_cots.missing_inputs(config)
  if missing:
    raise FileNotFoundError(f"cot_job_real: not found: {'; '.join(missing)}")
  roles, identity, info = generate_cots.provenance(config)
  manifest_ref = manifest.open_manifest(out_dir, roles, identity, config.to_dict(), info)
  name = job.shard_name(0, 1)
  quiet = open(os.devnull, "w")
  t0 = time.perf_counter()
  with generate_cots.open_job(config, manifest_ref) as (cot_job, box):
    load_s = time.perf_counter() - t0
    decode = cot_job.make_args = TimedArgs(cot_job.make_args)
    t0 = time.perf_counter()
    if warmup:
      with count_xla_compilations() as warm_compiles:
        cot_job.run(
          warmup, job.JobPaths.for_shard(os.path.join(out_dir, "warmup"), name), stream=quiet
        )
    warmup_s = time.perf_counter() - t0
    decode.seconds = 0.0
    cot_job.times = StageTimes()
    # LLaVA makes its coalescers on first use: those made in the timed run start from zero
    before = {c.name: (c.stats.batches, c.stats.requests, c.stats.busy_s) for c in coalescers(box)}
    sched_busy0 = box.scheduler.stats.busy_s if box.scheduler is not None else 0.0
    sched_batches0 = box.scheduler.stats.batches if box.scheduler is not None else 0
    counts0 = dict(replies.counts)
    paths = job.JobPaths.for_shard(out_dir, name)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with count_xla_compilations() as compiles:
      stats = cot_job.run(timed, paths, stream=quiet)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    coalesced = {}
    for c in coalescers(box):
      b0, r0, s0 = before.get(c.name, (0, 0, 0.0))
      batches = c.stats.batches - b0
      if batches:
        coalesced[c.name] = {
          "batches": batches,
          "requests_per_batch": round((c.stats.requests - r0) / batches, 2),
          "busy_s": round(c.stats.busy_s - s0, 3),
        }
    scheduler = None
    if box.scheduler is not None:
      busy = box.scheduler.stats.busy_s - sched_busy0
      scheduler = {
        "workers": len(box.scheduler._threads),  # noqa: SLF001 - reported only
        "batches": box.scheduler.stats.batches - sched_batches0,
        "busy_s": round(busy, 3),
        "busy_per_wall": round(busy / wall, 3),
      }
    box.close()  # the next mode loads its own
  quiet.close()
  records = job.RecordLog(paths.records).load()
  busy = cot_job.times.busy_s
  return {
    "mode": mode,
    "programs_in_flight": config.sandbox.num_workers,
    "coalesce": bool(config.experts.coalesce),
    "questions": len(timed),
    "seconds": round(wall, 2),
    "questions_per_s": round(len(timed) / wall, 3),
    "load_s": round(load_s, 1),
    "warmup_questions": len(warmup),
    "warmup_s": round(warmup_s, 1),
    "warmup_xla_compilations": warm_compiles[0] if warmup else 0,
    "xla_compilations": compiles[0],
    "stage_busy_s": {k: round(v, 3) for k, v in busy.items()},
    "filter_busy_s": round(busy.get("answer_judge", 0.0) + busy.get("logic_judge", 0.0), 3),
    "decode_s": round(decode.seconds, 3),
    "tool_s": tool_seconds(records),
    "coalescers": coalesced,
    "scheduler": scheduler,
    "cpu_s": round(cpu, 1),
    "cpu_utilisation": round(cpu / (wall * (os.cpu_count() or 1)), 3),
    "llm_requests": {k: v - counts0.get(k, 0) for k, v in sorted(replies.counts.items())},
    "executed": stats.executed,
    "kept": stats.kept,
    "records": [{k: v for k, v in r.items() if k != "timing"} for r in records],
  }


def differences(a: list[dict], b: list[dict]) -> list[str]:
  """Where two modes' records differ: `qid: key` for the first few."""
  out = []
  if len(a) != len(b):
    out.append(f"{len(a)} vs {len(b)} records")
  for x, y in zip(a, b):
    keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
    if keys:
      out.append(f"{x.get('qid')}: {', '.join(keys)}")
  return out[:5]


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
  ap.add_argument("--questions", type=int, default=4, help="timed STAR questions")
  ap.add_argument(
    "--programs", type=int, default=0, help="programs in flight (0: the config's sandbox pool)"
  )
  ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
  ap.add_argument("--llm_latency_ms", type=float, default=200.0, help="the stub LLM's latency")
  ap.add_argument(
    "--warmup_questions",
    type=int,
    default=-1,
    help="per mode, before timing (-1: the programs in flight with coalescing on, 2 without)",
  )
  ap.add_argument("--frames", type=int, default=0, help="the config's frames= (0: its own, 32)")
  ap.add_argument("--video_px", type=int, default=32, help="the mp4s' width and height")
  ap.add_argument("--checkpoints", default="", help="checkpoint cache dir (default: in workdir)")
  ap.add_argument("--workdir", default="", help="data and outputs (default: a temp dir)")
  ap.add_argument("--out", default="", help="write the JSON result here too")
  args = ap.parse_args(argv)
  modes = [m for m in args.modes.split(",") if m]
  unknown = [m for m in modes if m not in MODES]
  if unknown or not modes:
    ap.error(f"--modes={args.modes}: expected a comma-separated subset of {MODES}")
  if args.questions < 1:
    ap.error(f"--questions={args.questions}: must be >= 1")

  from aotd_jax.data import annotations
  from aotd_jax.rehearsal import datasets
  from aotd_jax.rehearsal.stub_server import Replies, StubServer
  from configs.cot import star

  workdir = args.workdir or tempfile.mkdtemp(prefix="cot_job_real_")
  t0 = time.perf_counter()
  ckpt = make_checkpoints(args.size, args.checkpoints or os.path.join(workdir, "checkpoints"))
  checkpoints_s = time.perf_counter() - t0
  # the config's sandbox pool unless --programs
  programs = args.programs or int(
    star.get_config("ann=-,videos=-,llm=http://-,experts=oracle").sandbox.num_workers
  )
  warm = {
    m: (programs if m == "on" else 2) if args.warmup_questions < 0 else args.warmup_questions
    for m in modes
  }
  total = args.questions + max(warm.values())
  data = datasets.star(
    os.path.join(workdir, "data"), questions=total, videos=total, size=args.video_px
  )
  spec = {
    "ann": data["ann"],
    "videos": data["videos"],
    "classes": data["classes"],
    **{role: ckpt[role] for role in ROLES},
    "model": "stub-coder",
  }
  if args.frames:
    spec["frames"] = str(args.frames)
  everything = list(annotations.read("star", data["ann"], window="whole"))
  timed, warmup = everything[: args.questions], everything[args.questions :]
  replies = Replies({q.question: q.answer for q in everything})
  result = {
    "size": args.size,
    "questions": args.questions,
    "programs": programs,
    "llm_latency_ms": args.llm_latency_ms,
    "video_px": args.video_px,
    "checkpoints": ckpt,
    "checkpoint_mb": {role: round(_du(p) / 2**20, 1) for role, p in ckpt.items()},
    "checkpoints_s": round(checkpoints_s, 1),
    "load_avg_start": list(os.getloadavg()),
    "modes": {},
  }
  with StubServer(replies, latency_s=args.llm_latency_ms / 1e3) as server:
    arg = ",".join(f"{k}={v}" for k, v in {**spec, "llm": server.url}.items())
    result["config"] = f"configs/cot/star.py:{arg}"
    for mode in modes:
      out = run_mode(
        mode, arg, programs, timed, warmup[: warm[mode]], os.path.join(workdir, mode), replies
      )
      print(
        f"[cot_job_real] {mode}: {out['questions_per_s']} q/s ({out['seconds']} s), "
        f"stages {out['stage_busy_s']}, decode {out['decode_s']} s, tools {out['tool_s']}",
        flush=True,
      )
      result["modes"][mode] = out
  result["load_avg_end"] = list(os.getloadavg())
  got = result["modes"]
  first = modes[0]
  result["same_records"] = all(got[m]["records"] == got[first]["records"] for m in modes)
  result["record_differences"] = {
    m: differences(got[first]["records"], got[m]["records"]) for m in modes[1:]
  }
  result["records_executed_all"] = all(r["verdicts"].get("executed") for r in got[first]["records"])
  qps = {m: got[m]["questions_per_s"] for m in modes}
  result["ratios"] = {
    f"{a}_vs_{b}": round(qps[a] / qps[b], 2)
    for a, b in (("on", "off"), ("on", "serial"), ("off", "serial"))
    if a in qps and b in qps
  }
  for m in modes:
    got[m].pop("records")
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return result


def _du(path: str) -> int:
  """Bytes of a file or a directory's files."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


if __name__ == "__main__":
  main()
