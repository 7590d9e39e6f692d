"""Grain pipeline: batches and masks, resume on the exact next batch, mixture ratios, bad
videos and CoT records counted and skipped, host sharding, global arrays, worker processes."""

import collections
import json

import grain
import jax
import numpy as np
import pytest

from aotd_jax import sharding
from aotd_jax.data import conversation as C
from aotd_jax.data import pipeline as DP
from aotd_jax.data import video as V
from aotd_jax.data.annotations import VideoQA
from fixtures.tiny_tokenizer import make_tokenizer

CFG = dict(batch_size=4, num_frames=2, image_size=8, decode_size=16, buckets=(64, 96, 128))


def tiny_frames(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = tmp_path_factory.mktemp("pipe")
  records, cot = [], []
  for i in range(6):
    V.write_video(d / f"vid{i}.mp4", tiny_frames(20, i), 10)
    choices = [f"object{i} {j}" for j in range(3)]
    records.append(
      VideoQA(
        qid=f"q{i}",
        video_id=f"vid{i}",
        question=f"what moved {i}",
        choices=choices,
        answer=choices[i % 3],
        answer_index=i % 3,
        start=0.2 if i % 2 else None,
        end=1.5 if i % 2 else None,
      )
    )
    cot.append(
      {
        "qid": f"c{i}",
        "video_path": f"vid{i}.mp4",
        "conversation": [
          {"from": "human", "value": f"<video>\nwhat moved {i}"},
          {"from": "gpt", "value": f"first object{i} moves so the answer is {i}"},
        ],
      }
    )
  with open(d / "cot.jsonl", "w") as f:
    for rec in cot:
      f.write(json.dumps(rec) + "\n")
  texts = [r.question for r in records] + [c for r in records for c in r.choices]
  texts += [c["conversation"][1]["value"] for c in cot]
  return {"dir": d, "records": records, "cot": cot, "tok": make_tokenizer(texts)}


def build(world, **kw):
  src = [
    DP.qa_source(world["records"], video_root=str(world["dir"])),
    DP.cot_source(world["dir"] / "cot.jsonl", video_root=str(world["dir"])),
  ]
  weights = kw.pop("weights", [0.5, 0.5])
  mesh = kw.pop("mesh", None)
  pcount = kw.pop("process_count", None)
  pindex = kw.pop("process_index", None)
  cfg = DP.PipelineConfig(**{**CFG, **kw})
  return DP.make_pipeline(
    world["tok"], src, cfg, weights=weights, mesh=mesh, process_index=pindex, process_count=pcount
  )


def test_batch_layout_and_masks(world):
  it = build(world)
  batch = next(it)
  B, L = batch["input_ids"].shape
  assert B == 4 and L == 64
  for k in ("input_ids", "attention_mask", "label_mask", "rationale_mask"):
    assert batch[k].dtype == np.int32 and batch[k].shape == (B, L)
  assert batch["pixel_values_videos"].shape == (B, 2, 3, 8, 8)
  assert batch["pixel_values_videos"].dtype == np.float32
  assert batch["qid"].dtype == object
  tok = world["tok"]
  by_qid = {r.qid: r for r in world["records"]}
  cot_by_qid = {c["qid"]: c for c in world["cot"]}
  for b in range(B):
    n = int(batch["attention_mask"][b].sum())
    assert (batch["attention_mask"][b, :n] == 1).all() and (
      batch["input_ids"][b, n:] == tok.pad_token_id
    ).all()
    label, rat = batch["label_mask"][b], batch["rationale_mask"][b]
    assert not (label & rat).any() and not label[n:].any() and not rat[n:].any()
    qid = batch["qid"][b]
    mask = label if qid.startswith("q") else rat
    assert not (rat if qid.startswith("q") else label).any()
    target = tok.decode(batch["input_ids"][b][mask.astype(bool)])
    if qid.startswith("q"):
      r = by_qid[qid]
      assert target == f"( {'ABC'[r.answer_index]} ) {r.answer} </s>"
    else:
      assert target == cot_by_qid[qid]["conversation"][1]["value"] + " </s>"
    # the targets are exactly the tokens after the prompt's final "ASSISTANT :"
    toks = tok.convert_ids_to_tokens(batch["input_ids"][b, :n].tolist())
    start = max(i for i in range(n - 1) if toks[i : i + 2] == ["ASSISTANT", ":"]) + 2
    np.testing.assert_array_equal(mask[:n], [0] * start + [1] * (n - start))
    prompt = tok.decode(batch["input_ids"][b, :start])
    suffix = C.ANSWER_SUFFIX if qid.startswith("q") else C.RATIONALE_SUFFIX
    assert tok.decode(tok(suffix, add_special_tokens=False)["input_ids"]) in prompt
  assert it.stats() == {"skipped": {}, "truncated": 0}


def test_pixels_are_the_processed_window(world):
  it = build(world, shuffle=False, weights=[1.0, 0.0], batch_size=1)
  batch = next(it)
  r = next(r for r in world["records"] if r.qid == batch["qid"][0])
  from aotd_jax.data import video_processing

  frames = V.read_frames(world["dir"] / f"{r.video_id}.mp4", 2, start=r.start, end=r.end, size=16)
  expect = video_processing.preprocess_video(frames, shortest_edge=8, crop_size=8)
  np.testing.assert_allclose(batch["pixel_values_videos"][0], expect, rtol=0, atol=0)


def test_resume_gives_the_same_next_batches(world):
  run = build(world)
  for _ in range(3):
    next(run)
  state = json.loads(json.dumps(run.get_state()))  # what Orbax JsonSave stores
  expected = [next(run) for _ in range(4)]
  resumed = build(world)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_mixture_ratio_over_10k_samples():
  qa = grain.MapDataset.source([{"mode": "qa", "i": i} for i in range(37)])
  cot = grain.MapDataset.source([{"mode": "cot", "i": i} for i in range(11)])
  mixed = DP.mix_sources([qa, cot], [0.7, 0.3], seed=3)
  modes = collections.Counter(mixed[i]["mode"] for i in range(10_000))
  assert abs(modes["qa"] / 10_000 - 0.7) < 0.01
  # every epoch of a source is a fresh permutation (reshuffled per epoch)
  qa_seen = [mixed[i]["i"] for i in range(10_000) if mixed[i]["mode"] == "qa"]
  assert sorted(qa_seen[:37]) == list(range(37)) and qa_seen[:37] != qa_seen[37:74]
  with pytest.raises(ValueError, match="2 weights for 1 sources"):
    DP.mix_sources([qa], [0.5, 0.5])
  with pytest.raises(ValueError, match="weights must be >= 0"):
    DP.mix_sources([qa, cot], [1.0, -1.0])
  with pytest.raises(ValueError, match="source 1 is empty"):
    DP.mix_sources([qa, grain.MapDataset.source([])])


def test_concat_epoch_mixing_sees_every_example_once_per_epoch():
  """The official recipe: sources concatenated and shuffled together (CoTs are ~11/48 here,
  their share of the data, not a weight), reshuffled each epoch."""
  qa = grain.MapDataset.source([("qa", i) for i in range(37)])
  cot = grain.MapDataset.source([("cot", i) for i in range(11)])
  mixed = DP.mix_sources([qa, cot], None, seed=3, mixing="concat_epoch")
  everything = sorted([("qa", i) for i in range(37)] + [("cot", i) for i in range(11)])
  first, second = [mixed[i] for i in range(48)], [mixed[i] for i in range(48, 96)]
  assert sorted(first) == everything and sorted(second) == everything
  assert first != second and first != sorted(first)
  assert mixed[5] == DP.mix_sources([qa, cot], [1.0, 1.0], seed=3, mixing="concat_epoch")[5]
  one_epoch = DP.mix_sources([qa, cot], seed=3, num_epochs=1, mixing="concat_epoch")
  assert len(one_epoch) == 48
  with pytest.raises(ValueError, match="takes no weights"):
    DP.mix_sources([qa, cot], [0.7, 0.3], mixing="concat_epoch")
  with pytest.raises(ValueError, match="mixing='by_size'"):
    DP.mix_sources([qa, cot], mixing="by_size")


def test_an_epochs_permutation_is_made_once_however_many_threads_read(monkeypatch):
  """A Grain worker reads with 16 threads: each made its own permutation (two arrays of 8 B a
  question) before the first was cached, ~+490 MB per worker for 4M questions."""
  import pickle
  import threading
  import time

  made = []
  real = np.random.default_rng

  class SlowRng:  # a permutation slow enough that every thread asks before one is cached
    def __init__(self, seed):
      self.rng = real(seed)

    def permutation(self, n):
      made.append(n)
      time.sleep(0.05)
      return self.rng.permutation(n)

  src = grain.MapDataset.source(list(range(1000)))
  want = [DP.EpochShuffle(src, seed=7, num_epochs=None)[i] for i in range(2000)]
  monkeypatch.setattr(np.random, "default_rng", SlowRng)
  ds = pickle.loads(pickle.dumps(DP.EpochShuffle(src, seed=7, num_epochs=None)))  # a worker's
  start, got = threading.Barrier(16), {}

  def read(t):
    start.wait()
    for i in range(t, 1000, 16):
      got[i] = ds[i]

  threads = [threading.Thread(target=read, args=(t,)) for t in range(16)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert made == [1000] and [got[i] for i in range(1000)] == want[:1000]
  assert ds._perm[1].dtype == np.int32
  assert [ds[i] for i in range(1000, 2000)] == want[1000:] and made == [1000, 1000]


def test_mixture_in_batches(world):
  it = build(world, weights=[0.75, 0.25], batch_size=4)
  qids = [q for _ in range(25) for q in next(it)["qid"]]
  frac = sum(q.startswith("q") for q in qids) / len(qids)
  assert abs(frac - 0.75) < 0.05


def test_bad_videos_and_records_are_counted_not_fatal(world, tmp_path):
  d = world["dir"]
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  recs = world["records"][:2] + [
    VideoQA(
      qid="missing",
      video_id="nowhere",
      question="what moved 0",
      choices=["a", "b"],
      answer="a",
      answer_index=0,
    ),
    VideoQA(
      qid="broken",
      video_id=str(tmp_path / "broken"),
      question="what moved 0",
      choices=["a", "b"],
      answer="a",
      answer_index=0,
    ),
  ]
  with open(tmp_path / "cot.jsonl", "w") as f:
    f.write(json.dumps(world["cot"][0]) + "\n{not json\n")
    f.write(
      json.dumps(
        {"qid": "x", "video_path": "vid0.mp4", "conversation": [{"from": "gpt", "value": "x"}]}
      )
      + "\n"
    )
  rows, report = DP.read_cot_jsonl(str(tmp_path / "cot.jsonl"))
  assert len(rows) == 1 and report.num_skipped == 2
  assert report.messages[0].startswith(f"{tmp_path / 'cot.jsonl'}:2:")
  assert report.messages[1].startswith(f"{tmp_path / 'cot.jsonl'}:3: conversation must be")
  src = [DP.qa_source(recs, video_root=str(d))]
  cfg = DP.PipelineConfig(**{**CFG, "batch_size": 2, "num_epochs": 1, "shuffle": False})
  it = DP.make_pipeline(world["tok"], src, cfg)
  batch = next(it)
  assert list(batch["qid"]) == ["q0", "q1"]
  with pytest.raises(StopIteration):
    next(it)
  assert it.stats()["skipped"] == {"video": 2}
  msgs = list(it.skips.messages)
  assert "qid missing" in msgs[0] and "nowhere.mp4: file not found" in msgs[0]
  assert "broken.mp4: cannot open" in msgs[1]


def test_array_record_cot_source(world, tmp_path):
  path = tmp_path / "cot.array_record"
  DP.write_cot_array_record(path, world["cot"][:3] + [{"qid": "bad"}])
  ds = DP.cot_source(path, video_root=str(world["dir"]))
  assert len(ds) == 4 and ds[0]["qid"] == "c0" and ds[0]["mode"] == "cot"
  assert ds[0]["user_text"] == f"what moved 0\n{C.RATIONALE_SUFFIX}"
  assert DP.SKIP in ds[3]
  assert "cot.array_record[3]: malformed CoT record: missing field 'conversation'" in ds[3][DP.SKIP]
  cfg = DP.PipelineConfig(**{**CFG, "batch_size": 3, "num_epochs": 1, "shuffle": False})
  it = DP.make_pipeline(world["tok"], [ds], cfg)
  assert sorted(next(it)["qid"]) == ["c0", "c1", "c2"]
  with pytest.raises(StopIteration):
    next(it)
  assert it.stats()["skipped"] == {"record": 1}
  with pytest.raises(ValueError, match="must be .jsonl or .array_record"):
    DP.cot_source(world["dir"] / "vid0.mp4")
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    DP.cot_source(tmp_path / "nope.jsonl")


def test_per_host_shards_are_disjoint(world):
  def qids(**kw):
    it = build(world, num_epochs=1, shuffle=False, weights=[1.0, 0.0], batch_size=2, **kw)
    return [q for b in it for q in b["qid"]]

  hosts = [qids(process_index=i, process_count=2) for i in range(2)]
  assert not set(hosts[0]) & set(hosts[1])
  assert sorted(hosts[0] + hosts[1]) == sorted(qids())
  with pytest.raises(ValueError, match="batch_size 3 does not divide over 2 hosts"):
    build(world, batch_size=3, process_index=0, process_count=2)


def test_global_arrays_on_mesh(world):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  it = build(world, mesh=mesh, batch_size=4)
  batch = next(it)
  assert isinstance(batch["input_ids"], jax.Array) and batch["input_ids"].shape[0] == 4
  assert batch["pixel_values_videos"].sharding.spec[0] == ("data", "fsdp")
  assert isinstance(batch["qid"], np.ndarray)


def test_bad_config(world):
  with pytest.raises(ValueError, match="buckets must be positive"):
    build(world, buckets=())


def test_workers_give_the_same_batches(world):
  """Decoding in 2 worker processes yields what decoding in-process yields."""
  plain = build(world)
  want = [next(plain) for _ in range(3)]
  workers = build(world, num_workers=2)
  try:
    got = [next(workers) for _ in range(3)]
  finally:
    workers.close()
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(g[k], w[k])


@pytest.mark.slow
def test_workers_resume(world):
  """State taken from a 2-worker pipeline restores a new 2-worker pipeline on the next batch."""
  plain = build(world)
  want = [next(plain) for _ in range(4)]
  workers = build(world, num_workers=2)
  try:
    next(workers), next(workers)
    state = json.loads(json.dumps(workers.get_state()))
  finally:
    workers.close()
  resumed = build(world, num_workers=2)
  try:
    resumed.set_state(state)
    for w in want[2:]:
      np.testing.assert_array_equal(next(resumed)["input_ids"], w["input_ids"])
  finally:
    resumed.close()
