"""CoT JSONL files read once into an ArrayRecord file that the trainer's workers read lazily.

The CoT job writes its kept CoTs as ArrayRecord, which the pipeline reads by index; a JSONL CoT
file (a merged or hand-made set, the demo's unfiltered CoTs) was parsed into memory whole: for
~32K STAR-sized CoTs (a 142 MB file) that is a ~0.7 GB parse peak in the trainer and ~70 MB of
examples unpickled by every Grain worker (docs/training.md, "The annotation cache").
`cached_cot_jsonl` streams the file once, keeps its good lines (the bad ones reported by file
and line, as `pipeline.read_cot_jsonl` does) in an ArrayRecord file in the run's `cache_dir`,
and returns that file's path, for `pipeline.cot_source`'s lazy ArrayRecord path.

The file is named after a hash of the JSONL file's path, size and modification time, the read's
options and the source of the code that judges a line (`pipeline`, `conversation`); the read's
report is kept beside it (`<file>.json`, written last: a file without it is not trusted).
Hosts sharing `cache_dir` read it once (`build_once`).
"""

from __future__ import annotations

import json
import os

from absl import logging

from aotd_jax.data import build_once, conversation, files
from aotd_jax.data.annotations import ReadReport

SUFFIX = ".array_record"
REPORT_MESSAGES = 100  # the read's first skip messages kept in the report


def _code_digest() -> str:
  """A hash of the code that turns a line into an example: a change makes every key new."""
  from aotd_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  return build_once.source_digest(b"cot_cache1", (pipeline, conversation))


def cache_key(path: str, **options) -> dict:
  """What decides a cache file's contents (JSON-able).

  Raises:
    FileNotFoundError: no file at `path`.
  """
  path = os.fspath(path) if files.is_url(path) else os.path.abspath(path)
  mtime, size = files.stat_key(path)
  return {
    "file": [path, size, mtime],
    "options": {k: repr(v) for k, v in sorted(options.items())},
    "code": _code_digest(),
  }


def cache_path(cache_dir: str, key: dict) -> str:
  """`cot-<file name>-<hash of key>.array_record` in `cache_dir`."""
  name = os.path.basename(key["file"][0].rstrip("/")) or "cots"
  return build_once.keyed_path(cache_dir, "cot", name, key, SUFFIX)


def _report(target: str, key: dict) -> ReadReport | None:
  """The report kept beside `target` when it is there and of `key` (else None)."""
  try:
    with open(target + ".json") as f:
      data = json.load(f)
    if data["key"] != key or not os.path.exists(target):
      return None
    return ReadReport(**data["report"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _write(path: str, target: str, key: dict, options: dict) -> None:
  """Streams `path`'s good lines into `target` (temporary name, then renamed) and its report."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from aotd_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  report = ReadReport(fmt="cot", path=path)
  tmp = build_once.temporary_name(target)
  try:
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
      for line, _ in pipeline.iter_cot_jsonl(path, report, **options):
        writer.write(line.rstrip("\r\n").encode())
    finally:
      writer.close()
    head = {"key": key, "report": {**vars(report), "messages": report.messages[:REPORT_MESSAGES]}}
    with open(tmp + ".json", "w") as f:
      json.dump(head, f)
    os.replace(tmp, target)
    os.replace(tmp + ".json", target + ".json")  # last: the pair is whole once it is there
  finally:
    for leftover in (tmp, tmp + ".json"):
      if os.path.exists(leftover):
        os.remove(leftover)


def cached_cot_jsonl(
  path: str,
  cache_dir: str,
  *,
  video_root: str = "",
  prompt_format: str | None = None,
  allow_unfiltered: bool = False,
  wait_s: float = 3600.0,
) -> str:
  """The ArrayRecord file in `cache_dir` holding the good records of the CoT JSONL `path`,
  written first when none there matches; logs the read's report as `read_cot_jsonl` does.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is the CoT job's record log and `allow_unfiltered` is not set (nothing
      is written); `cache_dir` is a bucket URL.
    build_once.BuildTimeout: another process has held the lock for over `wait_s` seconds.
  """
  if files.is_url(cache_dir):
    raise ValueError(f"cache_dir={cache_dir}: must be a local or mounted folder")
  options = dict(
    video_root=video_root, prompt_format=prompt_format, allow_unfiltered=allow_unfiltered
  )
  key = cache_key(path, **options)
  target = cache_path(cache_dir, key)
  os.makedirs(cache_dir, exist_ok=True)
  build_once.build_once(
    target,
    lambda: _write(os.fspath(path), target, key, options),
    ready=lambda: _report(target, key) is not None,
    what=f"reading {path}",
    wait_s=wait_s,
  )
  report = _report(target, key)
  logging.log(
    logging.WARNING if report.num_skipped else logging.INFO,
    "cot: %s (cached in %s)",
    report.summary(),
    target,
  )
  return target
