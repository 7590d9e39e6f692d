"""Every number `launch.evaluate` reports, computed from per-question outputs.

A run writes one row per question (`{"qid", "output", "likelihood_output", "frame_ids",
"seconds", "new_tokens", "likelihood_seconds"}`, whichever it produced); `score_rows` turns
rows into the reported numbers (accuracy, grounding, and the efficiency per question: seconds
and generated tokens) and `read_rows`
reads them back from a run's `--out` file, so a run can be re-scored (another `--parse`, a
judge) without the student. Which paper number comes from which key is listed in
docs/evaluation.md.
"""

from __future__ import annotations

import json
from typing import Callable, Mapping, Sequence

from aotd_jax.data.annotations import VideoQA
from aotd_jax.eval import open_ended, star_grounding, student

ROW_KEYS = ("output", "likelihood_output")


def read_rows(path: str, records: Sequence[VideoQA]) -> tuple[dict, list[dict]]:
  """(the run's header, its rows in the order of `records`) from a `launch.evaluate --out`
  file. ValueError naming the file and the row or question when the file is not one, a row
  has no known qid, or a question of `records` has no row."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    rows = data["outputs"]
    if not isinstance(rows, list):
      raise TypeError("'outputs' is not a list")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a launch.evaluate --out file with 'outputs' ({e})") from e
  by_qid: dict[str, dict] = {}
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or "qid" not in row:
      raise ValueError(f"{path}: outputs[{i}] has no qid")
    if not any(k in row for k in ROW_KEYS):
      raise ValueError(f"{path}: outputs[{i}] (qid {row['qid']!r}) has none of {ROW_KEYS}")
    by_qid[str(row["qid"])] = row
  missing = [r.qid for r in records if str(r.qid) not in by_qid]
  if missing:
    raise ValueError(
      f"{path}: no output for {len(missing)} of {len(records)} questions "
      f"(first: qid {missing[0]!r}); re-score with the same --annotations/--limit"
    )
  header = {k: v for k, v in data.items() if k != "outputs"}
  return header, [by_qid[str(r.qid)] for r in records]


def _column(rows: Sequence[Mapping], key: str) -> list[str] | None:
  if not any(key in row for row in rows):
    return None
  for row in rows:
    if key not in row:
      raise ValueError(f"question {row.get('qid')!r} has no {key!r} while others do")
  return [str(row[key]) for row in rows]


def _numbers(rows: Sequence[Mapping], key: str) -> list[float] | None:
  if not any(key in row for row in rows):
    return None
  out = []
  for row in rows:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ValueError(
        f"question {row.get('qid')!r}: {key!r} is {value!r}, not a number >= 0"
        + ("" if key in row else " (others have one)")
      )
    out.append(float(value))
  return out


def efficiency(
  rows: Sequence[Mapping], seconds_key: str = "seconds", tokens_key: str | None = "new_tokens"
) -> dict | None:
  """The paper's efficiency from per-question rows: mean (and median) seconds per question
  and, for generated replies, mean new tokens per question and tokens per second; None when
  the rows carry no `seconds_key`. A batched run's rows share their batch's time equally, and
  the first batch includes compilation: the median is the steady figure."""
  import statistics

  seconds = _numbers(rows, seconds_key)
  if seconds is None:
    return None
  out = {
    "questions": len(seconds),
    "seconds": round(sum(seconds), 6),
    "seconds_per_question": sum(seconds) / max(len(seconds), 1),
    "seconds_per_question_median": statistics.median(seconds) if seconds else 0.0,
  }
  tokens = _numbers(rows, tokens_key) if tokens_key else None
  if tokens is not None:
    out.update(
      new_tokens=int(sum(tokens)),
      new_tokens_per_question=sum(tokens) / max(len(tokens), 1),
      tokens_per_second=sum(tokens) / sum(seconds) if sum(seconds) > 0 else None,
    )
  return out


def grounding(
  records: Sequence[VideoQA], rows: Sequence[Mapping], frame_numbers: str = "sampled"
) -> dict:
  """Box / window IoU of the rationales (`output`) against STAR's key frames, the student's
  frames of each question being its row's `frame_ids` (source frame ids)."""
  pairs = [(r, row) for r, row in zip(records, rows) if r.meta.get("situations")]
  if not pairs:
    return {
      "box_iou": None,
      "window_iou": None,
      "questions": 0,
      "note": "no record carries STAR situations",
    }
  truths = []
  for r, row in pairs:
    if not isinstance(row.get("frame_ids"), list):
      raise ValueError(
        f"question {r.qid!r}: its row has no frame_ids (the source frame ids of "
        "the student's frames), needed for rationale grounding"
      )
    truths.append(star_grounding.star_truth(r.meta["situations"], row["frame_ids"], frame_numbers))
  out = student.grounding([str(row["output"]) for _, row in pairs], truths)
  return {**out, "questions": len(pairs), "frame_numbers": frame_numbers}


def score_rows(
  records: Sequence[VideoQA],
  rows: Sequence[Mapping],
  *,
  mode: str = "answer",
  parse: str = "official",
  seed: int = 0,
  frame_numbers: str = "sampled",
  judge=None,
  judge_batch_size: int = 16,
  on_judgements: Callable[[list], None] | None = None,
  judge_log: open_ended.JudgeLog | None = None,
) -> dict:
  """The numbers of a run from its rows.

  `output` (generated replies): accuracy under `parse` (answer mode; rationale mode reads the
  stated answer with `ours`), open-ended exact match and, with a `judge` LLM, the judge's
  accuracy and 0-5 score; rationale mode adds `rationale_grounding`. `likelihood_output`
  (closed-set picks) gives the `likelihood` accuracy. Rows with `seconds` / `new_tokens`
  (`likelihood_seconds`) add `efficiency` to the result (its `likelihood` part). `on_judgements`
  receives the judge's per-question replies. With `judge_log`, each batch's judgements are
  appended to it as they come and those it already holds (an earlier, stopped run's) are not
  sent to the judge again (`open_ended.JudgeLog`; ValueError when another judge wrote it).
  """
  if len(records) != len(rows):
    raise ValueError(f"{len(records)} questions but {len(rows)} rows")
  generated = _column(rows, "output")
  closed = _column(rows, "likelihood_output")
  result: dict = {}
  if generated is not None:
    result = student.score(
      records, generated, parse="ours" if mode == "rationale" else parse, seed=seed
    )
    oe = [(r, o) for r, o in zip(records, generated) if not r.choices]
    if oe and judge is not None:
      judged = open_ended.judge_answers(
        [
          {"qid": r.qid, "question": r.question, "answer": r.answer, "prediction": o} for r, o in oe
        ],
        judge,
        batch_size=judge_batch_size,
        done=judge_log.load() if judge_log is not None else None,
        on_batch=judge_log.append if judge_log is not None else None,
      )
      result["open_ended"].update(
        judge_accuracy=judged["accuracy"],
        judge_score=judged["score"],
        judge_unparsed=judged["unparsed"],
      )
      if on_judgements is not None:
        on_judgements(judged["judgements"])
    if mode == "rationale":
      result["rationale_grounding"] = grounding(records, rows, frame_numbers)
    eff = efficiency(rows)
    if eff is not None:
      result["efficiency"] = eff
  if closed is not None:
    likelihood = student.score(records, closed, parse="ours")
    eff = efficiency(rows, "likelihood_seconds", None)
    if eff is not None:
      likelihood["efficiency"] = eff
    if generated is None:
      result = likelihood
    else:
      result["likelihood"] = likelihood
  return result
