"""Open-ended answers judged by an LLM: the accuracy / score protocol the paper reports for
AGQA and ActivityNet-QA (the Video-ChatGPT protocol: the judge says whether a prediction
matches the correct answer and rates it 0-5).

The judge is any `aotd_jax.agent.llm` backend: an OpenAI-compatible server (GPT, or a local
vLLM / SGLang), a local Flax Llama, or `Replay` of a recorded run, so a judged evaluation can
be re-scored without the model. Every reply is kept with its question; a reply that cannot be
parsed counts as "no" with score 0 and is counted (`unparsed`), never dropped.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any, Callable, Mapping, Sequence

from aotd_jax.agent import programs

PROMPT_FILE = "judge_open_ended.txt"
_PRED = re.compile(r"""['"]?pred['"]?\s*:\s*['"]?(yes|no)\b""", re.I)
_SCORE = re.compile(r"""['"]?score['"]?\s*:\s*['"]?(\d+(?:\.\d+)?)""", re.I)


@dataclasses.dataclass(frozen=True)
class Judgement:
  """One judged answer: the judge's raw reply and what was read from it."""

  qid: str
  question: str
  answer: str
  prediction: str
  reply: str
  correct: bool
  score: float
  parsed: bool

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def judge_prompt(question: str, answer: str, prediction: str, template: str | None = None) -> str:
  """The judge's prompt for one answer (`data/prompts/judge_open_ended.txt`)."""
  template = template or programs.read_prompt_file(PROMPT_FILE)
  return template.format(
    question=question.strip(), answer=str(answer).strip(), prediction=str(prediction).strip()
  )


def parse_reply(reply: str) -> tuple[bool, float] | None:
  """`(correct, score)` from a judge reply, or None when it states neither verdict nor score.

  Reads a dict literal (`{'pred': 'yes', 'score': 4}`) first, then `pred: ... score: ...`
  anywhere in the text. Scores are clipped to [0, 5].
  """
  text = str(reply or "")
  match = re.search(r"\{[^{}]*\}", text)
  if match:
    try:
      value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      value = None
    if isinstance(value, Mapping) and str(value.get("pred", "")).lower() in ("yes", "no"):
      try:
        score = float(value.get("score"))
      except (TypeError, ValueError):
        score = None
      if score is not None:
        return str(value["pred"]).lower() == "yes", min(max(score, 0.0), 5.0)
  pred, score = _PRED.search(text), _SCORE.search(text)
  if pred and score:
    return pred.group(1).lower() == "yes", min(max(float(score.group(1)), 0.0), 5.0)
  return None


class JudgeLog:
  """The judgements of one judge, appended batch by batch to a JSONL file (`path`, local or
  any `etils.epath` path): a first line `{"judge": judge}` naming the judge, then one
  `Judgement.to_json()` per line. A run stopped midway (the server gone, a kill) keeps what
  was judged; `load()` gives it to `judge_answers(done=...)` on the rerun."""

  def __init__(self, path: str, judge: Mapping[str, Any]):
    self.path, self.judge = path, dict(judge)

  def load(self) -> dict[str, dict]:
    """{qid: judgement} of an earlier run ({} when there is none; a line cut short by the stop
    is skipped: its batch is judged again).

    Raises:
      ValueError: another judge wrote the file (its verdicts would be mixed with these).
    """
    from aotd_jax.data import files  # pylint: disable=g-import-not-at-top

    if not files.isfile(self.path):
      return {}
    done = {}
    for line in files.read_text(self.path).splitlines():
      try:
        entry = json.loads(line)
      except ValueError:
        continue
      if not isinstance(entry, dict):
        continue
      if "judge" in entry and entry["judge"] != self.judge:
        raise ValueError(
          f"{self.path} holds the judgements of another judge ({entry['judge']}, not "
          f"{self.judge}); give another output, or remove it to start again"
        )
      if "qid" in entry:
        done[str(entry["qid"])] = entry
    return done

  def append(self, judgements: Sequence[Mapping[str, Any]]) -> None:
    """Appends `judgements` (the judge's line first on a new file), flushed to disk
    (`files.append_text`; on a bucket the file is written again whole)."""
    from aotd_jax.data import files  # pylint: disable=g-import-not-at-top

    entries = [] if files.isfile(self.path) else [{"judge": self.judge}]
    files.append_text(self.path, "".join(json.dumps(e) + "\n" for e in [*entries, *judgements]))


def judge_answers(
  items: Sequence[Mapping[str, Any]],
  llm,
  *,
  batch_size: int = 16,
  max_new_tokens: int = 32,
  template: str | None = None,
  done: Mapping[str, Mapping[str, Any]] | None = None,
  on_batch: Callable[[list[dict]], None] | None = None,
) -> dict:
  """Judges `items` (`{"qid", "question", "answer", "prediction"}`) with `llm`.

  `done` holds judgements of an earlier run (`Judgement.to_json()` by qid): an item whose
  question, answer and prediction are the same is not sent again (another prediction, e.g.
  from a new evaluation, is). `on_batch` gets each judged batch's judgements as soon as they
  are read, so a caller can keep them before the next call to the judge.

  Returns `{"accuracy", "score", "num_questions", "unparsed", "judgements": [...]}`
  (judgements in the order of `items`): accuracy is the share judged "yes", score the mean
  rating (0-5).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  for i, it in enumerate(items):
    missing = [k for k in ("qid", "question", "answer", "prediction") if k not in it]
    if missing:
      raise ValueError(f"item {i} (qid {it.get('qid', '?')!r}) lacks {missing}")
  template = template or programs.read_prompt_file(PROMPT_FILE)
  judged: dict[int, Judgement] = {}
  todo = []
  for i, it in enumerate(items):
    old = (done or {}).get(str(it["qid"]))
    same = old is not None and all(
      str(old.get(k)) == str(it[k]) for k in ("question", "answer", "prediction")
    )
    if same:
      judged[i] = Judgement(**{f.name: old[f.name] for f in dataclasses.fields(Judgement)})
    else:
      todo.append(i)
  for start in range(0, len(todo), batch_size):
    chunk = todo[start : start + batch_size]
    prompts = [
      [
        {
          "role": "user",
          "content": judge_prompt(
            items[i]["question"], items[i]["answer"], items[i]["prediction"], template
          ),
        }
      ]
      for i in chunk
    ]
    replies = llm.complete(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    if len(replies) != len(chunk):
      raise ValueError(f"judge returned {len(replies)} replies for {len(chunk)} prompts")
    for i, reply in zip(chunk, replies):
      it = items[i]
      verdict = parse_reply(reply)
      correct, score = verdict if verdict is not None else (False, 0.0)
      judged[i] = Judgement(
        str(it["qid"]),
        str(it["question"]),
        str(it["answer"]),
        str(it["prediction"]),
        str(reply),
        bool(correct),
        float(score),
        verdict is not None,
      )
    if on_batch is not None:
      on_batch([judged[i].to_json() for i in chunk])
  out = [judged[i] for i in range(len(items))]
  n = len(out)
  return {
    "accuracy": sum(j.correct for j in out) / n if n else float("nan"),
    "score": sum(j.score for j in out) / n if n else float("nan"),
    "num_questions": n,
    "unparsed": sum(not j.parsed for j in out),
    "judgements": [j.to_json() for j in out],
  }
