"""The two-step CoT filter (AoTD sec. 3.3) and its pass-rate counts.

Step 1, execution outcome: the program's answer must be right — for multiple choice the
predicted choice (by letter or by normalised text) must be the gold one; for open-ended
questions a normalised match, else the LLM judge (`data/prompts/judge_answer.txt`).
Step 2, logic: the LLM judge says whether the rationale is step-by-step and helpful
(`data/prompts/judge_logic.txt`; Yes/No/True/False parsed robustly), or offline the rule
judge checks that the rationale states the trace's evidence and ends in the answer.
Only CoTs that pass both are kept; `FilterStats` counts every step.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any, Mapping, Sequence

from aotd_jax.agent import cot, programs

_ARTICLES = {"a", "an", "the"}
_LETTER = re.compile(
  r"^\s*(?:\**\s*)?(?:(?:the\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*)?[(\[]?([A-Za-z])[)\].:]?"
  r"(?=[\s*]|$)",
  re.I,
)
_YES_NO = re.compile(r"\b(yes|no|true|false|correct|incorrect|y|n)\b", re.I)
_POSITIVE = {"yes", "true", "correct", "y"}


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One filter decision: whether it passed, why, and who decided (rule, match, llm)."""

  passed: bool
  reason: str
  by: str

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def normalise(text: Any) -> str:
  """Lower case, no punctuation, no articles, single spaces: 'The pillow.' -> 'pillow'."""
  text = str(text or "").lower().translate(str.maketrans(string.punctuation, " " * 32))
  return " ".join(w for w in text.split() if w not in _ARTICLES)


def choice_index(prediction: Any, choices: Sequence[str]) -> int | None:
  """Which choice a prediction names: by letter ('B', '(B)', 'Answer: B') or by text.

  Text matches are exact after `normalise`, else the one choice whose text the prediction
  contains (when exactly one does). None when the prediction names no choice or several.
  """
  if isinstance(prediction, int) and not isinstance(prediction, bool):
    return prediction if 0 <= prediction < len(choices) else None
  text = str(prediction or "").strip()
  norm = normalise(text)
  by_text = [i for i, c in enumerate(choices) if normalise(c) == norm]
  if len(by_text) == 1:
    return by_text[0]
  match = _LETTER.match(text)
  if match:
    index = ord(match.group(1).upper()) - ord("A")
    rest = text[match.end() :].strip()
    # "A" alone, or "(B) the pillow" whose text agrees (or is absent) — not the word "A ...".
    if 0 <= index < len(choices) and (
      not rest
      or normalise(rest) == normalise(choices[index])
      or not match.group(0).strip().isalpha()
    ):
      return index
  contained = [
    i
    for i, c in enumerate(choices)
    if normalise(c) and re.search(rf"\b{re.escape(normalise(c))}\b", norm)
  ]
  return contained[0] if len(contained) == 1 else None


def parse_yes_no(reply: Any) -> bool | None:
  """Yes/No, True/False, Correct/Incorrect (any case, markdown, chatter); None if neither."""
  match = _YES_NO.search(str(reply or ""))
  return None if match is None else match.group(1).lower() in _POSITIVE


def gold_index(choices: Sequence[str], answer: str, answer_index: int | None) -> int | None:
  """The gold choice: `answer_index` when given, else the choice matching `answer`."""
  if answer_index is not None:
    return int(answer_index)
  return choice_index(answer, choices)


def check_answer(
  prediction: Any, choices: Sequence[str], answer: str, answer_index: int | None = None
) -> Verdict | None:
  """Step 1 without an LLM. None when only the judge can decide (open-ended, no match)."""
  if prediction is None:
    return Verdict(False, "program returned no answer", "rule")
  if choices:
    gold = gold_index(choices, answer, answer_index)
    got = choice_index(prediction, choices)
    if got is None:
      return Verdict(False, f"prediction {str(prediction)[:80]!r} names no single choice", "match")
    letter = chr(ord("A") + got)
    return Verdict(
      got == gold,
      f"predicted ({letter}), gold ({chr(ord('A') + gold) if gold is not None else '?'})",
      "match",
    )
  if normalise(prediction) == normalise(answer):
    return Verdict(True, "normalised match", "match")
  return None


def judge_answers(
  llm, items: Sequence[tuple[str, str, Any]], *, max_new_tokens: int = 8
) -> list[Verdict]:
  """Step 1 for open-ended (question, answer, prediction) by the LLM judge."""
  if not items:
    return []
  template = programs.read_prompt_file("judge_answer.txt")
  prompts = [template.format(question=q, answer=a, prediction=p) for q, a, p in items]
  replies = llm.complete(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
  return [_judged(r) for r in replies]


def _judged(reply: Any) -> Verdict:
  said = parse_yes_no(reply)
  if said is None:
    return Verdict(False, f"judge reply unparsable: {str(reply)[:60]!r}", "llm")
  return Verdict(said, "judge: yes" if said else "judge: no", "llm")


JUDGE_PARSES = ("lenient", "exact_true")


def judge_logic(
  llm,
  items: Sequence[tuple[str, Sequence[str], str]],
  *,
  max_new_tokens: int = 8,
  parse: str = "lenient",
) -> list[Verdict]:
  """Step 2 by the LLM judge for (question, choices, rationale): step-by-step and helpful?

  `parse="lenient"` (ours) asks for Yes/No and reads yes/no/true/false anywhere in the reply;
  `"exact_true"` (the official release) asks for True/False and keeps a CoT only when the
  reply is exactly "True" (surrounding whitespace aside).
  """
  if parse not in JUDGE_PARSES:
    raise ValueError(f"judge parse {parse!r} not in {JUDGE_PARSES}")
  if not items:
    return []
  name = "judge_logic.txt" if parse == "lenient" else "judge_logic_official.txt"
  template = programs.read_prompt_file(name)
  prompts = [
    template.format(question=q, choices=programs.format_choices(c) or "(open-ended)", rationale=r)
    for q, c, r in items
  ]
  replies = llm.complete(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
  if parse == "exact_true":
    return [
      Verdict(
        str(r).strip() == "True",
        "judge: True"
        if str(r).strip() == "True"
        else f"judge reply is not exactly True: {str(r)[:60]!r}",
        "llm",
      )
      for r in replies
    ]
  return [_judged(r) for r in replies]


def rule_judge(rationale: str, trace: Any, answer: Any, *, min_steps: int = 2) -> Verdict:
  """Step 2 offline: the rationale has steps, states the trace's evidence, ends in the answer."""
  text = (rationale or "").strip()
  sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
  if len(sentences) < min_steps:
    return Verdict(False, f"{len(sentences)} sentence(s), need {min_steps} steps", "rule")
  missing = cot.missing_evidence(text, trace)
  if missing:
    return Verdict(
      False, f"rationale omits {len(missing)} piece(s) of evidence, e.g. {missing[0]}", "rule"
    )
  if normalise(answer) not in normalise(sentences[-1]):
    return Verdict(False, f"last sentence does not give the answer {str(answer)[:60]!r}", "rule")
  return Verdict(True, "steps, evidence and answer present", "rule")


@dataclasses.dataclass
class FilterStats:
  """Pass counts at each step: questions -> program parsed -> executed -> answer -> logic.

  `refused`: questions whose prompt the LLM server refused (HTTP 400 / 413 / 422, a record's
  `verdicts.refused`), counted apart from the programs that did not parse so that a user sees
  why they were lost (e.g. prompts longer than the server's context); they never count as
  parsed, whatever stage's prompt was refused.
  """

  total: int = 0
  parsed: int = 0
  executed: int = 0
  answer_passed: int = 0
  logic_passed: int = 0
  refused: int = 0

  def add(
    self,
    *,
    parsed: bool,
    executed: bool,
    answer_passed: bool,
    logic_passed: bool,
    refused: bool = False,
  ) -> None:
    self.total += 1
    if refused:
      self.refused += 1
      return
    self.parsed += bool(parsed)
    self.executed += bool(parsed and executed)
    self.answer_passed += bool(parsed and executed and answer_passed)
    self.logic_passed += bool(parsed and executed and answer_passed and logic_passed)

  def add_record(self, record: Mapping) -> None:
    """Counts one job record (its `verdicts` block)."""
    v = record.get("verdicts", {})
    self.add(
      parsed=v.get("parsed", False),
      executed=v.get("executed", False),
      answer_passed=v.get("answer", {}).get("passed", False),
      logic_passed=v.get("logic", {}).get("passed", False),
      refused=bool(v.get("refused")),
    )

  @property
  def parse_failed(self) -> int:
    """Questions whose reply held no program that parses (refused prompts not included)."""
    return self.total - self.refused - self.parsed

  @property
  def kept(self) -> int:
    return self.logic_passed

  def rates(self) -> dict[str, float]:
    """Pass rate of each step over all questions, and the final keep rate."""
    n = max(self.total, 1)
    return {
      "parsed": self.parsed / n,
      "executed": self.executed / n,
      "answer": self.answer_passed / n,
      "logic": self.logic_passed / n,
      "logic_given_answer": self.logic_passed / max(self.answer_passed, 1),
      "refused": self.refused / n,
    }

  def to_dict(self) -> dict:
    return {
      **dataclasses.asdict(self),
      "parse_failed": self.parse_failed,
      "kept": self.kept,
      "rates": self.rates(),
    }

  def summary(self) -> str:
    r = self.rates()
    return (
      f"parsed {r['parsed']:.0%} exec {r['executed']:.0%} answer {r['answer']:.0%} "
      f"logic {r['logic']:.0%} (kept {self.kept})"
      + (f"; {self.refused} refused by the LLM server" if self.refused else "")
    )
