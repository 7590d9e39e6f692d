"""The rehearsal's stages: one production launcher command each, and the checks of its outputs.

A stage's `command` is exactly what a researcher types (docs/reproduce.md shows the full-size
ones): `python -m <launcher>` with the production config; only sizes (`sizes`, listed apart so
the docs test can ignore them) and paths differ. A stage whose prerequisite has not landed yet
says "waiting on ..." (`probe`) instead of running something else.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shlex
from typing import Callable

PY = "python"  # replaced by sys.executable when run


@dataclasses.dataclass
class Stage:
  name: str
  command: list[str]                       # production command (paths filled in)
  sizes: list[str] = dataclasses.field(default_factory=list)  # rehearsal-only size flags
  check: Callable[["Stage", dict], dict] | None = None  # -> figures; raises CheckFailed
  probe: str = ""      # python snippet: prints "waiting on ..." when a prerequisite is missing
  needs: tuple[str, ...] = ()  # stages that must have passed
  timeout_s: int = 600

  def argv(self) -> list[str]:
    return self.command + self.sizes

  def text(self) -> str:
    return " ".join(shlex.quote(a) for a in self.argv())


class CheckFailed(AssertionError):
  """A stage ran but its outputs are wrong (the message says what)."""


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise CheckFailed(msg)


# -- checks ---------------------------------------------------------------------------------


def check_convert(stage: Stage, ctx: dict) -> dict:
  orbax = ctx["paths"]["student_orbax"]
  steps = [d for d in os.listdir(orbax) if d.isdigit()] if os.path.isdir(orbax) else []
  _require(steps == ["0"], f"{orbax}: expected one step 0, found {steps}")
  return {"steps": steps}


def read_cot_dir(out: str) -> dict:
  """Counts of a CoT job's output directory (records, kept, manifest summary)."""
  records = []
  for path in sorted(glob.glob(os.path.join(out, "records-*.jsonl"))):
    with open(path) as f:
      records += [json.loads(line) for line in f if line.strip()]
  manifest_path = os.path.join(out, "manifest.json")
  _require(os.path.isfile(manifest_path), f"{manifest_path}: missing")
  with open(manifest_path) as f:
    manifest = json.load(f)
  shards = glob.glob(os.path.join(out, "cot-*.array_record"))
  return {"records": records, "manifest": manifest, "shards": shards}


def check_cot(stage: Stage, ctx: dict) -> dict:
  out = ctx["paths"][f"{stage.name}_out"]
  expected = ctx["data"][stage.name.split("_", 1)[1]]["questions"]
  got = read_cot_dir(out)
  records, manifest = got["records"], got["manifest"]
  _require(len(records) == expected, f"{out}: {len(records)} records, expected {expected}")
  _require(manifest.get("vision_experts") == "real",
           f"{out}/manifest.json: vision_experts={manifest.get('vision_experts')!r}, expected "
           "'real' (the real experts, no oracle)")
  roles = manifest.get("roles", {})
  kinds = {r: roles.get(r, {}).get("kind") for r in
           ("detector", "grounder", "action_recognizer", "video_qa", "selector", "program_llm")}
  want = {"detector": "owlv2", "grounder": "univtg", "action_recognizer": "llava",
          "video_qa": "llava", "selector": "openai", "program_llm": "openai"}
  _require(kinds == want, f"{out}/manifest.json: role kinds {kinds}, expected {want}")
  ref = f"manifest.json#{manifest.get('id')}"
  _require(all(r.get("manifest") == ref for r in records),
           f"{out}: a record does not name {ref}")
  parsed = sum(bool(r.get("verdicts", {}).get("parsed")) for r in records)
  executed = sum(bool(r.get("verdicts", {}).get("executed")) for r in records)
  kept = sum(bool(r.get("kept")) for r in records)
  _require(all(r.get("llm_replies", {}).get("program") for r in records),
           f"{out}: a record has no raw program reply")
  _require(parsed == len(records), f"{out}: {len(records) - parsed} programs did not parse")
  errors = [r.get("verdicts", {}).get("error") or r.get("error") for r in records
            if not r.get("verdicts", {}).get("executed")]
  _require(executed == len(records),
           f"{out}: {len(records) - executed} programs failed on the real experts: {errors[:2]}")
  _require(0 < kept < len(records) or len(records) < 2,
           f"{out}: kept {kept} of {len(records)}: the filter should keep some and drop some")
  _require(len(got["shards"]) == 1, f"{out}: expected one cot-*.array_record shard")
  unknown = ctx["server"].replies.counts.get("unknown", 0)
  _require(unknown == 0, f"the stub LLM got {unknown} prompts it does not recognise")
  return {"records": len(records), "parsed": parsed, "executed": executed, "kept": kept}


# -- the plan --------------------------------------------------------------------------------


def cot_command(name: str, p: dict, d: dict, url: str) -> list[str]:
  arg = {"ann": d["ann"], "videos": d["videos"]}
  if name == "star":
    arg["classes"] = d["classes"]
  else:
    arg["map"] = d["map"]
  arg.update(owlv2=p["owlv2"], univtg=p["univtg"], clip=p["clip"], llava=p["llava"],
             llm=url, model="stub-coder", out=p[f"cot_{name}_out"])
  spec = ",".join(f"{k}={v}" for k, v in arg.items())
  return [PY, "-m", "launch.generate_cots", f"--config=configs/cot/{name}.py:{spec}",
          "--shard_index=0", "--num_shards=1"]


def plan(ctx: dict) -> list[Stage]:
  """Every stage, in order, for the paths in `ctx` (see `runner.prepare`)."""
  p, d, url = ctx["paths"], ctx["data"], ctx["server"].url
  stages = [
      Stage("convert", [PY, "-m", "aotd_jax.hf", "convert", f"--hf_dir={p['llava']}",
                        f"--orbax_dir={p['student_orbax']}"], check=check_convert),
  ]
  for name in ("star", "nextqa"):
    stages.append(Stage(
        f"cot_{name}", cot_command(name, p, d[name], url),
        sizes=["--config.batch_size=4", "--config.sandbox.num_workers=1",
               "--config.sandbox.memory_mb=2048", "--config.report_samples=0"],
        check=check_cot))
  return stages
