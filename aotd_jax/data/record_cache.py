"""Annotation files parsed once per host into a file that processes map lazily.

AGQA's ~3.9M questions parsed into memory take ~7 GB in the trainer (~9 GB at the parse's
peak), and Grain's worker processes each unpickle the whole mixed dataset again (~3 GB each;
docs/training.md, "The annotation cache"). `cached_records(fmt, path, cache_dir, **read_kw)`
parses `path` with `annotations.read` once (in a child process with `parse_in_subprocess`)
and stores its records in `cache_dir` as one file; `qa_source` serves QA examples from it by
index. What a worker unpickles is the file's path, its layout and the kept indices (None when
all are kept); it maps the file on first use, so its pages are shared through the page cache.

The file:

    MAGIC | header length (uint64 LE) | header (JSON) | zero pad to 8 |
    offsets ((n + 1) uint64 LE) | flags (n uint8) | records (UTF-8 JSON, `encode`)

Its name holds a hash of the key that decides its contents: the annotation file's absolute
path, size and modification time (and those of the files read beside it: NExT-QA's video map,
ActivityNet-QA's answers), the reader's options, and the source of the parsers, so a changed
file or parser is read again. The header repeats the key and the read's report. It is written
under a temporary name and renamed into place: a preempted or concurrent writer never leaves a
partial file under the final name. Processes sharing the folder (a pod's hosts on NFS) parse
it once: one holds `<file>.lock` while the others wait (`build_once`: a dead parser's lock is
taken over; rare concurrent writers write the same bytes). A file whose header does not match
its key or that is shorter than its offsets say is parsed again and replaced (logged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from absl import logging

from aotd_jax.data import annotations, annotations_formats, build_once, files
from aotd_jax.data.annotations import ReadReport, VideoQA

if TYPE_CHECKING:
  import grain

# Grain and the pipeline (JAX) are imported where the QA source is built, not here: the parse
# runs in a child process (`parse_in_subprocess`) that needs only the readers.

MAGIC = b"AOTDREC1"
SUFFIX = ".records"
MULTIPLE_CHOICE, NO_ANSWER = 1, 2  # flag bits: a multiple-choice record; one without an answer
REPORT_MESSAGES = 100  # the read's first skip messages kept in the header


class CacheError(Exception):
  """A cache file that cannot be trusted (not ours, another key, cut short)."""


def _parser_digest() -> str:
  """A hash of the readers' source: a changed parser makes every key new."""
  return build_once.source_digest(MAGIC, (annotations, annotations_formats))


def _input_files(fmt: str, path: str, read_kw: dict) -> list[str]:
  """The files `annotations.read(fmt, path, **read_kw)` reads (their stats are in the key)."""
  if files.isdir(path):  # mvbench: a folder of per-task files
    return sorted(files.glob(path, "*"))
  out = [path]
  if fmt == "nextqa":
    out.append(
      read_kw.get("map_path") or os.path.join(os.path.dirname(path), "map_vid_vidorID.json")
    )
  elif fmt == "activitynet_qa":
    answers = read_kw.get("answers_path")
    if answers is None and path.endswith("_q.json"):
      answers = path[: -len("_q.json")] + "_a.json"
    if answers:
      out.append(answers)
  return out


def cache_key(fmt: str, path: str, read_kw: dict) -> dict:
  """What decides a cache file's records (JSON-able): format, files with their stats, options
  and the parser's digest.

  Raises:
    annotations.AnnotationError: `path` does not exist.
  """
  path = os.fspath(path) if files.is_url(path) else os.path.abspath(path)
  stats = []
  for f in _input_files(fmt, path, read_kw):
    try:
      mtime, size = files.stat_key(f)
      stats.append([f, size, mtime])
    except OSError:
      if f == path:
        raise annotations.AnnotationError(f"annotation file not found: {path}") from None
      stats.append([f, None, None])  # absent (NExT-QA's optional map): its arrival is a change
  options = {k: repr(v) for k, v in sorted(read_kw.items())}
  return {"format": fmt, "files": stats, "options": options, "parser": _parser_digest()}


def cache_path(cache_dir: str, key: dict) -> str:
  """The cache file of `key` in `cache_dir`: `<format>-<file name>-<hash of key>.records`."""
  name = os.path.basename(key["files"][0][0].rstrip("/")) or "annotations"
  return build_once.keyed_path(cache_dir, key["format"], name, key, SUFFIX)


def _flags(r: VideoQA) -> int:
  mc = bool(r.choices)
  return (MULTIPLE_CHOICE if mc else 0) | (NO_ANSWER if mc and r.answer_index is None else 0)


def encode(r: VideoQA) -> bytes:
  """A record as stored: the JSON that `VideoQA.from_json` reads (the fields by name, without
  `to_json`'s deep copy and sorting: a million records are written in seconds, not minutes)."""
  fields = {f: getattr(r, f) for f in _FIELDS}
  return json.dumps(fields, ensure_ascii=False).encode()


_FIELDS = tuple(f.name for f in dataclasses.fields(VideoQA))
_CHUNK = 8192  # records encoded per write


def write_record_file(path: str, records: Sequence[VideoQA], header: dict) -> None:
  """Writes `records` (and `header`, a JSON-able dict) as a record file at `path`, atomically:
  under a temporary name in the same folder, flushed to disk, then renamed."""
  n = len(records)
  head = json.dumps({**header, "count": n}, sort_keys=True).encode()
  at = len(MAGIC) + 8 + len(head)
  pad = -at % 8
  offsets_at = at + pad
  data_at = offsets_at + 8 * (n + 1) + n
  lengths = np.zeros(n + 1, "<u8")
  flags = np.zeros(n, np.uint8)
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  tmp = build_once.temporary_name(path)
  try:
    with open(tmp, "wb") as f:
      f.write(MAGIC + np.uint64(len(head)).astype("<u8").tobytes() + head + b"\0" * pad)
      f.seek(data_at)
      for start in range(0, n, _CHUNK):
        chunk = [encode(r) for r in records[start : start + _CHUNK]]
        lengths[start + 1 : start + 1 + len(chunk)] = [len(b) for b in chunk]
        flags[start : start + len(chunk)] = [_flags(r) for r in records[start : start + _CHUNK]]
        f.write(b"".join(chunk))
      f.seek(offsets_at)
      f.write(np.cumsum(lengths, dtype="<u8").tobytes() + flags.tobytes())
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  try:  # the rename itself survives a crash once the folder is flushed
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:
    pass


class RecordFile:
  """Random access to a record file's `VideoQA` records; pickles as its path and layout."""

  def __init__(self, path: str, *, key: dict | None = None):
    """Opens `path`'s header.

    Raises:
      CacheError: not a record file, another `key` than given, or shorter than its offsets say.
    """
    self.path = os.fspath(path)
    try:
      with open(self.path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
          raise CacheError(f"{self.path}: not a record file (starts {magic!r})")
        size = int(np.frombuffer(f.read(8), "<u8")[0])
        self.header = json.loads(f.read(size))
        n = int(self.header["count"])
        self._offsets_at = len(MAGIC) + 8 + size + (-(len(MAGIC) + 8 + size) % 8)
        f.seek(self._offsets_at + 8 * n)
        end = f.read(8)
        total = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
      raise CacheError(f"{self.path}: unreadable header ({e})") from None
    if key is not None and self.header.get("key") != key:
      raise CacheError(f"{self.path}: made for another file, parser or options")
    self._count = n
    self._data_at = self._offsets_at + 8 * (n + 1) + n
    if len(end) != 8 or self._data_at + int(np.frombuffer(end, "<u8")[0]) != total:
      raise CacheError(f"{self.path}: {total} bytes, not the length its offsets give (cut short?)")
    self._map: np.ndarray | None = None

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "_map"} | {"_map": None}

  def __len__(self) -> int:
    return self._count

  def _mapped(self) -> np.ndarray:
    if self._map is None:
      self._map = np.memmap(self.path, np.uint8, mode="r")
    return self._map

  @property
  def flags(self) -> np.ndarray:
    """Per record: `MULTIPLE_CHOICE` | `NO_ANSWER` bits (uint8, mapped)."""
    start = self._offsets_at + 8 * (self._count + 1)
    return self._mapped()[start : start + self._count]

  def record(self, index: int) -> VideoQA:
    """Record `index`.

    Raises:
      IndexError: out of range. ValueError: a record that does not decode, naming this file
        and the index (the file was changed after it was written: delete it to parse again).
    """
    if not 0 <= index < self._count:
      raise IndexError(f"{self.path}: record {index} of {self._count}")
    m = self._mapped()
    o0, o1 = np.frombuffer(m, "<u8", 2, self._offsets_at + 8 * index)
    try:
      return VideoQA.from_json(bytes(m[self._data_at + int(o0) : self._data_at + int(o1)]))
    except (ValueError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      raise ValueError(
        f"{self.path}[{index}]: unreadable cached record of {self.source} ({e}); delete the "
        "file to parse the annotations again"
      ) from None

  @property
  def source(self) -> str:
    """The annotation file the records were read from."""
    return self.header["key"]["files"][0][0]

  def report(self) -> ReadReport:
    """The `ReadReport` of the read that made the file (its first `REPORT_MESSAGES` messages)."""
    r = self.header["report"]
    return ReadReport(
      fmt=r["fmt"],
      path=r["path"],
      num_records=r["num_records"],
      num_skipped=r["num_skipped"],
      messages=list(r["messages"]),
    )


def cached_records(
  fmt: str,
  path: str,
  cache_dir: str,
  *,
  parse_in_subprocess: bool = False,
  wait_s: float = 3600.0,
  **read_kw: Any,
) -> RecordFile:
  """The records of `annotations.read(fmt, path, **read_kw)` from `cache_dir`, parsed and
  written there first when no file there matches (see the module docstring).

  Processes sharing `cache_dir` (the hosts of a pod on one mounted folder) parse a file once:
  one holds `<file>.lock` and parses, the others wait for its file (`build_once`: a lock whose
  parser died is taken over; `wait_s` bounds the wait for a live one).

  `parse_in_subprocess`: parse in a child Python process, so that the parse's peak (~2.3 KB a
  question: ~9 GB for AGQA) is not this process's (the trainer keeps its peak for the run).

  Raises:
    annotations.AnnotationError: the file cannot be read (missing, not the format).
    ValueError: `cache_dir` is a bucket URL.
    build_once.BuildTimeout: another process has held the lock for over `wait_s` seconds.
  """
  if files.is_url(cache_dir):
    raise ValueError(
      f"cache_dir={cache_dir}: must be a local or mounted folder (its file is memory-mapped "
      "and its lock made with O_EXCL, which a bucket offers neither of)"
    )
  key = cache_key(fmt, os.fspath(path), read_kw)
  target = cache_path(cache_dir, key)
  if os.path.exists(target):
    try:
      out = RecordFile(target, key=key)
      report = out.report()
      log = logging.warning if report.num_skipped else logging.info
      log("annotations: %s (parsed before: %s)", report.summary(), target)
      return out
    except CacheError as e:
      logging.warning("annotations: %s; parsing %s again", e, path)

  def ready() -> bool:  # another process's finished file (one cut short is not)
    try:
      RecordFile(target, key=key)
      return True
    except CacheError:
      return False

  def parse() -> None:
    if parse_in_subprocess:
      _parse_in_child(fmt, os.fspath(path), target, key, read_kw)
    else:
      parse_into(fmt, os.fspath(path), target, key, read_kw)
    logging.info("annotations: %s parsed into %s", path, target)

  os.makedirs(cache_dir, exist_ok=True)
  build_once.build_once(target, parse, ready=ready, what=f"parsing {path}", wait_s=wait_s)
  return RecordFile(target, key=key)


def parse_into(fmt: str, path: str, target: str, key: dict, read_kw: dict) -> None:
  """Parses `path` and writes its record file `target` (header: `key` and the read's report)."""
  records = annotations.read(fmt, path, **read_kw)
  r = records.report
  report = {
    "fmt": r.fmt,
    "path": r.path,
    "num_records": r.num_records,
    "num_skipped": r.num_skipped,
    "messages": r.messages[:REPORT_MESSAGES],
  }
  write_record_file(target, records, {"key": key, "report": report})


def _parse_in_child(fmt: str, path: str, target: str, key: dict, read_kw: dict) -> None:
  """`parse_into` in a child Python process (its log goes to this process's stderr); an
  `AnnotationError` there is raised here with its message."""
  import aotd_jax  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(aotd_jax.__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
  job = json.dumps({"fmt": fmt, "path": path, "target": target, "key": key, "read_kw": read_kw})
  done = subprocess.run(
    [sys.executable, "-m", "aotd_jax.data.record_cache"],
    input=job,
    stdout=subprocess.PIPE,
    text=True,
    env=env,
    check=False,
  )
  lines = done.stdout.strip().splitlines()
  answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
  if answer.get("error") == "AnnotationError":
    raise annotations.AnnotationError(answer["message"])
  if done.returncode or not answer.get("ok"):
    raise RuntimeError(
      f"parsing {path} into {target} in a child process failed (exit {done.returncode}): "
      f"{answer.get('message', 'see its log above')}"
    )


def _child_main() -> None:
  """The child of `_parse_in_child`: one job (JSON) on stdin, one JSON answer line on stdout."""
  job = json.loads(sys.stdin.read())
  try:
    parse_into(job["fmt"], job["path"], job["target"], job["key"], job["read_kw"])
  except annotations.AnnotationError as e:
    print(json.dumps({"error": "AnnotationError", "message": str(e)}))
    return
  except Exception as e:  # noqa: BLE001 - reported to the parent, which raises
    print(json.dumps({"error": type(e).__name__, "message": f"{type(e).__name__}: {e}"}))
    sys.exit(1)
  print(json.dumps({"ok": True}))


class QAExamples:
  """Random-access QA examples (`pipeline.qa_example`) of a `RecordFile`'s records `indices`
  (None: all), decoded on access; what pickles is the file's path and the indices."""

  def __init__(
    self,
    records: RecordFile,
    indices: np.ndarray | None,
    *,
    video_files: dict[str, str] | None = None,
    **example_kw: Any,
  ):
    self.records, self.indices = records, indices
    self.video_files, self.example_kw = video_files, example_kw

  def __len__(self) -> int:
    return len(self.records) if self.indices is None else len(self.indices)

  def __getitem__(self, index: int) -> dict:
    from aotd_jax.data import pipeline  # pylint: disable=g-import-not-at-top

    if not 0 <= index < len(self):
      raise IndexError(index)
    r = self.records.record(index if self.indices is None else int(self.indices[index]))
    if self.video_files:
      annotations_formats.locate_activitynet_video(r, self.video_files)
    return pipeline.qa_example(r, **self.example_kw)


def qa_source(
  records: RecordFile,
  keep: np.ndarray | None = None,
  *,
  fmt: str = "",
  video_root: str = "",
  **example_kw: Any,
) -> grain.MapDataset:
  """The `MapDataset` that `pipeline.qa_source` makes of the records `keep` (sorted indices;
  None: all), in the same order, read lazily from `records`.

  Multiple-choice records without one correct option are left out and logged as
  `pipeline.qa_examples` does; `fmt="activitynet_qa"` finds each video's container under
  `video_root` as `annotations_formats.locate_activitynet_videos` does.
  """
  import grain  # pylint: disable=g-import-not-at-top

  from aotd_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  flags = np.asarray(records.flags if keep is None else records.flags[keep])
  no_answer = np.flatnonzero(flags & NO_ANSWER)
  positions = np.arange(len(flags)) if keep is None else np.asarray(keep, np.int64)
  if len(no_answer):
    first = [records.record(int(positions[i])).qid for i in no_answer[:5]]
    pipeline.warn_no_answer(first, len(no_answer), int(np.count_nonzero(flags & MULTIPLE_CHOICE)))
    keep = np.delete(positions, no_answer)
  video_files = None
  if fmt == "activitynet_qa":
    kept = range(len(records)) if keep is None else (int(i) for i in keep)
    stems = annotations_formats.activitynet_stems(records.record(i) for i in kept)
    video_files = annotations_formats.activitynet_video_files(stems, video_root)
  return grain.MapDataset.source(
    QAExamples(records, keep, video_files=video_files, video_root=video_root, **example_kw)
  )


if __name__ == "__main__":
  _child_main()
