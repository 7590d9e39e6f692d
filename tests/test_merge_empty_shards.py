"""Merging a CoT run with more workers than questions (docs/reproduce.md's `--num_shards=8` on a
small split): a worker with no questions leaves `stats-*.json` counting 0 and no records, an
empty shard, not a missing one; `launch.merge_cots` names a shard that is really missing."""

import json
import os
import subprocess
import sys

import pytest

from aotd_jax.agent import job, merge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_dir(path, sizes):
  """Shards as `generate_cots` leaves them: records and stats for each worker with questions,
  stats alone (total 0) for each without."""
  path.mkdir()
  n, i = len(sizes), 0
  for k, size in enumerate(sizes):
    name = job.shard_name(k, n)
    if size:
      rows = [json.dumps({"qid": f"q{i + j}", "kept": False, "verdicts": {}}) for j in range(size)]
      (path / f"records-{name}.jsonl").write_text("".join(r + "\n" for r in rows))
      i += size
    (path / f"stats-{name}.json").write_text(json.dumps({"total": size}))
  return str(path)


def test_workers_without_questions_are_empty_shards(tmp_path):
  cot_dir = _run_dir(tmp_path / "cots", [1, 1, 1, 1, 0, 0, 0, 0])
  stats = merge.merge(cot_dir)
  assert stats.total == 4
  merged = (tmp_path / "cots" / "merged" / "records.jsonl").read_text().splitlines()
  assert [json.loads(line)["qid"] for line in merged] == ["q0", "q1", "q2", "q3"]


def test_a_shard_with_questions_but_no_records_is_still_missing(tmp_path):
  cot_dir = _run_dir(tmp_path / "cots", [1, 1, 0])
  os.remove(os.path.join(cot_dir, "records-00001-of-00003.jsonl"))  # its stats count 1
  with pytest.raises(job.JobError, match=r"shard 00001-of-00003 is missing"):
    merge.merge(cot_dir)
  result = subprocess.run(
    [sys.executable, "-m", "launch.merge_cots", f"--cot_dir={cot_dir}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert (
    "merge_cots: error:" in result.stderr and "shard 00001-of-00003 is missing" in result.stderr
  )
  assert "Traceback" not in result.stderr
  # a pod whose workers wrote to their own disks: the shard ran, elsewhere
  assert "or copy its files here from the machine that ran it" in result.stderr
