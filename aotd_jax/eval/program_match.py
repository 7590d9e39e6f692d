"""Program generation against STAR's annotated programs: our choice of metric.

The paper reports program-generation results on STAR without saying how a generated Python
program is compared with STAR's `question_program`, which is a list of functional steps
(`[{"function": "Filter_Actions_with_Verb", "value_input": ["tidy"]}, ...]`, postfix order)
over a situation graph, not Python. We compare the two as sequences of normalised steps:

* a STAR step maps to one of a few step kinds by its function (`STAR_STEPS`); the steps that
  only set up the scene graph or combine sets (`Situations`, `Actions`, `Unique`, `Equal`, ...)
  have no counterpart among the agent's tools and are dropped; a function not in the table
  becomes its own kind (`star:<name>`), which no generated step matches, and is reported;
* a generated program's steps are its calls of the agent's tools (`TOOL_STEPS`), in execution
  order (arguments before the call, statements in order); `select_answer`, which STAR encodes
  in each choice's own program, is dropped.

Three numbers per question, averaged over the questions whose annotated program has at least
one step: `step_exact` (the kind sequences are equal), `step_f1` (F1 of the two multisets of
kinds) and `step_edit` (1 - Levenshtein distance / the longer length). Argument values (verbs,
objects) are not compared: STAR's are class names, the agent's free text.
"""

from __future__ import annotations

import ast
import collections
from typing import Any, Mapping, Sequence

# STAR's program modules (its program executor's table) -> step kind; None: dropped.
STAR_STEPS: Mapping[str, str | None] = {
  "Situations": None,
  "Actions": None,
  "Objs": None,
  "Rels": None,
  "Unique": None,
  "Unique_Objects": None,
  "Unique_Verbs": None,
  "Equal": None,
  "Union": None,
  "Belong_to": None,
  "Except": None,
  "Filter_Actions_with_Verb": "action",
  "Filter_Actions_with_Obj": "action",
  "Filter_Objs_by_Verb": "action",
  "Filter_Situations_with_Obj": "object",
  "Filter_Situations_with_Rel": "object",
  "Filter_After_Actions": "time",
  "Filter_Before_Actions": "time",
  "Query_Objs": "query_objects",
  "Query_Actions": "query_actions",
  "Query_Verbs": "query_actions",
  "Query_Earliest_Action": "query_actions",
  "Query_Latest_Action": "query_actions",
}

# The agent's tools (experts/tools.py) -> step kind; None: dropped.
TOOL_STEPS: Mapping[str, str | None] = {
  "Filter_frames_with_act": "action",
  "Filter_frames_with_obj": "object",
  "Find": "object",
  "exist": "object",
  "Count": "object",
  "trim": "time",
  "Query_Objs": "query_objects",
  "Query_Actions": "query_actions",
  "Video_summary": "summary",
  "select_answer": None,
}


def star_steps(program: Sequence[Any]) -> tuple[list[str], list[str]]:
  """(step kinds, functions not in `STAR_STEPS`) of a STAR list-form program.

  Raises:
    ValueError: a step that is not a `{"function": str, ...}` mapping (naming its index).
  """
  if not isinstance(program, (list, tuple)):
    raise ValueError(f"a STAR program is a list of steps, not {type(program).__name__}")
  kinds, unknown = [], []
  for i, step in enumerate(program):
    name = step.get("function") if isinstance(step, Mapping) else None
    if not isinstance(name, str):
      raise ValueError(
        f"step {i} of the STAR program is not a {{'function': name}} mapping: {step!r:.80}"
      )
    if name not in STAR_STEPS:
      unknown.append(name)
      kinds.append(f"star:{name}")
    elif STAR_STEPS[name] is not None:
      kinds.append(STAR_STEPS[name])
  return kinds, unknown


class _Calls(ast.NodeVisitor):
  """Tool calls in execution order: a call's arguments are visited before the call."""

  def __init__(self):
    self.names: list[str] = []

  def visit_Call(self, node: ast.Call) -> None:
    self.generic_visit(node)
    if isinstance(node.func, ast.Name):
      self.names.append(node.func.id)


def python_steps(source: str) -> list[str] | None:
  """Step kinds of a generated Python program; None when it does not parse."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return None
  calls = _Calls()
  calls.visit(tree)
  return [TOOL_STEPS[n] for n in calls.names if TOOL_STEPS.get(n) is not None]


def step_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
  """F1 of the multisets of step kinds (1.0 when both are empty)."""
  if not pred and not gold:
    return 1.0
  common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
  if not common:
    return 0.0
  precision, recall = common / len(pred), common / len(gold)
  return 2 * precision * recall / (precision + recall)


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
  """Levenshtein distance between two sequences (insert, delete, substitute: cost 1)."""
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


def step_scores(pred: Sequence[str] | None, gold: Sequence[str]) -> dict[str, float]:
  """`step_exact`, `step_f1`, `step_edit` of generated steps (None: nothing usable was
  generated, all 0) against annotated ones."""
  if pred is None:
    return {"step_exact": 0.0, "step_f1": 0.0, "step_edit": 0.0}
  longest = max(len(pred), len(gold))
  return {
    "step_exact": float(list(pred) == list(gold)),
    "step_f1": step_f1(pred, gold),
    "step_edit": 1.0 - edit_distance(pred, gold) / longest if longest else 1.0,
  }
