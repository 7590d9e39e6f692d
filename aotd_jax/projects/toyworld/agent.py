"""The demo's agent: expert tools, the tiny LLM's programs, the sandbox, CoTs and the filter.

`cot_stage` runs the real CoT job (`aotd_jax.agent.job.CotJob`) on the train split, with the
program stage swapped for a `ProgramWriter` (the compact prompt the tiny program generator
was trained on, and a counted gold fallback), then writes one unfiltered CoT per executed
program for the `aotd_unfiltered` student.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Mapping, Sequence

import ml_collections

from aotd_jax.agent import cot, job, programs
from aotd_jax.projects.toyworld.common import DemoError, cached, read_split, trainer
from aotd_jax.projects.toyworld.oracle import PLUGIN


def tools_config(config, world_dir: str, experts_info: Mapping) -> ml_collections.ConfigDict:
  """The `experts.make_tools` config: trained models where present, oracles elsewhere."""
  import experts as experts_lib

  c = experts_lib.default_config()
  c.ground_truth.path = world_dir
  for role in ("detector", "grounder"):
    if experts_info[role]["source"] == "trained":  # the trainer's own binding of its output
      section = trainer("vision_experts", f"{role}_section")
      if section is None:
        raise DemoError(f"aotd_jax.projects.toyworld.vision_experts has no {role}_section()")
      c[role] = ml_collections.ConfigDict(section(experts_info[role]["path"]))
  if experts_info["qa"]["source"] == "trained":
    for role in ("action_recognizer", "video_qa"):
      c[role].kind, c[role].path = "llava", experts_info["qa"]["path"]
  if config.experts.selector == "llama" and experts_info["program"]["source"] == "trained":
    c.selector.kind, c.selector.path = "llama", experts_info["program"]["path"]
    c.selector.chat = False  # the tiny program generator has no chat template: plain text
  return c


def _compact_prompt() -> Callable[[str, Sequence[str]], str]:
  """The prompt the tiny program generator was trained on (language experts' own, if any)."""
  fn = trainer("language_experts", "program_prompt")
  if fn is not None:
    return fn
  return lambda q, c: (
    f"Question: {q}\nPossible answers: {programs.format_choices(c)}\n{programs.PROGRAM_SIGNATURE}\n"
  )


class ProgramWriter:
  """Writes one program per question with the tiny LLM; a reply that does not parse falls
  back to the annotation's gold program when the config allows it, and every fallback is
  appended to `fallback_log` (so resumed runs count them too)."""

  def __init__(
    self,
    llm,
    *,
    prompt: Callable[[str, Sequence[str]], str],
    max_new_tokens: int,
    fallback_to_gold: bool,
    fallback_log: str,
    gold_key: str = "question_program",
  ):
    self.llm, self.prompt, self.max_new_tokens = llm, prompt, max_new_tokens
    self.fallback_to_gold, self.fallback_log, self.gold_key = (
      fallback_to_gold,
      fallback_log,
      gold_key,
    )

  def __call__(self, batch) -> list[programs.ParsedProgram]:
    if self.llm is not None:
      prompts = [self.prompt(qa.question, qa.choices) for qa in batch]
      replies = self.llm.complete(prompts, max_new_tokens=self.max_new_tokens)
      parsed = [
        programs.parse_program(r)
        if programs.PROGRAM_NAME in r
        else programs.parse_program(r, prefix=programs.PROGRAM_SIGNATURE + "\n")
        for r in replies
      ]
    else:
      parsed = [programs.ParsedProgram(None, "no program generator") for _ in batch]
    out = []
    for qa, p in zip(batch, parsed):
      if not p.ok and self.fallback_to_gold and isinstance(qa.meta.get(self.gold_key), str):
        with open(self.fallback_log, "a") as f:
          f.write(json.dumps({"qid": qa.qid, "reason": p.error}) + "\n")
        p = programs.parse_program(qa.meta[self.gold_key])
      out.append(p)
    return out


@dataclasses.dataclass
class DemoCotJob(job.CotJob):
  """`CotJob` whose program stage is a `ProgramWriter` (compact prompt + counted fallback)."""

  writer: Callable | None = None

  def _programs(self, batch):
    if self.program_source == "gold" or self.writer is None:
      return super()._programs(batch)
    return self.writer(batch)


def build_agent(
  config,
  world_dir: str,
  experts_info: Mapping,
  sandbox,
  fallback_log: str,
  tools: Mapping[str, Callable] | None = None,
) -> DemoCotJob:
  """The agent of the CoT stage (and of the efficiency run): tools, program writer, filter.

  tools: the expert tools (`experts.make_tools`); default: those `tools_config` binds.
  """
  import experts as experts_lib

  a = config.agent
  if a.programs not in ("llm", "gold"):
    raise DemoError(f"config.agent.programs={a.programs!r}: expected 'llm' or 'gold'")
  generator = experts_info["program"]["source"] == "trained"
  if a.programs == "llm" and not generator and not a.fallback_to_gold:
    raise DemoError(
      "config.agent.programs='llm' needs a trained program generator "
      "(config.experts.program) or config.agent.fallback_to_gold=True"
    )
  if tools is None:
    tools = experts_lib.make_tools(tools_config(config, world_dir, experts_info), plugins=[PLUGIN])
  llm = None
  if a.programs == "llm" and generator:
    from aotd_jax.agent.llm import LocalLlama

    # static batches: each call brings `batch_size` prompts, which fit the rows, from one
    # thread, so continuous batching has no row to refill and costs more (benchmarks/RESULTS.md,
    # "Local Flax LLM"); greedy replies are the same both ways
    llm = LocalLlama(experts_info["program"]["path"], max_batch=a.batch_size, batching="static")
  writer = ProgramWriter(
    llm,
    prompt=_compact_prompt(),
    max_new_tokens=a.max_new_tokens,
    fallback_to_gold=a.fallback_to_gold,
    fallback_log=fallback_log,
  )
  video_dir = os.path.abspath(os.path.join(world_dir, "videos"))
  return DemoCotJob(
    tools=tools,
    make_args=clip_args(video_dir, a.max_frames),
    run_program=sandbox.run,
    program_llm=writer,
    program_source=a.programs,
    logic_judge=a.logic_judge,
    batch_size=a.batch_size,
    num_threads=a.sandbox_workers,
    timeout_s=a.timeout_s,
    writer=writer,
    video_path=lambda qa: os.path.join(video_dir, f"{qa.video_id}.mp4"),
  )


def clip_args(video_dir: str, max_frames: int) -> Callable:
  """qa -> `execute_command` arguments: the question's window of its clip as a `VideoClip`."""
  from experts.clip import clip_args as make_clip_args

  return make_clip_args(lambda qa: os.path.join(video_dir, f"{qa.video_id}.mp4"), max_frames)


def make_sandbox(config):
  from aotd_jax.agent.sandbox import Sandbox

  return Sandbox(num_workers=config.agent.sandbox_workers, memory_mb=config.agent.sandbox_memory_mb)


def _count_lines(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def unfiltered_cots(records: Sequence[Mapping], path: str) -> int:
  """Writes a CoT for every executed program (no filter), verbalised from its trace."""
  from aotd_jax.data import conversation

  n = 0
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in records:
      if not r["verdicts"].get("executed") or r.get("trace") is None:
        continue
      rationale = r.get("rationale") or cot.verbalise(r["trace"], r.get("prediction"))
      human = job.CONVERSATION_MEDIA + conversation.cot_user_text(r["question"], r["choices"])
      f.write(
        json.dumps(
          {
            "qid": r["qid"],
            "video_id": r["video_id"],
            "video_path": r["video_path"],
            "conversation": [
              {"from": "human", "value": human},
              {"from": "gpt", "value": rationale},
            ],
          }
        )
        + "\n"
      )
      n += 1
  os.replace(tmp, path)
  return n


def cot_stage(
  config,
  workdir: str,
  world_dir: str,
  experts_info: Mapping,
  *,
  tools: Mapping[str, Callable] | None = None,
  name: str = "cots",
) -> dict:
  """Runs the CoT job on the train split (resumable) into `workdir/name`; returns its paths
  and filter counts. tools: see `build_agent` (another teacher's tools, e.g. noisy oracles).

  With `config.agent.rationale_judge`, the kept CoTs are judged again against their question
  (`rationale_judge.judged_cots`): `filtered_path` / `passed_judge` are that set's.
  """
  out = os.path.join(workdir, name)
  summary = os.path.join(out, "summary.json")

  def compute():
    os.makedirs(out, exist_ok=True)
    questions = read_split(world_dir, "train")
    paths = job.JobPaths.for_shard(out, job.shard_name(0, 1))
    fallback_log = os.path.join(out, "fallbacks.jsonl")
    t0 = time.perf_counter()
    with make_sandbox(config) as sb:
      agent = build_agent(config, world_dir, experts_info, sb, fallback_log, tools)
      stats = agent.run(questions, paths, label="[cots] ", progress_every_s=30.0)
    records = job.RecordLog(paths.records).load()
    unfiltered = os.path.join(out, "unfiltered.jsonl")
    n_unfiltered = unfiltered_cots(records, unfiltered)
    d = stats.to_dict()
    return {
      "questions": d["total"],
      "programs_parsed": d["parsed"],
      "programs_ok": d["executed"],
      "passed_answer": d["answer_passed"],
      "passed_judge": d["logic_passed"],
      "unfiltered": n_unfiltered,
      "gold_fallbacks": _count_lines(fallback_log),
      "program_source": config.agent.programs,
      "records": paths.records,
      "filtered_path": paths.array_record,
      "unfiltered_path": unfiltered,
      "seconds": round(time.perf_counter() - t0, 2),
    }

  result = cached(summary, compute)
  if config.agent.get("rationale_judge", False):
    from aotd_jax.projects.toyworld.rationale_judge import judged_cots

    result = judged_cots(result)
  return result
