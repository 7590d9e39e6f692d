"""Merges the CoT job's shards (one per worker: shard x host) into one dataset.

Worker `k` of `n` processed the questions `k, k + n, k + 2n, ...` of the dataset in order
(`job.shard`), so taking one record from each shard in turn gives back the dataset's order:
the merged `records.jsonl` holds the records an unsharded run writes, in the same order, and
`cot.array_record` / `stats.json` are what that run's `finalise` writes from them. The
manifest the records name is copied beside them. A merge refuses shards that do not make one
whole run: a missing or unfinished shard, shards of two different splits, a shard with the
wrong number of records, a question in two shards. A question twice in one shard (two workers
ran that shard at once) is counted once (`job.unique_records`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Mapping, Sequence

from absl import logging
from etils import epath

from aotd_jax.agent import filters, job
from aotd_jax.data import files

_SHARD = re.compile(r"records-(\d{5})-of-(\d{5})\.jsonl$")
_STATS = re.compile(r"stats-(\d{5})-of-(\d{5})\.json$")
MERGED = job.JobPaths(records="records.jsonl", array_record="cot.array_record", stats="stats.json")


@dataclasses.dataclass(frozen=True)
class Shard:
  """One worker's outputs: its name (`00001-of-00004`) and its records in log order."""

  name: str
  records: list[dict]


def _read_records(path: str) -> list[dict]:
  records = []
  for lineno, line in enumerate(files.read_text(path).splitlines(), 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise job.JobError(f"{path} line {lineno}: not JSON ({e.msg})") from None
    if not isinstance(record, dict) or "qid" not in record:
      raise job.JobError(f"{path} line {lineno}: not a record (an object with 'qid')")
    records.append(record)
  records, dropped = job.unique_records(records)
  if dropped:
    logging.warning("%s", job.duplicates_note(path, dropped))
  return records


def _total(stats_path: str) -> int | None:
  """The questions a finished worker's `stats-*.json` counts (None: unreadable)."""
  try:
    total = json.loads(files.read_text(stats_path)).get("total")
  except (OSError, ValueError, AttributeError):
    return None
  return total if isinstance(total, int) else None


def read_shards(cot_dir: str) -> list[Shard]:
  """Every shard of a finished run in `cot_dir`, in worker order (a worker that had no questions,
  more workers than questions, left a `stats-*.json` counting 0 and no records: an empty shard).

  Raises:
    JobError: no shard, shards of different splits (`-of-N`), a missing shard, or one whose
      worker has not finished (no `stats-*.json`) — naming the files.
  """
  found = {}
  for path in files.glob(cot_dir, "records-*-of-*.jsonl"):
    m = _SHARD.search(path)
    if m:
      found[(int(m.group(1)), int(m.group(2)))] = path
  # a worker whose share of the questions was empty finished (its stats say 0) with no records
  empty = set()
  for path in files.glob(cot_dir, "stats-*-of-*.json"):
    m = _STATS.search(path)
    key = (int(m.group(1)), int(m.group(2))) if m else None
    if key and key not in found and _total(path) == 0:
      empty.add(key)
  if not found:
    raise job.JobError(f"{cot_dir}: no records-*-of-*.jsonl shards to merge")
  totals = sorted({n for _, n in found} | {n for _, n in empty})
  if len(totals) > 1:
    raise job.JobError(
      f"{cot_dir}: shards of {len(totals)} different splits (-of-"
      f"{', -of-'.join(f'{n:05d}' for n in totals)}); merge one run's shards"
    )
  n = totals[0]
  shards = []
  for k in range(n):
    name = job.shard_name(k, n)
    if (k, n) in empty:
      shards.append(Shard(name, []))
      continue
    if (k, n) not in found:
      raise job.JobError(
        f"{cot_dir}: shard {name} is missing (records-{name}.jsonl and stats-{name}.json); run "
        "its worker, or copy its files here from the machine that ran it (each worker writes "
        "into its own config.out_dir: on a pod, its host's disk unless that is a shared mount)"
      )
    if not files.exists(files.join(cot_dir, f"stats-{name}.json")):
      raise job.JobError(
        f"{cot_dir}: shard {name} has not finished (no stats-{name}.json); "
        "rerun its worker, which resumes"
      )
    shards.append(Shard(name, _read_records(found[(k, n)])))
  return shards


def interleave(shards: Sequence[Shard]) -> list[dict]:
  """The records in dataset order: one from each shard in turn.

  Raises:
    JobError: a shard whose size is not its stride's share of the total, or a question id in
      more than one place.
  """
  n, total = len(shards), sum(len(s.records) for s in shards)
  for k, shard in enumerate(shards):
    want = len(range(k, total, n))
    if len(shard.records) != want:
      raise job.JobError(
        f"shard {shard.name} holds {len(shard.records)} records; {total} "
        f"questions over {n} workers give it {want}"
      )
  out = [shards[i % n].records[i // n] for i in range(total)]
  seen: dict[str, str] = {}
  for i, record in enumerate(out):
    where = shards[i % n].name
    if record["qid"] in seen:
      raise job.JobError(
        f"question {record['qid']!r} is in shards {seen[record['qid']]} and {where}"
      )
    seen[record["qid"]] = where
  return out


def _write(records: Sequence[Mapping], local_dir: str) -> filters.FilterStats:
  stats = filters.FilterStats()
  for record in records:
    stats.add_record(record)
  paths = job.JobPaths(
    *(os.path.join(local_dir, getattr(MERGED, f.name)) for f in dataclasses.fields(MERGED))
  )
  with open(paths.records + ".tmp", "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
  os.replace(paths.records + ".tmp", paths.records)
  job.finalise(records, paths, stats)
  return stats


def merge(cot_dir: str, out_dir: str = "") -> filters.FilterStats:
  """Merges the shards of `cot_dir` into `out_dir` (default `cot_dir/merged`): `records.jsonl`,
  `cot.array_record` (the kept CoTs: the training set), `stats.json` and `manifest.json`.
  Either folder may be a `gs://` (any `etils.epath`) path. Returns the merged pass counts.

  Raises:
    JobError: the shards are not one whole run (see `read_shards`, `interleave`).
  """
  out_dir = out_dir or files.join(cot_dir, "merged")
  records = interleave(read_shards(cot_dir))
  with tempfile.TemporaryDirectory() as tmp:
    local = tmp if files.is_url(out_dir) else out_dir
    os.makedirs(local, exist_ok=True)
    stats = _write(records, local)
    if local == tmp:  # a bucket: upload what was written locally
      target = epath.Path(out_dir)
      target.mkdir(parents=True, exist_ok=True)
      for name in sorted(os.listdir(tmp)):
        with open(os.path.join(tmp, name), "rb") as src, (target / name).open("wb") as dst:
          shutil.copyfileobj(src, dst)
  manifest = files.join(cot_dir, "manifest.json")
  if files.exists(manifest):  # the records name it (`manifest.json#<id>`)
    (epath.Path(out_dir) / "manifest.json").write_text(files.read_text(manifest))
  return stats
