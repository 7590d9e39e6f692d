"""The toy-world study: does AoTD beat Instruct, under which protocol, teacher and loss weight?

Built on the demo's stages (`aotd_jax.projects.toyworld.run`). The shared stages run once into
`workdir/shared` (a demo work directory: world, tokenizer, experts, the agent's CoTs), plus
one CoT set per oracle teacher (`cots_oracle<noise>`, `aotd_jax.projects.toyworld.oracle_teacher`). Then
every (arm, seed) trains and evaluates one student into `workdir/arms/<arm>` and writes
`workdir/runs/<arm>_s<seed>.json` last; a finished run is never redone, so a killed study
resumes. Each CoT arm is compared with its Instruct baseline on the same seeds and test
questions (`aotd_jax.projects.toyworld.stats`), and the table goes to `workdir/study.{json,md}`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Mapping, Sequence

import ml_collections

from aotd_jax.projects.toyworld import rationale_judge, run as demo_run, stats
from aotd_jax.projects.toyworld.agent import cot_stage
from aotd_jax.projects.toyworld.common import (
  DemoError,
  cached,
  check_config_stamp,
  enable_compilation_cache,
  read_split,
  write_json,
)


@dataclasses.dataclass(frozen=True)
class Arm:
  """One student setting. student: a `run.STUDENT_DATA` name (its CoT set: none, the kept
  CoTs, or every executed program's); teacher: "agent" (the demo's trained experts and
  program generator) or "oracle" (gold programs on ground truth with `noise`, see
  `oracle_teacher`); protocol: `run.PROTOCOLS`; baseline: the arm it is paired with;
  judge: the CoT filter's second step, "rule" (the job's rule judge) or "rationale" (also
  `rationale_judge.check`: the question's objects and events in the trace and rationale);
  size: the QA expert the student starts from (`STUDENT_SIZES`);
  loss_normalization, mixing, prompt_format, answer_style: the `config.students` switches of
  docs/fidelity.md."""

  name: str
  student: str
  teacher: str = "agent"
  noise: float = 0.0
  protocol: str = "epochs"
  rationale_weight: float = 1.0
  baseline: str | None = "instruct"
  judge: str = "rule"
  size: str = "base"
  loss_normalization: str = "per_part"
  mixing: str = ""
  prompt_format: str = "plain"
  answer_style: str = "letter_text"

  @property
  def cot_set(self) -> str:
    """Name of the CoT directory under the shared directory this arm trains on ("" for none)."""
    if not demo_run.STUDENT_DATA.get(self.student):
      return ""
    return "cots" if self.teacher == "agent" else f"cots_oracle{self.noise:g}"

  @property
  def cot_key(self) -> str:
    """The CoT set after this arm's judge ("" for none): `cot_set`, `+rationale` when judged."""
    if not self.cot_set:
      return ""
    return self.cot_set + ("+rationale" if self.judge == "rationale" else "")


ARMS = {
  a.name: a
  for a in (
    Arm("instruct", "instruct", teacher="none", baseline=None),
    Arm("aotd", "aotd"),
    Arm("aotd_unfiltered", "aotd_unfiltered"),
    Arm("aotd_lambda0.5", "aotd", rationale_weight=0.5),
    Arm("instruct_steps", "instruct", teacher="none", protocol="steps", baseline=None),
    Arm("aotd_steps", "aotd", protocol="steps", baseline="instruct_steps"),
    Arm("oracle0", "aotd", teacher="oracle", noise=0.0),
    Arm("oracle0.25", "aotd", teacher="oracle", noise=0.25),
    Arm("oracle0.5", "aotd", teacher="oracle", noise=0.5),
    Arm("oracle0.5_unfiltered", "aotd_unfiltered", teacher="oracle", noise=0.5),
    Arm("aotd_rjudge", "aotd", judge="rationale"),
    Arm("oracle0.5_rjudge", "aotd", teacher="oracle", noise=0.5, judge="rationale"),
    Arm("instruct_large", "instruct", teacher="none", baseline=None, size="large"),
    Arm("aotd_large", "aotd", baseline="instruct_large", size="large"),
    Arm(
      "oracle0_large", "aotd", teacher="oracle", noise=0.0, baseline="instruct_large", size="large"
    ),
    # One deviation of docs/fidelity.md each, paired with aotd (our defaults in the toy world).
    Arm("aotd_sequence", "aotd", loss_normalization="sequence", baseline="aotd"),
    Arm("aotd_weighted", "aotd", mixing="weighted", baseline="aotd"),
    Arm("aotd_official_prompt", "aotd", prompt_format="official", baseline="aotd"),
    Arm(
      "aotd_official_format",
      "aotd",
      prompt_format="official",
      answer_style="letter",
      baseline="aotd",
    ),
  )
}

# The config.students switches of the fidelity arms, at their defaults.
_LATER_FIELDS = {
  "loss_normalization": "per_part",
  "mixing": "",
  "prompt_format": "plain",
  "answer_style": "letter_text",
}
# A run result written before these were part of its spec was made with these values.
_LEGACY_SPEC = {**_LATER_FIELDS, "judge": "rule", "size": "base", "vary": "student"}

# The QA experts the students start from: "base" is the demo's (config.experts.qa.size);
# "large" overrides its LM size (`qa_expert.DEFAULT_SIZE` keys), trained once per world into
# `shared/experts/qa_large` on the same frozen frame encoder. The agent's tools keep "base".
STUDENT_SIZES = {
  "base": {},
  "large": dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
  ),
}
JUDGES = ("rule", "rationale")
VARY = ("all", "student")  # --vary: what a seed changes


def resolve_arms(names: Sequence[str]) -> list[Arm]:
  """The arms named (plus the baselines they are paired with), in `ARMS` order."""
  unknown = [n for n in names if n not in ARMS]
  if unknown:
    raise DemoError(f"--arms: unknown arm(s) {unknown}; known: {list(ARMS)}")
  wanted = set(names) | {ARMS[n].baseline for n in names if ARMS[n].baseline}
  return [a for n, a in ARMS.items() if n in wanted]


def arm_config(base, arm: Arm, epochs: float) -> ml_collections.ConfigDict:
  """The demo config a student of `arm` trains and evaluates under."""
  c = ml_collections.ConfigDict(base.to_dict())
  c.students.protocol = arm.protocol
  c.students.epochs = float(epochs)
  c.students.rationale_weight = float(arm.rationale_weight)
  for key in _LATER_FIELDS:
    c.students[key] = getattr(arm, key)
  return c


# -- shared stages -----------------------------------------------------------------------------


def shared_stages(config, shared: str, arms: Sequence[Arm], log: Callable[[str], None]) -> dict:
  """World, tokenizer, experts, each CoT set and student init the arms need, once, in
  `shared` (a demo work directory)."""
  os.makedirs(shared, exist_ok=True)
  world = demo_run.world_stage(config, shared)
  tok = demo_run.tokenizer_stage(config, shared, world)
  log(f"[study] {shared}: experts (cached after the first run) ...")
  experts_info = cached(
    os.path.join(shared, "experts", "experts.json"),
    lambda: demo_run.experts_stage(config, shared, world, tok["path"]),
  )
  cots = {}
  for arm in arms:
    name = arm.cot_set
    if not name:
      continue
    if name not in cots:
      log(f"[study] {shared}: CoTs {name} ...")
      if arm.teacher == "agent":
        cots[name] = cot_stage(config, shared, world, experts_info)
      else:
        from aotd_jax.projects.toyworld.oracle_teacher import noisy_oracle_tools

        c = ml_collections.ConfigDict(config.to_dict())
        c.agent.programs = "gold"  # gold programs on the (noisy) ground-truth experts
        train_clips = sorted({r.video_id for r in read_split(world, "train")})
        tools, swap = noisy_oracle_tools(world, arm.noise, int(config.world.seed), train_clips)
        cots[name] = dict(
          cot_stage(c, shared, world, experts_info, tools=tools, name=name),
          swapped_clips=len(swap),
          clips=len(train_clips),
        )
    if arm.cot_key not in cots:
      cots[arm.cot_key] = rationale_judge.judged_cots(cots[name])
  base_dir = demo_run.student_base_dir(config, experts_info)
  vision_dir = "" if base_dir else demo_run.student_vision_dir(config, experts_info)
  bases = {
    size: student_init(config, shared, experts_info, size, base_dir, log)
    for size in dict.fromkeys(arm.size for arm in arms)
  }
  return {
    "world": world,
    "tokenizer": tok["path"],
    "experts": experts_info,
    "cots": cots,
    "base_dir": base_dir,
    "bases": bases,
    "vision_dir": vision_dir,
  }


def student_init(
  config, shared: str, experts_info: Mapping, size: str, base_dir: str, log: Callable[[str], None]
) -> str:
  """The QA expert a student of `size` starts from: the demo's for "base", else one trained
  here with `STUDENT_SIZES[size]` on the same frame encoder (cached)."""
  if size not in STUDENT_SIZES:
    raise DemoError(f"study arm size {size!r}: expected one of {sorted(STUDENT_SIZES)}")
  if size == "base":
    return base_dir
  if str(config.students.get("init_from", "")) != "qa":
    raise DemoError(
      f"study arm size {size!r} needs config.students.init_from='qa' (a student "
      "starts from a QA expert of that size)"
    )
  from aotd_jax.projects.toyworld.qa_expert import train_qa_expert

  out = os.path.join(shared, "experts", f"qa_{size}")
  log(f"[study] {shared}: the {size} QA expert (cached after the first run) ...")
  section = config.experts.qa
  kw = dict(section.get("size", {}) or {}, **STUDENT_SIZES[size])
  encoder = experts_info.get("encoder", {})
  if encoder.get("source") == "trained":
    kw["vision_init"] = encoder["path"]
  return train_qa_expert(
    shared_world(shared),
    os.path.join(shared, "experts", "tokenizer"),
    out,
    steps=int(section.steps),
    seed=int(config.world.seed),
    **kw,
  )


def shared_world(shared: str) -> str:
  return os.path.join(shared, "world")


def seed_config(config, seed: int, vary: str) -> ml_collections.ConfigDict:
  """The demo config of seed `seed`: with vary="all" its world (and so its experts, whose
  seed is the world's) is drawn from `config.world.seed + seed`; with "student" only the
  student's seed changes."""
  if vary not in VARY:
    raise DemoError(f"--vary={vary!r}: expected one of {VARY}")
  c = ml_collections.ConfigDict(config.to_dict())
  if vary == "all":
    c.world.seed = int(config.world.seed) + int(seed)
  return c


def shared_dir(workdir: str, seed: int, vary: str) -> str:
  """`workdir/shared_w<world seed>` (vary="all") or `workdir/shared` (one world)."""
  return os.path.join(workdir, f"shared_w{seed}" if vary == "all" else "shared")


def teacher_accuracy(cots: Mapping) -> float:
  """The teacher's accuracy on the train questions: programs whose answer passed the filter."""
  return cots["passed_answer"] / max(1, cots["questions"])


# -- one (arm, seed) --------------------------------------------------------------------------


def _teacher(arm: Arm, cots: Mapping) -> dict:
  """The teacher of a CoT arm's run: its train accuracy, questions, and the CoTs the arm uses."""
  return {
    "accuracy": teacher_accuracy(cots),
    "questions": cots["questions"],
    "cots": cots["passed_judge"] if arm.student == "aotd" else cots["unfiltered"],
  }


def _lacks_teacher(path: str, arm: Arm) -> bool:
  """A finished CoT run written before runs kept their teacher (it needs the shared stages)."""
  if not arm.cot_key or not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      return "teacher" not in json.load(f)
  except (OSError, json.JSONDecodeError):
    return False  # run_one names a corrupt file


def run_path(workdir: str, arm: Arm, seed: int) -> str:
  return os.path.join(workdir, "runs", f"{arm.name}_s{seed}.json")


def run_one(
  config, workdir: str, arm: Arm, seed: int, shared: Mapping, epochs: float, vary: str = "all"
) -> dict:
  """Trains and evaluates the (arm, seed) student, or reads its finished result back.

  config: the seed's (`seed_config`); shared: its `shared_stages`. A result written by another
  definition of the arm (or another `epochs` or `vary`) is refused by name.
  """
  path = run_path(workdir, arm, seed)
  spec = {**dataclasses.asdict(arm), "epochs": float(epochs), "vary": vary}
  if os.path.exists(path):
    with open(path) as f:
      try:
        result = json.load(f)
      except json.JSONDecodeError as e:
        raise DemoError(f"{path}: corrupt run result ({e}); delete it to rerun") from None
    if {**_LEGACY_SPEC, **(result.get("arm") or {})} != spec:
      raise DemoError(
        f"{path} was written for arm {result.get('arm')}, not {spec}; use a fresh "
        "--workdir or delete it"
      )
    if "teacher" not in result:  # written before runs kept their teacher: the shared CoTs'
      result["teacher"] = _teacher(arm, shared["cots"].get(arm.cot_key)) if arm.cot_key else None
    return result
  cfg = arm_config(config, arm, epochs)
  armdir = os.path.join(workdir, "arms", arm.name)
  cots = shared["cots"].get(arm.cot_key) or {"passed_judge": 0, "unfiltered": 0}
  info = demo_run.student_stage(
    cfg,
    armdir,
    arm.student,
    seed,
    shared["world"],
    shared["tokenizer"],
    cots,
    shared["vision_dir"],
    shared["bases"][arm.size],
  )
  ev = demo_run.eval_stage(cfg, armdir, info, shared["world"])
  teacher = _teacher(arm, cots) if arm.cot_key else None
  result = {
    "arm": spec,
    "seed": seed,
    "world_seed": int(config.world.seed),
    "teacher": teacher,
    "accuracy": ev["accuracy"],
    "per_type": ev["per_type"],
    "qids": ev["qids"],
    "correct": [bool(c) for c in ev["correct"]],
    "rationales": ev["rationales"][:2],
    "letters": ev.get("letters"),
    "train": {
      k: info.get(k)
      for k in (
        "steps",
        "seconds",
        "final_loss",
        "label_loss",
        "rationale_loss",
        "examples",
        "protocol",
      )
    },
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_json(path, result)
  return result


# -- the table ---------------------------------------------------------------------------------


def summarize(
  arms: Sequence[Arm], results: Mapping[str, Sequence[dict]], *, samples: int = 4000
) -> list[dict]:
  """One row per arm: accuracy over seeds and, for a CoT arm, the teacher's train accuracy
  and kept CoTs (means over the seeds' worlds) and its paired difference with its baseline
  on the seeds both finished (nested bootstrap when the seeds' test questions differ)."""
  import numpy as np

  rows = []
  for arm in arms:
    runs = results.get(arm.name, [])
    if not runs:
      continue
    acc = np.array([r["accuracy"] for r in runs])
    row = {
      "arm": arm.name,
      "student": arm.student,
      "teacher": arm.teacher,
      "noise": arm.noise,
      "protocol": arm.protocol,
      "rationale_weight": arm.rationale_weight,
      "judge": arm.judge,
      "size": arm.size,
      "seeds": [r["seed"] for r in runs],
      "accuracy": float(acc.mean()),
      "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
      "steps": runs[0]["train"]["steps"],
      "label_loss": float(np.mean([r["train"]["label_loss"] for r in runs])),
      "rationale_loss": (
        _mean_or_none([r["train"].get("rationale_loss") for r in runs]) if arm.cot_set else None
      ),
      "baseline": arm.baseline,
      "compare": None,
    }
    if arm.cot_set:
      row.update(
        teacher_accuracy=float(np.mean([r["teacher"]["accuracy"] for r in runs])),
        cots=float(np.mean([r["teacher"]["cots"] for r in runs])),
      )
    base = {r["seed"]: r for r in results.get(arm.baseline or "", [])}
    paired = [(r, base[r["seed"]]) for r in runs if r["seed"] in base]
    if paired:
      for r, b in paired:
        if r["qids"] != b["qids"]:
          raise DemoError(
            f"arm {arm.name} seed {r['seed']}: its test questions differ from "
            f"{arm.baseline}'s; the pair is not comparable"
          )
      nested = any(r["qids"] != paired[0][0]["qids"] for r, _ in paired)
      row["compare"] = stats.compare(
        [r["correct"] for r, _ in paired],
        [b["correct"] for _, b in paired],
        samples=samples,
        nested=nested,
      )
    rows.append(row)
  return rows


def _mean_or_none(values):
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def markdown(rows: Sequence[dict], questions: str) -> str:
  """The study's table (accuracy in %, differences in points); `questions` describes the
  test split(s)."""
  head = (
    "| arm | teacher (train acc.) | CoTs | judge | student | protocol | λ | steps "
    "| accuracy (mean ± sd) | Δ vs baseline, 95 % CI (bootstrap) | 95 % CI (t, seeds) "
    "| seeds | last step: label / rationale loss |"
  )
  lines = [head, "|" + "---|" * 13]
  for r in rows:
    teacher = r["teacher"] if r["teacher"] != "oracle" else f"oracle, noise {r['noise']:g}"
    if r.get("teacher_accuracy") is not None:
      teacher += f" ({100 * r['teacher_accuracy']:.0f} %)"
    c = r["compare"]
    delta = "-" if not c else f"{stats.fmt_interval(c['bootstrap'])} vs {r['baseline']}"
    t_ci = "-" if not c or not c["t"] else stats.fmt_interval(c["t"])
    rat = "-" if r["rationale_loss"] is None else f"{r['rationale_loss']:.2f}"
    cot = r.get("cots") is not None
    lam = format(r["rationale_weight"], "g") if cot else "-"
    judge = ("none" if r["student"] == "aotd_unfiltered" else r["judge"]) if cot else "-"
    kept = f"{r['cots']:.0f}" if cot else "-"
    lines.append(
      f"| {r['arm']} | {teacher} | {kept} "
      f"| {judge} | {r['size']} | {r['protocol']} | "
      f"{lam} | {r['steps']} | {100 * r['accuracy']:.1f} ± "
      f"{100 * r['accuracy_std']:.1f} | {delta} | {t_ci} | {len(r['seeds'])} | "
      f"{r['label_loss']:.2f} / {rat} |"
    )
  lines.append("")
  lines.append(
    f"Accuracy on the held-out test split ({questions}, chance 25 %); CoTs and the "
    "teacher's train accuracy are means over the seeds' worlds; Δ = arm − baseline "
    "in points, paired on the same seeds and questions."
  )
  return "\n".join(lines)


MARKERS = {
  ("rule", "base"): "o",
  ("rationale", "base"): "^",
  ("rule", "large"): "s",
  ("rationale", "large"): "D",
}


def gain_plot_svg(rows: Sequence[dict]) -> str | None:
  """SVG of AoTD − baseline (points, 95 % bootstrap interval) against the teacher's train
  accuracy, for the filtered CoT arms under the paper's protocol with λ = 1 (marker: judge
  and student size); None if none ran."""
  pts = [
    r
    for r in rows
    if r.get("compare")
    and r.get("teacher_accuracy") is not None
    and r["student"] == "aotd"
    and r["protocol"] == "epochs"
    and r["rationale_weight"] == 1
  ]
  if not pts:
    return None
  import io

  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  labelled = set()
  for r in sorted(pts, key=lambda r: r["teacher_accuracy"]):
    b = r["compare"]["bootstrap"]
    x, y = 100 * r["teacher_accuracy"], 100 * b["mean"]
    key = (r.get("judge", "rule"), r.get("size", "base"))
    label = None if key in labelled else f"{key[0]} judge, {key[1]} student"
    labelled.add(key)
    ax.errorbar(
      [x],
      [y],
      yerr=[[y - 100 * b["lo"]], [100 * b["hi"] - y]],
      fmt=MARKERS.get(key, "x"),
      capsize=4,
      label=label,
    )
    ax.annotate(r["arm"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
  ax.axhline(0, color="grey", lw=0.8)
  ax.set_xlabel("teacher accuracy on the train questions (%)")
  ax.set_ylabel("AoTD − Instruct (points)")
  ax.set_title("gain vs teacher quality (95 % CI, paired bootstrap)", fontsize=9)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  buf = io.StringIO()
  fig.savefig(buf, format="svg", metadata={"Date": None})
  plt.close(fig)
  return buf.getvalue()


# -- the whole study ---------------------------------------------------------------------------


def run_study(
  config,
  workdir: str,
  arm_names: Sequence[str],
  seeds: Sequence[int],
  *,
  epochs: float,
  samples: int = 4000,
  report_only: bool = False,
  vary: str = "all",
  log: Callable[[str], None] = print,
) -> dict:
  """Runs (or resumes) every (arm, seed); writes `workdir/study.{json,md}`; returns the rows.

  vary: "all" (each seed its own world, experts, CoTs and student: `seed_config`) or
  "student" (one world and set of experts; the seed sets the student's data order).
  report_only: train nothing; the table of the (arm, seed) runs already finished (the work
  directory's config stamp is not checked: each run's arm spec still is).
  """
  t0 = time.perf_counter()
  if not seeds:
    raise DemoError("--seeds: no seeds given")
  if vary not in VARY:
    raise DemoError(f"--vary={vary!r}: expected one of {VARY}")
  arms = resolve_arms(arm_names)
  os.makedirs(workdir, exist_ok=True)
  if not report_only:  # tabling finished runs trains nothing (a newer config's defaults may differ)
    check_config_stamp(config, workdir)
  if config.get("compilation_cache", True):
    enable_compilation_cache(workdir)
  todo = [(arm, s) for s in seeds for arm in arms]  # seed-major: every arm has a pair early
  done_before = sum(os.path.exists(run_path(workdir, a, s)) for a, s in todo)
  if report_only:
    todo = [(a, s) for a, s in todo if os.path.exists(run_path(workdir, a, s))]
    if not todo:
      raise DemoError(f"--report_only: no finished run in {workdir}/runs for these arms and seeds")
  results: dict[str, list] = {}
  shared: dict[int, Mapping] = {}
  started, ran = time.perf_counter(), 0
  for i, (arm, seed) in enumerate(todo):
    fresh = not os.path.exists(run_path(workdir, arm, seed))
    cfg = seed_config(config, seed, vary)
    if (fresh or _lacks_teacher(run_path(workdir, arm, seed), arm)) and seed not in shared:
      seed_arms = [a for a, s in todo if s == seed]
      shared[seed] = shared_stages(cfg, shared_dir(workdir, seed, vary), seed_arms, log)
    results.setdefault(arm.name, []).append(
      run_one(cfg, workdir, arm, seed, shared.get(seed, {}), epochs, vary)
    )
    ran += fresh
    left = sum(not os.path.exists(run_path(workdir, a, s)) for a, s in todo[i + 1 :])
    eta = (time.perf_counter() - started) / ran * left if ran else 0.0
    log(
      f"[study] {i + 1}/{len(todo)} {arm.name} seed {seed}: "
      f"{100 * results[arm.name][-1]['accuracy']:.1f} % "
      f"({'ran' if fresh else 'cached'}; {left} to run, ~{eta / 60:.0f} min left)"
    )
  rows = summarize(arms, results, samples=samples)
  counts = sorted({len(r["qids"]) for runs in results.values() for r in runs})
  questions = (
    f"{counts[0]} questions"
    if len(counts) == 1
    else f"{counts[0]}-{counts[-1]} questions per world"
  )
  out = {
    "rows": rows,
    "seeds": sorted({s for _, s in todo}),
    "epochs": epochs,
    "vary": vary,
    "questions": questions,
    "runs_cached": done_before,
    "seconds": round(time.perf_counter() - t0, 1),
  }
  write_json(os.path.join(workdir, "study.json"), out)
  table = markdown(rows, questions)
  with open(os.path.join(workdir, "study.md"), "w") as f:
    f.write(table + "\n")
  svg = gain_plot_svg(rows)
  if svg:
    with open(os.path.join(workdir, "study_gain.svg"), "w") as f:
      f.write(svg)
  log(table)
  return out
