"""The resumable CoT generation job: questions -> programs -> traces -> rationales -> filter.

One shard of a dataset is processed in order, in batches (one LLM call per stage per batch);
with `CotJob(pipeline=True)` the stages overlap across batches (`CotJob.stages`), the records
being the same and written in the same order.
Every processed question — kept or not — becomes one JSON line in
`records-SSSSS-of-NNNNN.jsonl`, appended with one `write` + `flush` + `fsync`, so a kill at
any moment loses at most the line being written. On restart the log is read back, a partial
last line is cut off, the done question ids are skipped, and the run continues: the result
is the same records as an uninterrupted run, without duplicates. At the end the kept CoTs
are written as ArrayRecord (for Grain) and the pass rates as a stats JSON.

A record is AoTD's conversation format plus what produced it:
`{"qid", "video_id", "video_path", "start", "end", "type", "conversation": [{"from": "human",
"value": ...},
{"from": "gpt", "value": rationale (kept) or answer}], "kept", "program", "prediction",
"rationale", "rationale_source", "trace", "verdicts", "llm_replies", "timing"}`, and
`"manifest"` (the run's `manifest.json`, which names every backend and checkpoint) when the
launcher sets one, and `"video"`, the video's path under the job's video folder (`video_dir`;
the trainer joins it to its own `video_root`, so CoTs made on one machine train on another
whose videos lie elsewhere) when the launcher sets that folder. `llm_replies` keeps each LLM
stage's raw reply for the question
(`program`, `rewrite`, `answer_judge`, `logic_judge`), so a parse failure can be debugged, and
the raw replies tools noted while the program ran (`select_answer`: a list, one per call,
before the reply was snapped to an option).
Only `timing` varies between runs: the question's `seconds` (its share of its batch's work:
the stages' seconds, not the waits between them), each tool call's seconds, and the process's
memory when its batch finished its last stage (`rss_mb`,
`peak_rss_mb`: host; `device_mb`, `device_peak_mb`: the accelerators, where JAX reports them;
`aotd_jax.memory_stats`). `stats.json` sums them up under `efficiency` (`job.efficiency`):
the agent's time and peak memory per question, the paper's efficiency figure.
`start`/`end` are the question's window in seconds (None:
the whole video): the window the experts saw, so the student trains on the same frames.

The kept records — and only those — go to `cot-SSSSS-of-NNNNN.array_record` (one JSON record
each, an empty file when nothing was kept): the dataset `aotd_jax.data.pipeline.cot_source`
and the trainer read, globbed as `out_dir/cot-*.array_record`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import sys
import threading
import time
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence, TextIO

from aotd_jax import memory_stats
from aotd_jax.agent import cot, filters, programs
from aotd_jax.agent.llm_http import PromptRejected
from aotd_jax.agent.stages import StageTimes, run_stages
from aotd_jax.agent.trace import capture_replies, safe_str
from aotd_jax.data import conversation

CONVERSATION_MEDIA = "<video>\n"


class JobError(ValueError):
  """A job cannot start or resume (bad arguments, a corrupt record log); names the cause."""


# -- sharding ------------------------------------------------------------------------------------


def shard(
  items: Sequence[Any],
  shard_index: int,
  num_shards: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
) -> list[Any]:
  """This worker's share: `items[k::n]` for worker k of n = num_shards * process_count."""
  if not 0 <= shard_index < num_shards:
    raise JobError(f"--shard_index={shard_index} must be in [0, --num_shards={num_shards})")
  if not 0 <= process_index < process_count:
    raise JobError(f"process_index={process_index} must be in [0, {process_count})")
  return list(items[shard_index * process_count + process_index :: num_shards * process_count])


def shard_name(
  shard_index: int, num_shards: int, process_index: int = 0, process_count: int = 1
) -> str:
  """`00003-of-00008` for global worker 3 of 8 (shards x hosts)."""
  total = num_shards * process_count
  return f"{shard_index * process_count + process_index:05d}-of-{total:05d}"


_SPLIT = re.compile(r"^(?:records|cot|stats)-\d{5}-of-(\d{5})\.(?:jsonl|array_record|json)$")


def check_split(out_dir: str, name: str) -> None:
  """Refuses a worker whose split (`-of-NNNNN`) is not the one `out_dir`'s shards were made with.

  Another `--num_shards` gives every question a new shard: it would be processed again, and
  the trainer, which reads `cot-*.array_record`, would see its CoT twice.

  Raises:
    JobError: `out_dir` holds shard files of another split, naming one and both counts.
  """
  total = name.rpartition("-of-")[2]
  if not os.path.isdir(out_dir):
    return
  for f in sorted(os.listdir(out_dir)):
    m = _SPLIT.match(f)
    if m and m.group(1) != total:
      raise JobError(
        f"{os.path.join(out_dir, f)}: {out_dir} holds shards of a {int(m.group(1))}-worker "
        f"split and this worker is one of {int(total)}: with another --num_shards (or "
        "another number of hosts) every question would be done again and the trainer would "
        f"read its CoT twice. Rerun with that split ({int(m.group(1))} workers: --num_shards "
        "times the hosts) to resume that run, or use a new out_dir"
      )


def check_out_dir(out_dir: str) -> None:
  """Refuses an output folder the append-only record log cannot use.

  Raises:
    JobError: `out_dir` is a URL (`gs://...`): each record is appended and fsynced, which
      needs a local or mounted folder.
  """
  if "://" in out_dir:
    raise JobError(
      f"config.out_dir={out_dir}: the record log appends and fsyncs each record, "
      "which needs a local (or mounted) folder; write the shards there, copy them "
      "to the bucket, and merge from it (launch.merge_cots reads gs://)"
    )


# -- program values -------------------------------------------------------------------------------

MAX_ANSWER_CHARS = 2000


def answer_checked(ex):
  """`ex` with its value made a plain answer (str, int, float, bool or None; lone surrogates
  escaped), or failed when the program returned anything else (a set, bytes, complex, an
  array, a tool object, a huge int, a huge or self-referencing structure). Also bounds the
  error text and the printed output, so every record is small and JSON-able."""
  if ex.error is not None:
    ex.error = safe_str(str(ex.error), 1000)
  ex.stdout = safe_str(ex.stdout or "", 10_000)
  if not ex.ok:
    ex.value = None
    return ex
  v, t = ex.value, type(ex.value)
  if t is str:
    ex.value = safe_str(v, MAX_ANSWER_CHARS)
  elif t is int and -(1 << 63) <= v < (1 << 63) or t in (bool, float) or v is None:
    pass
  elif t.__module__ == "numpy" and getattr(v, "ndim", 1) == 0 and v.dtype.kind in "biuf":
    ex.value = v.item()
  else:
    what = f"an int of {v.bit_length()} bits" if t is int else f"a {t.__name__}"
    ex.ok, ex.value = False, None
    ex.error = f"program returned {what}, not an answer (a str, int, float, bool or None)"
  return ex


# -- the append-only record log -------------------------------------------------------------------


def unique_records(records: Sequence[dict]) -> tuple[list[dict], int]:
  """(the records with each question's first record only, how many later ones were dropped).

  A log holds a question twice when two workers with the same shard wrote it at once (the
  same command started again while the first still ran); both records answer the same
  question, and the CoTs, the pass rates and a merge must count it once.
  """
  seen, out = set(), []
  for record in records:
    if record["qid"] not in seen:
      seen.add(record["qid"])
      out.append(record)
  return out, len(records) - len(out)


def duplicates_note(path: str, dropped: int) -> str:
  """The warning for `dropped` repeated records in the log `path`."""
  return (
    f"{path}: {dropped} records repeat a question already in the log (two workers with the "
    "same --shard_index wrote it at once?); each question is counted once, its first record kept"
  )


class RecordLog:
  """An append-only JSONL file with one atomic, durable append per record."""

  def __init__(self, path: str):
    self.path = path
    self.duplicates = 0  # later records of a question already in the log, at the last load

  def load(self) -> list[dict]:
    """Reads the complete records, each question's first only (`unique_records`; how many
    were dropped is `self.duplicates`); cuts off a partial last line left by a kill.

    Raises:
      JobError: a complete line (not the last) is not a JSON object — naming file and line.
    """
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are an unfinished write
    if end < len(data):
      with open(self.path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    records = []
    for lineno, line in enumerate(data[:end].splitlines(), 1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise JobError(
          f"{self.path} line {lineno}: not JSON ({e.msg}); the record log is "
          "corrupt — move it away to start over"
        ) from None
      if not isinstance(record, dict) or "qid" not in record:
        raise JobError(f"{self.path} line {lineno}: not a record (an object with 'qid')")
      records.append(record)
    records, self.duplicates = unique_records(records)
    return records

  def append(self, record: Mapping) -> None:
    """Appends one record as one line: a single write, flushed and fsynced."""
    # backslashreplace: a lone surrogate in program text becomes its JSON escape (`\ud800`),
    # which json.loads reads back, instead of an encoding error that would stop the job.
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode(
      "utf-8", "backslashreplace"
    )
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      written = os.write(fd, line)
      if written != len(line):  # only on a full disk; the partial line is cut on resume
        raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
      os.fsync(fd)
    finally:
      os.close(fd)


# -- records --------------------------------------------------------------------------------------


def _verdict(v: filters.Verdict | None, skipped: str) -> dict:
  return v.to_dict() if v is not None else {"passed": False, "reason": skipped, "by": "skip"}


def make_record(
  qa,
  *,
  video_path: str | None,
  program: programs.ParsedProgram,
  execution,
  rationale: str | None,
  rationale_source: str | None,
  answer_verdict: filters.Verdict | None,
  logic_verdict: filters.Verdict | None,
  seconds: float,
  llm_replies: Mapping[str, str] | None = None,
  manifest: str | None = None,
  memory: Mapping[str, float] | None = None,
  video_dir: str = "",
) -> dict:
  """One job record (see the module docstring) for a processed `VideoQA`; `memory`: the
  `memory_stats.snapshot()` taken when its batch finished; `video_dir`: the folder of the
  videos, whose part of `video_path` the record's `video` leaves out."""
  trace = execution.to_trace(program.source).to_json() if execution is not None else None
  tool_seconds = []
  if trace is not None:
    trace.pop("seconds", None)
    for call in trace["calls"]:
      tool_seconds.append(call.pop("seconds", 0.0))
  kept = bool(answer_verdict and answer_verdict.passed and logic_verdict and logic_verdict.passed)
  if kept:
    human, gpt = conversation.cot_user_text(qa.question, qa.choices), rationale
  else:
    human = conversation.qa_user_text(qa.question, qa.choices)
    gpt = (
      conversation.answer_target(qa.choices, qa.answer, qa.answer_index)
      if (not qa.choices or qa.answer_index is not None)
      else qa.answer
    )
  root = video_dir.rstrip("/") + "/"
  relative = (
    {"video": video_path[len(root) :]}
    if video_dir and isinstance(video_path, str) and video_path.startswith(root)
    else {}
  )
  return {
    "qid": qa.qid,
    "video_id": qa.video_id,
    "video_path": video_path,
    **relative,
    "start": qa.start,
    "end": qa.end,
    "type": qa.meta.get("question_type") or qa.meta.get("type"),
    "question": qa.question,
    "choices": list(qa.choices),
    "answer": qa.answer,
    "conversation": [
      {"from": "human", "value": CONVERSATION_MEDIA + human},
      {"from": "gpt", "value": gpt},
    ],
    "kept": kept,
    "program": program.source,
    "prediction": execution.value if execution is not None and execution.ok else None,
    "rationale": rationale,
    "rationale_source": rationale_source,
    "trace": trace,
    "verdicts": {
      "parsed": program.ok,
      "parse_error": program.error,
      "repairs": list(program.repairs),
      "executed": bool(execution is not None and execution.ok),
      "execution_error": execution.error if execution is not None else None,
      "answer": _verdict(answer_verdict, "skipped: no program or failed execution"),
      "logic": _verdict(logic_verdict, "skipped: answer check failed"),
    },
    "llm_replies": dict(llm_replies or {}),
    **({"manifest": manifest} if manifest else {}),
    "timing": {"seconds": round(seconds, 4), "tool_seconds": tool_seconds, **dict(memory or {})},
  }


def efficiency(records: Iterable[Mapping]) -> dict:
  """The agent's efficiency over job records: seconds per question (mean, median) and the
  peak memory over the run (host RSS; the devices' where recorded), from each record's
  `timing`. Records without timings count for seconds 0 and no memory."""
  import statistics

  seconds, peaks = [], {}
  for record in records:
    timing = record.get("timing") or {}
    seconds.append(float(timing.get("seconds", 0.0)))
    for key in ("peak_rss_mb", "device_peak_mb"):
      if isinstance(timing.get(key), (int, float)):
        peaks[key] = max(peaks.get(key, 0.0), float(timing[key]))
  n = len(seconds)
  return {
    "questions": n,
    "seconds": round(sum(seconds), 4),
    "seconds_per_question": round(sum(seconds) / n, 4) if n else 0.0,
    "seconds_per_question_median": round(statistics.median(seconds), 4) if n else 0.0,
    **peaks,
  }


class CapturedLLM:
  """Wraps an LLM and keeps the replies of its latest `complete` call, in prompt order.

  Each stage of `CotJob` calls its LLM once per batch, from one thread, so `take()` after a
  stage is that stage's replies for the batch. The replies are kept per thread: stages that
  share an LLM and run at once (`CotJob.run` pipelined) each read their own.
  """

  def __init__(self, llm):
    self.llm = llm
    self._local = threading.local()

  @property
  def last(self) -> list[str]:
    return getattr(self._local, "last", [])

  def complete(self, prompts, **kwargs) -> list[str]:
    replies = self.llm.complete(prompts, **kwargs)
    self._local.last = [str(r) for r in replies]
    return replies

  def take(self) -> list[str]:
    """This thread's latest replies, cleared (a stage that makes no call then reads [])."""
    out, self._local.last = self.last, []
    return out


# -- broken backends -------------------------------------------------------------------------------

_TOOL_FAILURE = re.compile(r"tool (\w+) failed: (\w+): (.*)", re.S)
# Exceptions a tool raises for the program's own mistakes (bad arguments): not a broken backend.
PROGRAM_ERRORS = frozenset({"ToolError"})


def backend_failure(record: Mapping) -> tuple[str, str, str] | None:
  """(tool, exception type, message) when the record's program stopped because a tool's backend
  raised (a model, an LLM server, a missing chat template), not a `ToolError`; else None."""
  if record.get("verdicts", {}).get("executed") or not record.get("trace"):
    return None
  for call in reversed(record["trace"].get("calls", [])):
    m = _TOOL_FAILURE.match(call.get("error") or "")
    if m:
      return None if m.group(2) in PROGRAM_ERRORS else (m.group(1), m.group(2), m.group(3))
  return None


INPUT_ERROR = "cannot load inputs of "


def unloadable_inputs(records: Sequence[Mapping], min_failures: int) -> str | None:
  """Why a batch shows its videos are not where the job looks, or None: every question with a
  program (at least `min_failures`) failed to load its inputs (a missing or undecodable
  video). Such records would count as done on a rerun with the right folder."""
  parsed = [r for r in records if r.get("verdicts", {}).get("parsed")]
  errors = [str(r["verdicts"].get("execution_error") or "") for r in parsed]
  if min_failures < 1 or len(errors) < min_failures:
    return None
  if not all(e.startswith(INPUT_ERROR) for e in errors):
    return None
  return f"all {len(errors)} questions of the batch failed to load their inputs: {errors[0]}"


def broken_backend(records: Sequence[Mapping], min_failures: int) -> str | None:
  """Why a batch shows a broken expert backend, or None: every program that ran stopped on
  the same tool raising the same exception type, and there are at least `min_failures`."""
  ran = [r for r in records if r.get("verdicts", {}).get("parsed") and r.get("trace")]
  failures = [backend_failure(r) for r in ran]
  if min_failures < 1 or len(failures) < min_failures or None in failures:
    return None
  if len({(tool, kind) for tool, kind, _ in failures}) != 1:
    return None
  tool, kind, message = failures[0]
  return (
    f"all {len(failures)} programs of the batch stopped in {tool}, whose backend raised "
    f"{kind}: {safe_str(message, 300)}"
  )


# -- progress -------------------------------------------------------------------------------------


class Progress:
  """A one-line progress report: done/total, rate, ETA and running pass rates."""

  def __init__(
    self,
    total: int,
    done: int,
    stats: filters.FilterStats,
    *,
    label: str = "",
    stream: TextIO | None = None,
    every_s: float = 5.0,
  ):
    self.total, self.done, self.stats, self.label = total, done, stats, label
    self.stream, self.every_s = stream or sys.stderr, every_s
    self._t0, self._start_done, self._last = time.monotonic(), done, 0.0

  def line(self) -> str:
    elapsed = max(time.monotonic() - self._t0, 1e-9)
    rate = (self.done - self._start_done) / elapsed
    left = self.total - self.done
    eta = "0s" if left <= 0 else f"{left / rate:.0f}s" if rate > 0 else "?"
    pct = self.done / max(self.total, 1)
    return (
      f"{self.label}{self.done}/{self.total} ({pct:.0%}) {rate:.2f} q/s ETA {eta} | "
      f"{self.stats.summary()}"
    )

  def update(self, n: int = 1, *, force: bool = False) -> None:
    self.done += n
    now = time.monotonic()
    if force or now - self._last >= self.every_s or self.done == self.total:
      self._last = now
      print(self.line(), file=self.stream, flush=True)


# -- the job --------------------------------------------------------------------------------------


@dataclasses.dataclass
class JobPaths:
  """Where one shard's outputs go."""

  records: str
  array_record: str
  stats: str

  @classmethod
  def for_shard(cls, out_dir: str, name: str) -> "JobPaths":
    return cls(
      os.path.join(out_dir, f"records-{name}.jsonl"),
      os.path.join(out_dir, f"cot-{name}.array_record"),
      os.path.join(out_dir, f"stats-{name}.json"),
    )


class _InputError(Exception):
  """`make_args` failed for a question; the message names the question and its video."""


@dataclasses.dataclass
class _Batch:
  """One batch on its way through the stages; each stage fills its own fields."""

  questions: list
  args: list | None = None  # prefetched inputs (futures of the decode pool), or None
  parsed: list = dataclasses.field(default_factory=list)
  executions: list = dataclasses.field(default_factory=list)
  answers: list = dataclasses.field(default_factory=list)
  passing: list = dataclasses.field(default_factory=list)
  rationales: dict = dataclasses.field(default_factory=dict)
  replies: list = dataclasses.field(default_factory=list)
  stage_s: dict = dataclasses.field(default_factory=dict)
  stage_t0: float = 0.0

  def __post_init__(self):
    self.replies = [{} for _ in self.questions]

  def keep(self, stage: str, llm, indices: Sequence[int]) -> None:
    """Stores the replies of `llm`'s latest call (this thread's) under `stage`."""
    for i, reply in zip(indices, llm.take() if llm is not None else []):
      self.replies[i][stage] = reply


@dataclasses.dataclass
class CotJob:
  """Generates, executes, verbalises and filters CoTs for a list of questions.

  Attributes:
    tools: name -> callable (the expert tools; the program prompt documents them).
    make_args: `VideoQA -> {"video_clip", "query", "possible_answers"}` for `execute_command`.
    run_program: the sandbox (`aotd_jax.agent.run_program` or a `Sandbox.run`).
    program_llm: writes programs; None with `program_source="gold"`.
    cot_llm: rewrites traces; None uses the deterministic verbaliser.
    judge_llm: open-ended answer check and (with `logic_judge="llm"`) the logic check.
    program_source: "llm", or "gold" (the annotation's own program, `gold_program_key`).
    logic_judge: "rule" (offline) or "llm".
    judge_parse: "lenient" (Yes/No anywhere) or "exact_true" (the official: exactly "True").
    rewrite_prompt: "ours" or "official" (the program in the prompt; `cot.rewrite`).
    rewrite_fallback: "verbaliser" (ours: an LLM rationale missing a window or box is replaced)
      or "none" (the reply is kept as written, the official).
    examples: the few-shot programs (`programs.load_examples(dataset)`).
    video_path: `VideoQA -> path` written into each record (None if unknown).
    fail_fast_min: stop the run (`JobError`, the batch not written) when a batch of at least
      this many programs all stopped on one tool whose backend raised the same exception (a
      server down, a model that cannot load, a selector without a chat template), or all
      failed to load their inputs (videos not where the job looks): such a run would only fill
      the records with failures, which a rerun counts as done. 0: never.
    pipeline: `run` overlaps the stages across batches (`stages()`, one thread each): batch
      k+1's programs are written and its videos decoded while batch k's programs run and batch
      k-1's rationales are written and judged. The records are the same as without.
    max_batches_in_flight: with `pipeline`, batches between the input and the record log at
      once (bounds the decoded clips held in memory).
    decode_workers: with `pipeline`, threads that run `make_args` (decode each question's
      clip) ahead of execution; 0 decodes in the execution threads.
    llm_workers: with `pipeline`, batches each LLM stage (program, judges, rewrite) works on at
      once: 2 keeps an HTTP server busy while one batch waits for its slowest reply, and a
      local model's engine (`LocalLlama`, continuous batching) full. The records stay the same
      for deterministic LLMs (temperature 0) and for the engine's sampling (keyed per prompt);
      a `LocalLlama(batching="static")` samples with a key per call, whose order would vary.
    program_scope: a context manager factory entered around each program's execution, e.g.
      the experts' device scheduler's `program` (`experts.scheduler`), which counts the
      programs in flight to batch their expert calls when all of them are blocked on one.
  """

  tools: Mapping[str, Callable]
  make_args: Callable[[Any], Mapping[str, Any]]
  run_program: Callable[..., Any]
  program_llm: Any = None
  cot_llm: Any = None
  judge_llm: Any = None
  program_source: str = "llm"
  gold_program_key: str = "question_program"
  logic_judge: str = "rule"
  judge_parse: str = "lenient"
  rewrite_prompt: str = "ours"
  rewrite_fallback: str = "verbaliser"
  examples: str = ""
  batch_size: int = 8
  num_threads: int = 2
  timeout_s: float = 30.0
  max_new_tokens: int = 512
  temperature: float = 0.0
  video_path: Callable[[Any], str | None] = lambda qa: qa.meta.get("video_path")
  video_dir: str = ""
  manifest: str | None = None
  fail_fast_min: int = 4
  pipeline: bool = False
  max_batches_in_flight: int = 4
  decode_workers: int = 2
  llm_workers: int = 1
  times: StageTimes | None = None  # when set, each stage's seconds are added to it
  program_scope: Callable[[], ContextManager[Any]] | None = None

  def __post_init__(self):
    if self.program_source not in ("llm", "gold"):
      raise JobError(f"program_source={self.program_source!r}: expected 'llm' or 'gold'")
    if self.program_source == "llm" and self.program_llm is None:
      raise JobError("program_source='llm' needs a program LLM (config.program_llm)")
    if self.logic_judge not in ("rule", "llm"):
      raise JobError(f"logic_judge={self.logic_judge!r}: expected 'rule' or 'llm'")
    if self.logic_judge == "llm" and self.judge_llm is None:
      raise JobError("logic_judge='llm' needs a judge LLM (config.judge_llm)")
    if self.judge_parse not in filters.JUDGE_PARSES:
      raise JobError(f"judge_parse={self.judge_parse!r}: expected one of {filters.JUDGE_PARSES}")
    if self.rewrite_prompt not in cot.REWRITE_PROMPTS:
      raise JobError(
        f"rewrite_prompt={self.rewrite_prompt!r}: expected one of {sorted(cot.REWRITE_PROMPTS)}"
      )
    if self.rewrite_fallback not in cot.REWRITE_FALLBACKS:
      raise JobError(
        f"rewrite_fallback={self.rewrite_fallback!r}: expected one of {cot.REWRITE_FALLBACKS}"
      )
    if self.batch_size < 1:
      raise JobError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.max_batches_in_flight < 1 or self.decode_workers < 0 or self.llm_workers < 1:
      raise JobError(
        f"pipeline: max_batches_in_flight and llm_workers must be >= 1 and "
        f"decode_workers >= 0, got {self.max_batches_in_flight}, "
        f"{self.llm_workers} and {self.decode_workers}"
      )
    for role in ("program_llm", "cot_llm", "judge_llm"):
      llm = getattr(self, role)
      if llm is not None and not isinstance(llm, CapturedLLM):
        setattr(self, role, CapturedLLM(llm))

  # -- stages --
  # `process` runs them one after another on a batch; `run` with `pipeline=True` runs each in
  # its own thread (`aotd_jax.agent.stages`), so batch k+1's programs are written while batch
  # k's run and batch k-1's rationales are judged. Each stage takes and returns a `_Batch`
  # and touches only its own fields, in batch order, so both give the same records.

  def _programs(self, batch) -> list[programs.ParsedProgram]:
    if self.program_source == "gold":
      out = []
      for qa in batch:
        gold = qa.meta.get(self.gold_program_key)
        out.append(
          programs.parse_program(gold)
          if isinstance(gold, str)
          else programs.ParsedProgram(None, f"no gold program in meta[{self.gold_program_key!r}]")
        )
      return out
    return programs.generate_programs(
      self.program_llm,
      [(qa.question, qa.choices) for qa in batch],
      self.tools,
      examples=self.examples,
      max_new_tokens=self.max_new_tokens,
      temperature=self.temperature,
    )

  def _stage_programs(self, b: "_Batch") -> "_Batch":
    b.parsed = self._programs(b.questions)
    if self.program_source == "llm":
      b.keep("program", self.program_llm, range(len(b.questions)))
    return b

  def _inputs(self, qa) -> Mapping[str, Any]:
    """`make_args(qa)`; an error names the question and (when known) its video file."""
    try:
      return self.make_args(qa)
    except Exception as e:  # a missing or undecodable video fails this question only
      raise _InputError(self._input_error(qa, e)) from e

  def _input_error(self, qa, e: BaseException) -> str:
    text = f"{INPUT_ERROR}{qa.qid}: {type(e).__name__}: {safe_str(str(e), 200)}"
    try:
      path = self.video_path(qa)
    except Exception:  # noqa: BLE001 - the path is only named in the message
      path = None
    return text + (f" (video {path})" if path and str(path) not in text else "")

  def _execute(self, qa, program: programs.ParsedProgram, args=None):
    """(execution or None, the tools' noted replies) for one question; `args` is its inputs
    (a value, or a future of the decode pool), made here when None."""
    from aotd_jax.agent.sandbox import Execution

    if not program.ok:
      return None, []
    try:
      if args is None:
        args = self._inputs(qa)
      elif isinstance(args, concurrent.futures.Future):
        args = args.result()
    except _InputError as e:
      return Execution(ok=False, error=str(e)), []
    try:
      scope = self.program_scope() if self.program_scope else contextlib.nullcontext()
      with capture_replies() as noted, scope:
        ex = self.run_program(program.source, self.tools, args, timeout_s=self.timeout_s)
    except Exception as e:  # the job goes on whatever one program does
      return Execution(
        ok=False, error=f"sandbox failed: {type(e).__name__}: {safe_str(str(e), 200)}"
      ), []
    return answer_checked(ex), noted

  def _stage_execute(self, b: "_Batch") -> "_Batch":
    args = b.args if b.args is not None else [None] * len(b.questions)
    with concurrent.futures.ThreadPoolExecutor(max(1, self.num_threads)) as pool:
      done = list(pool.map(self._execute, b.questions, b.parsed, args))
    b.args = None  # the decoded clips can go
    b.executions = [ex for ex, _ in done]
    for i, (_, noted) in enumerate(done):  # tools' raw model replies (the selector's), per tool
      for note in noted:
        b.replies[i].setdefault(note["tool"], []).append(note["reply"])
    return b

  def _stage_answer_judge(self, b: "_Batch") -> "_Batch":
    to_judge = []
    for i, (qa, ex) in enumerate(zip(b.questions, b.executions)):
      verdict = None
      if ex is not None and ex.ok:
        verdict = filters.check_answer(ex.value, qa.choices, qa.answer, qa.answer_index)
        if verdict is None:
          if self.judge_llm is None:
            verdict = filters.Verdict(False, "open-ended mismatch and no judge LLM", "match")
          else:
            to_judge.append(i)
      b.answers.append(verdict)
    judged = filters.judge_answers(
      self.judge_llm,
      [(b.questions[i].question, b.questions[i].answer, b.executions[i].value) for i in to_judge],
    )
    b.keep("answer_judge", self.judge_llm, to_judge)
    for i, verdict in zip(to_judge, judged):
      b.answers[i] = verdict
    b.passing = [i for i, v in enumerate(b.answers) if v is not None and v.passed]
    return b

  def _stage_rewrite(self, b: "_Batch") -> "_Batch":
    qs, ex = b.questions, b.executions
    items = [
      (qs[i].question, qs[i].choices, ex[i].trace, ex[i].value, b.parsed[i].source)
      for i in b.passing
    ]
    if self.cot_llm is not None:
      b.rationales = dict(
        zip(
          b.passing,
          cot.rewrite(
            self.cot_llm, items, prompt=self.rewrite_prompt, fallback=self.rewrite_fallback
          ),
        )
      )
      b.keep("rewrite", self.cot_llm, b.passing)
    else:
      b.rationales = {
        i: (cot.verbalise(it[2], it[3]), "verbaliser") for i, it in zip(b.passing, items)
      }
    return b

  def _stage_logic_judge(self, b: "_Batch") -> list[dict]:
    if self.logic_judge == "llm":
      verdicts = filters.judge_logic(
        self.judge_llm,
        [(b.questions[i].question, b.questions[i].choices, b.rationales[i][0]) for i in b.passing],
        parse=self.judge_parse,
      )
      b.keep("logic_judge", self.judge_llm, b.passing)
      logic = dict(zip(b.passing, verdicts))
    else:
      logic = {
        i: filters.rule_judge(b.rationales[i][0], b.executions[i].trace, b.executions[i].value)
        for i in b.passing
      }
    seconds = (sum(b.stage_s.values()) + time.perf_counter() - b.stage_t0) / max(
      len(b.questions), 1
    )
    memory = memory_stats.snapshot()
    return [
      make_record(
        qa,
        video_path=self.video_path(qa),
        video_dir=self.video_dir,
        program=b.parsed[i],
        execution=b.executions[i],
        rationale=b.rationales.get(i, (None, None))[0],
        rationale_source=b.rationales.get(i, (None, None))[1],
        answer_verdict=b.answers[i],
        logic_verdict=logic.get(i),
        seconds=seconds,
        llm_replies=b.replies[i],
        manifest=self.manifest,
        memory=memory,
      )
      for i, qa in enumerate(b.questions)
    ]

  def stages(self) -> list[tuple[str, Callable[["_Batch"], Any], int]]:
    """The job's stages in order: (name, `_Batch -> _Batch` (the last returns the records),
    workers: batches of the stage at once when pipelined, `llm_workers` for the LLM stages,
    1 for execution). Each adds its seconds to the batch's `stage_s` (a record's
    `timing.seconds` is their sum over the batch's questions: its work, not its waits)."""

    def timed(name: str, fn: Callable[["_Batch"], Any]) -> Callable[["_Batch"], Any]:
      def run(b: "_Batch") -> Any:
        b.stage_t0 = time.perf_counter()
        try:
          out = fn(b)
        except PromptRejected as e:  # say which stage's prompt the server refused
          e.stage = e.stage or name
          raise
        b.stage_s[name] = time.perf_counter() - b.stage_t0
        if self.times is not None:
          self.times.add(name, b.stage_s[name])
        return out

      return run

    llm = self.llm_workers
    return [
      (name, timed(name, fn), workers)
      for name, fn, workers in (
        ("program", self._stage_programs, llm),
        ("execute", self._stage_execute, 1),
        ("answer_judge", self._stage_answer_judge, llm),
        ("rewrite", self._stage_rewrite, llm),
        ("logic_judge", self._stage_logic_judge, llm),
      )
    ]

  def process(self, batch: Sequence[Any]) -> list[dict]:
    """Runs every stage on a batch of `VideoQA` and returns their records, in order."""
    out: Any = _Batch(list(batch))
    for _, fn, _ in self.stages():
      out = fn(out)
    return out

  # -- the resumable loop --

  def _batches(self, todo: Sequence[Any]) -> Iterator[list[dict]]:
    """Each batch's records, in order: one batch at a time, or pipelined (`pipeline`)."""
    starts = range(0, len(todo), self.batch_size)
    if not self.pipeline:
      for start in starts:
        yield self.process(todo[start : start + self.batch_size])
      return
    decode = (
      concurrent.futures.ThreadPoolExecutor(self.decode_workers, "decode")
      if self.decode_workers
      else None
    )

    def batches() -> Iterator[_Batch]:
      for start in starts:
        qs = list(todo[start : start + self.batch_size])
        args = [decode.submit(self._inputs, qa) for qa in qs] if decode else None
        yield _Batch(qs, args=args)

    try:
      yield from run_stages(batches(), self.stages(), max_in_flight=self.max_batches_in_flight)
    finally:
      if decode is not None:
        decode.shutdown(wait=True, cancel_futures=True)

  def _one_at_a_time(
    self, batch: Sequence[Any], refused: PromptRejected, accepted: bool, label: str, stream
  ) -> list[dict]:
    """The records of `batch`, whose stages' LLM server refused a prompt (`refused`), each
    question processed alone: one whose own prompt is refused gets a record that says so
    (`verdicts.refused`; not parsed, not kept; a rerun counts it as done). Re-raises `refused`
    when the server refuses every question of the batch and has accepted none of this job's
    (`accepted`: a request the server refuses whatever the prompt, e.g. a bad setting)."""
    out, refusals = [], 0
    for qa in batch:
      try:
        out.extend(self.process([qa]))
        continue
      except PromptRejected as e:
        refusals += 1
        why = f"the LLM server refused this question's {e.stage or 'LLM'} prompt: {e}"
      print(f"{label}question {qa.qid}: {why}; recorded as not kept", file=stream, flush=True)
      record = make_record(
        qa,
        video_path=self.video_path(qa),
        video_dir=self.video_dir,
        program=programs.ParsedProgram(None, why),
        execution=None,
        rationale=None,
        rationale_source=None,
        answer_verdict=None,
        logic_verdict=None,
        seconds=0.0,
        manifest=self.manifest,
      )
      record["verdicts"]["refused"] = why
      out.append(record)
    if refusals == len(batch) and (len(batch) > 1 or not accepted):
      raise refused
    return out

  def run(
    self,
    questions: Sequence[Any],
    paths: JobPaths,
    *,
    label: str = "",
    progress_every_s: float = 5.0,
    stream: TextIO | None = None,
  ) -> filters.FilterStats:
    """Processes `questions` not yet in `paths.records`, then writes ArrayRecord and stats.

    Raises:
      JobError: duplicate question ids in `questions`, or a corrupt record log.
    """
    check_out_dir(paths.records)
    qids = [qa.qid for qa in questions]
    if len(set(qids)) != len(qids):
      dup = sorted({q for q in qids if qids.count(q) > 1})[:5]
      raise JobError(f"duplicate question ids in the shard: {dup}")
    os.makedirs(os.path.dirname(os.path.abspath(paths.records)), exist_ok=True)
    log = RecordLog(paths.records)
    done = log.load()
    stats = filters.FilterStats()
    for record in done:
      stats.add_record(record)
    done_ids = {r["qid"] for r in done}
    todo = [qa for qa in questions if qa.qid not in done_ids]
    progress = Progress(
      len(questions),
      len(questions) - len(todo),
      stats,
      label=label,
      stream=stream,
      every_s=progress_every_s,
    )
    if done:
      print(
        f"{label}resuming: {len(done)} records in {paths.records}, {len(todo)} to go",
        file=progress.stream,
        flush=True,
      )
    if log.duplicates:
      print(f"{label}{duplicates_note(paths.records, log.duplicates)}", file=progress.stream)

    # whether the LLM server has answered this job's questions (records not refused)
    accepted = any(not r.get("verdicts", {}).get("refused") for r in done)

    def write(records: Sequence[dict]) -> None:
      nonlocal accepted
      for record in records:
        log.append(record)
        stats.add_record(record)
        progress.update()
        accepted = accepted or not record["verdicts"].get("refused")

    while todo:
      written, refused = 0, None
      # closing: on a stop here, the pipelined stages finish their current batches before this
      # returns (not when the traceback is dropped), so nothing runs on after the caller's exit.
      with contextlib.closing(self._batches(todo)) as batches:
        try:
          for records in batches:
            broken = broken_backend(records, self.fail_fast_min)
            if broken:
              raise JobError(
                f"{label}an expert backend is broken: {broken}. Nothing of this batch "
                f"was written to {paths.records}; fix the backend and rerun the same "
                "command (done questions are kept)"
              )
            unloadable = unloadable_inputs(records, self.fail_fast_min)
            if unloadable:
              raise JobError(
                f"{label}{unloadable}. Nothing of this batch was written to {paths.records}; "
                "check the videos folder (the config's videos= / data.video_dir) and rerun the "
                "same command (done questions are kept)"
              )
            write(records)
            written += len(records)
        except PromptRejected as e:  # the batches after it stop with the pipeline
          refused = e
      if refused is None:
        break
      # the batch the server refused a prompt of (the batches are written in order): its
      # questions one at a time, so the one whose prompt it refuses is recorded as such and
      # the others go on; a rerun would otherwise stop at this batch again, forever
      batch = todo[written : written + self.batch_size]
      write(self._one_at_a_time(batch, refused, accepted, label, progress.stream))
      todo = todo[written + len(batch) :]
    records = log.load()
    if log.duplicates:  # another worker on this shard appended while this one ran
      print(f"{label}{duplicates_note(paths.records, log.duplicates)}", file=progress.stream)
      stats = filters.FilterStats()
      for record in records:
        stats.add_record(record)
      progress.stats = stats
    finalise(records, paths, stats)
    progress.update(0, force=True)
    return stats


def finalise(records: Iterable[Mapping], paths: JobPaths, stats: filters.FilterStats) -> None:
  """Writes the kept CoTs as ArrayRecord and the stats JSON, each atomically (tmp + rename)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  tmp = paths.array_record + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")
  kept = 0
  records = list(records)
  for record in records:
    if record.get("kept"):
      writer.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
      kept += 1
  writer.close()
  os.replace(tmp, paths.array_record)
  tmp = paths.stats + ".tmp"
  with open(tmp, "w") as f:
    json.dump(
      {**stats.to_dict(), "array_record_records": kept, "efficiency": efficiency(records)},
      f,
      indent=2,
      sort_keys=True,
    )
  os.replace(tmp, paths.stats)
