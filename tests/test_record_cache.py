"""Annotation files parsed once into a memory-mapped record file (`record_cache`): the same
records as the in-memory parse for every format, re-parsed when the file, options or parser
change, never trusted cut short or half written, a damaged record named by file and index,
and a pickled source (what a Grain worker receives) that holds no records."""

import json
import logging
import os
import pathlib
import pickle

import numpy as np
import pytest

from aotd_jax.data import annotations as A
from aotd_jax.data import pipeline
from aotd_jax.data import record_cache as RC

FIX = pathlib.Path(__file__).resolve().parent / "fixtures"
ANN = FIX / "annotations"

FORMATS = [
  ("star", ANN / "star_val.json", {}),
  ("nextqa", FIX / "real" / "nextqa" / "val.csv", {}),
  ("agqa", ANN / "agqa_balanced.json", {}),
  ("clevrer", ANN / "clevrer_validation.json", {}),
  ("activitynet_qa", FIX / "real" / "activitynet_qa" / "val_q.json", {}),
  ("mvbench", ANN / "mvbench", {}),
  ("perception_test", ANN / "perception_test_mc_valid.json", {}),
  ("star", ANN / "star_val.json", {"window": "whole"}),
]


def agqa_file(path: pathlib.Path, n: int, answer: str = "yes") -> pathlib.Path:
  """An AGQA 2.0 file of `n` questions over 7 videos."""
  questions = {
    f"q{i:05d}": {
      "question": f"what did they hold {i}?",
      "answer": answer,
      "video_id": f"V{i % 7}",
      "program": f"Query({i})",
      "sg_grounding": {"cup": [i, i + 3]},
    }
    for i in range(n)
  }
  path.write_text(json.dumps(questions))
  return path


@pytest.mark.parametrize("fmt,path,kw", FORMATS, ids=lambda v: str(v)[-24:])
def test_cached_records_are_the_parsed_records(fmt, path, kw, tmp_path, monkeypatch):
  parsed = A.read(fmt, path, **kw)
  cached = RC.cached_records(fmt, str(path), str(tmp_path), **kw)
  assert len(cached) == len(parsed) > 0
  assert [cached.record(i).to_dict() for i in range(len(cached))] == [r.to_dict() for r in parsed]
  flags = [pipeline.has_no_answer(r) * 2 + bool(r.choices) for r in parsed]
  assert list(cached.flags) == flags
  assert cached.report().summary() == parsed.report.summary()

  def no_parse(*a, **k):
    raise AssertionError("parsed again")

  monkeypatch.setattr(A, "read", no_parse)
  again = RC.cached_records(fmt, str(path), str(tmp_path), **kw)  # the next run, another host
  assert again.path == cached.path and len(again) == len(parsed)


def test_a_changed_file_option_or_parser_is_read_again(tmp_path, monkeypatch):
  ann = agqa_file(tmp_path / "train_balanced.txt", 50)
  cache = str(tmp_path / "cache")
  first = RC.cached_records("agqa", str(ann), cache)
  agqa_file(ann, 50, answer="no!")  # same size, rewritten
  os.utime(ann, ns=(os.stat(ann).st_atime_ns, os.stat(ann).st_mtime_ns + 10**9))
  second = RC.cached_records("agqa", str(ann), cache)
  assert second.path != first.path and second.record(0).answer == "no!"
  assert RC.cached_records("agqa", str(ann), cache, labelled=False).path != second.path
  monkeypatch.setattr(RC, "_parser_digest", lambda: "another parser")
  assert RC.cached_records("agqa", str(ann), cache).path != second.path
  assert len(os.listdir(cache)) == 4 and not [f for f in os.listdir(cache) if ".tmp-" in f]


def test_nextqas_map_arriving_beside_the_file_is_a_change(tmp_path):
  csv = tmp_path / "train.csv"
  csv.write_bytes((FIX / "real" / "nextqa" / "val.csv").read_bytes())
  without = RC.cached_records("nextqa", str(csv), str(tmp_path / "c"))
  assert "video_path" not in without.record(0).meta
  map_file = tmp_path / "map_vid_vidorID.json"
  map_file.write_bytes((FIX / "real" / "nextqa" / "map_vid_vidorID.json").read_bytes())
  with_map = RC.cached_records("nextqa", str(csv), str(tmp_path / "c"))
  assert with_map.record(0).to_dict() == A.read("nextqa", csv)[0].to_dict()
  assert "video_path" in with_map.record(0).meta


def test_a_cut_short_or_foreign_file_is_parsed_again(tmp_path, caplog):
  ann = agqa_file(tmp_path / "a.json", 40)
  cache = str(tmp_path / "cache")
  path = RC.cached_records("agqa", str(ann), cache).path
  whole = pathlib.Path(path).read_bytes()
  for damaged in (whole[:-5], whole + b"x", b"PK\x03\x04 a zip", whole[:12]):
    pathlib.Path(path).write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
      again = RC.cached_records("agqa", str(ann), cache)
    assert f"{path}: " in caplog.text and "parsing" in caplog.text
    assert pathlib.Path(path).read_bytes() == whole and len(again) == 40
    caplog.clear()
  with pytest.raises(RC.CacheError, match="another file"):
    RC.RecordFile(path, key={"format": "agqa"})


def test_an_interrupted_write_leaves_nothing_under_any_name(tmp_path, monkeypatch):
  ann = agqa_file(tmp_path / "a.json", 40)
  cache = tmp_path / "cache"
  real = RC.encode
  calls = []

  def dies_midway(r):
    calls.append(1)
    if len(calls) == 20:
      raise KeyboardInterrupt  # a preemption while the file is being written
    return real(r)

  monkeypatch.setattr(RC, "encode", dies_midway)
  monkeypatch.setattr(RC, "_CHUNK", 8)  # 2 chunks written before it dies
  with pytest.raises(KeyboardInterrupt):
    RC.cached_records("agqa", str(ann), str(cache))
  assert os.listdir(cache) == [] and len(calls) == 20
  monkeypatch.setattr(RC, "encode", real)
  stray = cache / (
    os.path.basename(RC.cache_path(str(cache), RC.cache_key("agqa", str(ann), {})))
    + ".tmp-otherhost-1-abc"
  )
  stray.write_bytes(b"AOTDREC1 half")  # another writer's, still going: never read
  assert len(RC.cached_records("agqa", str(ann), str(cache))) == 40


def test_a_damaged_record_is_named_by_file_and_index(tmp_path):
  ann = agqa_file(tmp_path / "a.json", 30)
  records = RC.cached_records("agqa", str(ann), str(tmp_path / "cache"))
  raw = bytearray(pathlib.Path(records.path).read_bytes())
  at = raw.index(b'"qid": "q00007"')
  raw[at : at + 6] = b"\xff\xfe{{{["
  pathlib.Path(records.path).write_bytes(bytes(raw))
  fresh = RC.RecordFile(records.path)
  assert fresh.record(6).qid == "q00006"
  with pytest.raises(ValueError, match=rf"^{records.path}\[7\]: unreadable cached record of "):
    fresh.record(7)
  with pytest.raises(IndexError):
    fresh.record(30)


def test_a_missing_file_or_a_bucket_cache_is_refused(tmp_path):
  with pytest.raises(A.AnnotationError, match="annotation file not found: .*nope.json"):
    RC.cached_records("agqa", str(tmp_path / "nope.json"), str(tmp_path))
  with pytest.raises(ValueError, match="cache_dir=gs://b/c: must be a local or mounted folder"):
    RC.cached_records("agqa", str(ANN / "agqa_balanced.json"), "gs://b/c")


def test_the_source_gives_the_in_memory_examples_and_pickles_small(tmp_path, caplog):
  """What a Grain worker unpickles: the path and the kept indices, not the records."""
  ann = agqa_file(tmp_path / "a.json", 3000)
  records = A.read("agqa", ann)
  kw = dict(video_root="/videos", answer_style="letter", prompt_format="official")
  memory = pipeline.qa_source(records, **kw)
  cached = RC.qa_source(RC.cached_records("agqa", str(ann), str(tmp_path / "c")), **kw)
  assert [cached[i] for i in range(len(cached))] == [memory[i] for i in range(len(memory))]
  assert len(pickle.dumps(memory)) > 300_000  # ~150 B a question
  assert len(pickle.dumps(cached)) < 2_000
  keep = np.array([3, 10, 2999])
  some = RC.qa_source(RC.cached_records("agqa", str(ann), str(tmp_path / "c")), keep, **kw)
  assert [some[i]["qid"] for i in range(3)] == ["q00003", "q00010", "q02999"]
  clone = pickle.loads(pickle.dumps(some))  # a worker: maps the file on first use
  assert clone[2] == memory[2999]


def test_questions_without_one_answer_are_left_out_and_logged_as_before(tmp_path, caplog):
  path = ANN / "clevrer_validation.json"
  with caplog.at_level(logging.WARNING):
    memory = pipeline.qa_source(A.read("clevrer", path), video_root="V")
  before, _ = caplog.text, caplog.clear()
  with caplog.at_level(logging.WARNING):
    cached = RC.qa_source(RC.cached_records("clevrer", str(path), str(tmp_path)), video_root="V")
  assert [cached[i] for i in range(len(cached))] == [memory[i] for i in range(len(memory))]
  line = "1 of 2 multiple-choice records have no single correct option"
  assert line in before and line in caplog.text and "video_10000_13" in caplog.text


def test_a_parse_in_a_child_process_writes_the_same_file(tmp_path):
  """The trainer parses in a child (the parse's peak is not the trainer's for the whole run)."""
  ann = agqa_file(tmp_path / "a.json", 300)
  here = RC.cached_records("agqa", str(ann), str(tmp_path / "here"), window="whole")
  child = RC.cached_records(
    "agqa", str(ann), str(tmp_path / "child"), parse_in_subprocess=True, window="whole"
  )
  assert pathlib.Path(child.path).read_bytes() == pathlib.Path(here.path).read_bytes()
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(A.AnnotationError, match=r"bad\.json: not valid JSON"):
    RC.cached_records("agqa", str(tmp_path / "bad.json"), str(tmp_path), parse_in_subprocess=True)
  with pytest.raises(RuntimeError, match=r"a\.json .* in a child process failed .*TypeError"):
    RC.cached_records("agqa", str(ann), str(tmp_path), parse_in_subprocess=True, bogus=1)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(RC.SUFFIX) or ".tmp-" in f]


def test_hosts_sharing_a_cache_parse_it_once_and_leave_one_whole_file(tmp_path, monkeypatch):
  """Hosts sharing a cache folder (NFS) on a first run: each parsed the file (N x the work and
  the memory peak at once); now one parses while the others wait for its file, and neither a
  temporary file nor the lock is left behind."""
  import concurrent.futures

  ann = agqa_file(tmp_path / "a.json", 2000)
  cache = str(tmp_path / "shared")
  real, parses = RC._parse_in_child, []

  def counted(*a):
    parses.append(1)
    real(*a)

  monkeypatch.setattr(RC, "_parse_in_child", counted)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    runs = [
      pool.submit(RC.cached_records, "agqa", str(ann), cache, parse_in_subprocess=True)
      for _ in range(3)
    ]
    paths = {run.result().path for run in runs}
  (path,) = paths
  assert len(parses) == 1
  assert os.listdir(cache) == [os.path.basename(path)]
  here = RC.cached_records("agqa", str(ann), str(tmp_path / "here"))
  assert pathlib.Path(path).read_bytes() == pathlib.Path(here.path).read_bytes()


def test_a_bad_file_fails_every_host_that_waited_and_leaves_no_lock(tmp_path):
  """The parser's error frees the lock: each waiter then tries and gets the same error."""
  import concurrent.futures

  (tmp_path / "bad.json").write_text("{not json")
  cache = str(tmp_path / "shared")
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    runs = [pool.submit(RC.cached_records, "agqa", str(tmp_path / "bad.json"), cache) for _ in "ab"]
    for run in runs:
      with pytest.raises(A.AnnotationError, match=r"bad\.json: not valid JSON"):
        run.result()
  assert os.listdir(cache) == []


def test_a_killed_parsers_lock_is_taken_over_at_once(tmp_path):
  """A host's parse killed mid-way (preempted) leaves its lock: the next run on that machine
  sees its process gone and parses (no wait, no deadlock)."""
  import signal
  import subprocess
  import sys
  import time

  ann = agqa_file(tmp_path / "a.json", 100)
  cache = tmp_path / "cache"
  target = RC.cache_path(str(cache), RC.cache_key("agqa", str(ann), {}))
  lock = pathlib.Path(target + ".lock")
  code = (
    "import sys, time; from aotd_jax.data import record_cache as RC\n"
    "RC.parse_into = lambda *a: time.sleep(600)\n"
    "RC.cached_records('agqa', sys.argv[1], sys.argv[2])\n"
  )
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
  child = subprocess.Popen([sys.executable, "-c", code, str(ann), str(cache)], env=env)
  try:
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and child.poll() is None:
      assert time.monotonic() < deadline, "the child never took the lock"
      time.sleep(0.05)
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  assert lock.exists() and json.loads(lock.read_text())["pid"] == child.pid
  t0 = time.monotonic()
  assert len(RC.cached_records("agqa", str(ann), str(cache))) == 100
  assert time.monotonic() - t0 < 30 and not lock.exists()  # not build_once's 60 s staleness


def test_a_live_parser_elsewhere_is_waited_for_then_named(tmp_path):
  """Another host holding the lock (its heartbeat fresh): this one waits, up to `wait_s`, then
  stops naming the annotation file, the lock file and its holder."""
  ann = agqa_file(tmp_path / "a.json", 10)
  cache = tmp_path / "cache"
  cache.mkdir()
  target = RC.cache_path(str(cache), RC.cache_key("agqa", str(ann), {}))
  owner = {"host": "host-7", "boot_id": "x", "pid": 4242, "token": "t", "beat": 0}
  pathlib.Path(target + ".lock").write_text(json.dumps(owner))
  with pytest.raises(RC.build_once.BuildTimeout) as e:
    RC.cached_records("agqa", str(ann), str(cache), wait_s=1.0)
  assert f"parsing {ann}: waited" in str(e.value) and "process 4242 on host-7" in str(e.value)
  assert f"delete {target}.lock" in str(e.value) and not os.path.exists(target)
