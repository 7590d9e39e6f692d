"""A judge that checks a CoT against its question: the toy world's stand-in for the LLM judge.

The rule judge (`aotd_jax.agent.filters.rule_judge`) checks that a rationale is well formed
and states its trace's evidence, so it keeps a CoT that reasons about the wrong object and
lands on the right letter by chance ("What happened right after the blue triangle
disappeared?" answered by "Looking for when the green circle disappears ..."). The paper's
LLM judge drops those. This judge does it by rule: every object the question names ("the
blue triangle") and every event it names ("disappeared") must appear both in the program's
tool calls (their queries and results) and in the rationale; any event form counts
(disappear / disappears / disappeared).

`judged_cots` applies it on top of the CoT job's answer and rule-judge verdicts and writes
the CoTs that pass as a JSONL set beside the job's records (the `config.agent.rationale_judge`
switch of the demo, and the study's `judge="rationale"` arms).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

from aotd_jax.projects.toyworld.render import ACTIONS, COLOURS, PAST, PRESENT, SHAPES

OBJECTS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
# action -> every form a question, a query or a rationale may use
EVENT_FORMS = {a: (a, PAST[a], PRESENT[a]) for a in ACTIONS}


def _words(text: str) -> str:
  return " " + re.sub(r"[^a-z0-9]+", " ", (text or "").lower()) + " "


def question_terms(question: str) -> tuple[list[str], list[str]]:
  """(objects, actions) the question names, e.g. (["blue triangle"], ["disappear"])."""
  words = _words(question)
  objects = [o for o in OBJECTS if f" {o} " in words]
  actions = [a for a, forms in EVENT_FORMS.items() if any(f" {f} " in words for f in forms)]
  return objects, actions


def missing_terms(question: str, text: str) -> list[str]:
  """The question's objects and actions that `text` does not name (any event form)."""
  words = _words(text)
  objects, actions = question_terms(question)
  missing = [o for o in objects if f" {o} " not in words]
  missing += [a for a in actions if not any(f" {f} " in words for f in EVENT_FORMS[a])]
  return missing


def check(question: str, trace: Mapping | None, rationale: str | None) -> tuple[bool, str]:
  """(passed, reason): the question's objects and events are in the trace and the rationale."""
  calls = json.dumps((trace or {}).get("calls", []))
  for where, text in (("trace", calls), ("rationale", rationale or "")):
    missing = missing_terms(question, text)
    if missing:
      return False, f"the {where} does not name {', '.join(missing)} (the question does)"
  return True, "the question's objects and events are in the trace and the rationale"


def judge_records(records: Sequence[Mapping]) -> list[tuple[Mapping, bool, str]]:
  """(record, passed, reason) for each record the answer and rule judges kept."""
  out = []
  for r in records:
    if not r.get("kept"):
      continue
    passed, reason = check(r["question"], r.get("trace"), r.get("rationale"))
    out.append((r, passed, reason))
  return out


def judged_cots(cots: Mapping[str, Any], name: str = "judged_rationale") -> dict:
  """The CoT set `cots` (a `cot_stage` summary) filtered again by `check`: writes
  `<its dir>/<name>.jsonl` (once) and returns the summary with `filtered_path` and
  `passed_judge` replaced (`passed_rule`: the rule judge's count, `judge`: "rationale")."""
  from aotd_jax.agent.job import RecordLog

  records_path = cots["records"]
  if not os.path.exists(records_path):
    raise FileNotFoundError(f"rationale judge: no CoT records at {records_path}")
  path = os.path.join(os.path.dirname(records_path), f"{name}.jsonl")
  counts = path + ".json"
  if not os.path.exists(counts):
    verdicts = judge_records(RecordLog(records_path).load())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      for r, passed, _ in verdicts:
        if passed:
          f.write(
            json.dumps(
              {
                "qid": r["qid"],
                "video_id": r["video_id"],
                "video_path": r["video_path"],
                "conversation": r["conversation"],
              }
            )
            + "\n"
          )
    os.replace(tmp, path)
    dropped = [{"qid": r["qid"], "reason": why} for r, ok, why in verdicts if not ok]
    with open(counts + ".tmp", "w") as f:
      json.dump(
        {"kept": sum(ok for _, ok, _ in verdicts), "judged": len(verdicts), "dropped": dropped},
        f,
        indent=1,
      )
    os.replace(counts + ".tmp", counts)
  with open(counts) as f:
    summary = json.load(f)
  return dict(
    cots,
    filtered_path=path,
    passed_judge=summary["kept"],
    passed_rule=cots["passed_judge"],
    judge="rationale",
    rationale_dropped=summary["dropped"][:5],
  )
