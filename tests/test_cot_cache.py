"""CoT JSONL files read once into an ArrayRecord file in the run's cache folder (`cot_cache`):
the same examples as the in-memory read, a source that pickles small (what each Grain worker
unpickles), bad lines named by file and line on the first and later runs, the record log still
refused with nothing written, and a changed file or option read again."""

import json
import logging
import os
import pickle

import pytest

from aotd_jax.data import cot_cache
from aotd_jax.data import pipeline as DP


def cot(i: int, **kw) -> dict:
  rationale = f"We find the cup in frames {i}-{i + 4}; it is put down. So the answer is A."
  return {
    "qid": f"c{i}",
    "video_path": f"/cot_machine/videos/v{i % 3}.mp4",
    "video": f"v{i % 3}.mp4",
    "question": f"What happened to the cup {i}?",
    "choices": ["Put down.", "Thrown."],
    "conversation": [
      {"from": "human", "value": f"<video>\nWhat happened to the cup {i}?"},
      {"from": "gpt", "value": rationale},
    ],
    "kept": True,
    **kw,
  }


def write(path, lines):
  path.write_text(
    "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
  )
  return path


def test_the_cached_source_gives_the_in_memory_examples_and_pickles_small(tmp_path):
  f = write(tmp_path / "cots.jsonl", [cot(i) for i in range(500)])
  kw = dict(video_root="/pod/videos", prompt_format="official")
  memory = DP.cot_source(str(f), **kw)
  cached = DP.cot_source(str(f), cache_dir=str(tmp_path / "cache"), **kw)
  assert [cached[i] for i in range(len(cached))] == [memory[i] for i in range(len(memory))]
  assert cached[7]["video_path"] == "/pod/videos/v1.mp4"
  assert len(pickle.dumps(memory)) > 100_000 and len(pickle.dumps(cached)) < 2_000
  clone = pickle.loads(pickle.dumps(cached))  # a worker: opens the file on first use
  assert clone[499] == memory[499]


def test_bad_lines_are_named_on_every_run_and_only_good_ones_kept(tmp_path, caplog):
  f = write(tmp_path / "cots.jsonl", [cot(0), "{not json", {"qid": "x"}, cot(3), ""])
  cache = str(tmp_path / "cache")
  for run in ("first", "later"):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      ds = DP.cot_source(str(f), cache_dir=cache)
    assert [ds[i]["qid"] for i in range(len(ds))] == ["c0", "c3"], run
    assert "cots.jsonl: 2 records read, 2 malformed skipped" in caplog.text, run
  assert (
    f"{f}:2:"
    in open(
      cot_cache.cache_path(
        cache,
        cot_cache.cache_key(str(f), video_root="", prompt_format=None, allow_unfiltered=False),
      )
      + ".json"
    ).read()
  )


def test_the_record_log_is_refused_and_nothing_is_written(tmp_path):
  f = write(tmp_path / "records-00000-of-00001.jsonl", [cot(0), cot(1, kept=False)])
  cache = tmp_path / "cache"
  with pytest.raises(
    ValueError, match=r"records-00000-of-00001\.jsonl: 1 of its 2 records are not kept"
  ):
    DP.cot_source(str(f), cache_dir=str(cache))
  assert os.listdir(cache) == []
  ds = DP.cot_source(str(f), cache_dir=str(cache), allow_unfiltered=True)
  assert [ds[i]["qid"] for i in range(len(ds))] == ["c0"]  # c1 has no rationale: skipped


def test_a_changed_file_or_option_is_read_again(tmp_path):
  f = write(tmp_path / "cots.jsonl", [cot(i) for i in range(3)])
  cache = str(tmp_path / "cache")
  assert len(DP.cot_source(str(f), cache_dir=cache)) == 3
  write(f, [cot(i) for i in range(4)])
  assert len(DP.cot_source(str(f), cache_dir=cache)) == 4
  assert DP.cot_source(str(f), cache_dir=cache, video_root="/x")[0]["video_path"] == "/x/v0.mp4"
  names = sorted(os.listdir(cache))
  assert len(names) == 6 and not [n for n in names if ".tmp-" in n or n.endswith(".lock")]


def test_a_file_without_its_report_is_not_trusted(tmp_path):
  """The report is written last: a run stopped between the two renames reads the file again."""
  f = write(tmp_path / "cots.jsonl", [cot(i) for i in range(3)])
  cache = str(tmp_path / "cache")
  target = cot_cache.cached_cot_jsonl(str(f), cache)
  os.remove(target + ".json")
  with open(target, "wb") as g:
    g.write(b"cut short")
  assert cot_cache.cached_cot_jsonl(str(f), cache) == target
  assert len(DP.cot_source(str(f), cache_dir=cache)) == 3
