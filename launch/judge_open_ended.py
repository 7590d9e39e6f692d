r"""Judge a student's open-ended answers with an LLM (accuracy and 0-5 score, as the paper
reports for AGQA and ActivityNet-QA), from the per-question outputs of `launch.evaluate`.

  python -m launch.evaluate ... --format=activitynet_qa --out=W/eval_anetqa.json
  python -m launch.judge_open_ended --eval=W/eval_anetqa.json \
      --format=activitynet_qa --annotations=ANET/test_q.json \
      --llm=http://localhost:8000/v1 --model=gpt-3.5-turbo --record=W/judge_replies.jsonl \
      --out=W/judged_anetqa.json

`--replay=W/judge_replies.jsonl` instead of `--llm` re-scores a recorded run without the judge.
The output holds the accuracy, the mean score, the count of replies that could not be read and
every question's reply. While it runs, each batch's judgements are appended to
`<out>.rows.jsonl`: after a stop (the server gone, a kill) the same command sends only the
answers not judged yet (an answer whose prediction changed is judged again); another judge
(`--llm`/`--model`/`--replay`) into the same `--out` is refused.
"""

from __future__ import annotations

import json

from absl import app, flags

from aotd_jax.agent import llm as llm_lib
from aotd_jax.data import annotations, files
from aotd_jax.eval import open_ended
from aotd_jax.train.config_check import ConfigError
from launch import cli

# beside --out, the judgements as they are produced (one JSON line each)
ROWS_SUFFIX = ".rows.jsonl"

_EVAL = flags.DEFINE_string("eval", None, "JSON written by launch.evaluate --out (its outputs).")
_FORMAT = flags.DEFINE_enum(
  "format", "activitynet_qa", list(annotations.FORMATS), "Annotation format of --annotations."
)
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "The annotations the run evaluated.")
_LLM = flags.DEFINE_string("llm", "", "OpenAI-compatible base URL of the judge.")
_MODEL = flags.DEFINE_string("model", "gpt-3.5-turbo", "Served judge model name.")
_API_KEY_ENV = flags.DEFINE_string(
  "api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (if any)."
)
_REPLAY = flags.DEFINE_string("replay", "", "Replay judge replies recorded with --record.")
_RECORD = flags.DEFINE_string("record", "", "Append every judge reply to this JSONL file.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts per judge call.")
_OUT = flags.DEFINE_string("out", "", "Write the judged results as JSON here.")
flags.mark_flags_as_required(["eval", "annotations"])


def judge_items(eval_path: str, records) -> list[dict]:
  """`{"qid", "question", "answer", "prediction"}` per evaluated question; ValueError naming
  the file and the qid when an output has no annotation."""
  try:
    with open(eval_path, encoding="utf-8") as f:
      outputs = json.load(f)["outputs"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{eval_path}: not a launch.evaluate --out file with 'outputs' ({e})") from e
  by_qid = {str(r.qid): r for r in records}
  items = []
  for i, o in enumerate(outputs):
    qid = str(o.get("qid")) if isinstance(o, dict) else None
    if qid not in by_qid:
      raise ValueError(f"{eval_path}: outputs[{i}] qid {qid!r} is not in the annotations")
    r = by_qid[qid]
    items.append(
      {
        "qid": qid,
        "question": r.question,
        "answer": r.answer,
        "prediction": str(o.get("output", "")),
      }
    )
  return items


def make_judge():
  """The judge LLM from the flags (exactly one of --llm and --replay)."""
  if bool(_LLM.value) == bool(_REPLAY.value):
    raise app.UsageError("give exactly one of --llm (a judge server) and --replay (a recording)")
  if _REPLAY.value:
    if not files.isfile(_REPLAY.value):  # not a server: the LLM error's hint would mislead
      raise app.UsageError(f"--replay={_REPLAY.value}: no such file")
    judge = llm_lib.Replay(_REPLAY.value)
  else:
    judge = llm_lib.OpenAIChat(_LLM.value, _MODEL.value, api_key_env=_API_KEY_ENV.value)
  return llm_lib.Recording(judge, _RECORD.value) if _RECORD.value else judge


def main(argv):
  del argv
  judge = make_judge()
  if _OUT.value:
    cli.out_file(_OUT.value)
  items = judge_items(_EVAL.value, annotations.read(_FORMAT.value, _ANNOTATIONS.value))
  about = {"replay": _REPLAY.value} if _REPLAY.value else {"url": _LLM.value, "model": _MODEL.value}
  log = _OUT.value + ROWS_SUFFIX if _OUT.value else ""
  judge_log = open_ended.JudgeLog(log, about) if log else None
  try:
    done = judge_log.load() if judge_log else {}
  except ValueError as e:
    raise ConfigError(f"--out: {e}") from None
  if done:
    print(f"{log}: {len(done)} answers judged by an earlier run; resuming", flush=True)
  try:
    result = open_ended.judge_answers(
      items,
      judge,
      batch_size=_BATCH.value,
      done=done,
      on_batch=judge_log.append if judge_log else None,
    )
  except llm_lib.LLMError as e:
    kept = (
      f"; the answers judged so far are in {log}, and the same command resumes"
      if log
      else "; no --out: the answers judged so far are not kept"
    )
    raise llm_lib.LLMError(f"{e}{kept}") from None
  result["judge"] = about
  print(json.dumps({k: v for k, v in result.items() if k != "judgements"}, indent=1))
  if _OUT.value:
    files.write_text(_OUT.value, json.dumps(result, indent=1))


if __name__ == "__main__":
  cli.run(main)
