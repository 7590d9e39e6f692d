"""The trainer's data read through the annotation cache (`config.data.cache_dir`) yields what
the in-memory parse yields: the same examples in the same order under both mixings, with
`max_examples` and per-host sharding, and the same batches from Grain worker processes."""

import json
import os
import pickle
import types

import ml_collections
import numpy as np
import pytest

from aotd_jax.data import pipeline
from aotd_jax.data import video as V
from aotd_jax.train import data as train_data
from aotd_jax.train.config_check import ConfigError
from fixtures.tiny_tokenizer import make_tokenizer
from test_record_cache import ANN, agqa_file

STUDENT = types.SimpleNamespace(
  config=types.SimpleNamespace(
    vision_config=types.SimpleNamespace(image_size=8), video_tokens=lambda frames: 2 * frames
  )
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """2,000 AGQA questions over 7 real tiny videos, CLEVRER's fixture (one question without a
  single answer), ActivityNet-QA with .mkv videos, and a CoT file."""
  d = tmp_path_factory.mktemp("cache_world")
  (d / "videos").mkdir()
  rng = np.random.default_rng(0)
  for v in range(7):
    frames = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    V.write_video(d / "videos" / f"V{v}.mp4", frames, 10)
  agqa_file(d / "train_balanced.txt", 2000)
  q = [{"video_name": f"n{i}", "question": f"q{i}", "question_id": f"v_n{i}_0"} for i in range(3)]
  a = [{"question_id": f"v_n{i}_0", "answer": "yes", "type": 3} for i in range(3)]
  (d / "train_q.json").write_text(json.dumps(q))
  (d / "train_a.json").write_text(json.dumps(a))
  (d / "anet").mkdir()
  for i in range(3):
    (d / "anet" / f"v_n{i}.mkv").write_bytes(b"")
  (d / "clevrer" / "video_10000-11000").mkdir(parents=True)
  for name in ("video_10000.mp4", "video_10001.mp4"):
    (d / "clevrer" / "video_10000-11000" / name).write_bytes(b"")
  with open(d / "cot.jsonl", "w") as f:
    for i in range(5):
      turns = [{"from": "human", "value": f"<video>\nwhat did they hold {i}?"}]
      turns.append({"from": "gpt", "value": f"they hold a cup {i}, so yes"})
      f.write(json.dumps({"qid": f"c{i}", "video_path": "V1.mp4", "conversation": turns}) + "\n")
  return d


def config(d, **data) -> ml_collections.ConfigDict:
  datasets = dict(
    agqa=dict(
      format="agqa",
      annotations=str(d / "train_balanced.txt"),
      video_root=str(d / "videos"),
      cots=str(d / "cot.jsonl"),
      max_examples=0,
    ),
    clevrer=dict(
      format="clevrer",
      annotations=str(ANN / "clevrer_validation.json"),
      video_root=str(d / "clevrer"),
      cots="",
      max_examples=0,
    ),
    activitynet_qa=dict(
      format="activitynet_qa",
      annotations=str(d / "train_q.json"),
      video_root=str(d / "anet"),
      cots="",
      max_examples=0,
    ),
  )
  base = dict(
    kind="pipeline",
    tokenizer="unused",
    seq_len=96,
    num_frames=2,
    decode_size=16,
    fit_check=False,
    prompt_format="official",
    answer_style="letter",
    window="whole",
    datasets=datasets,
  )
  return ml_collections.ConfigDict(dict(batch_size=4, seed=3, data={**base, **data}))


def sources(monkeypatch, cfg, cache_dir):
  """The tagged sources, weights and `PipelineConfig` that `make_pipeline_data` hands on."""
  got = {}

  def capture(tokenizer, sources, pc, *, weights):
    got.update(sources=sources, pc=pc, weights=weights)

  monkeypatch.setattr(pipeline, "make_pipeline", capture)
  train_data.make_pipeline_data(cfg, STUDENT, tokenizer=object(), cache_dir=cache_dir)
  return got


@pytest.mark.parametrize("mixing", ["concat_epoch", "weighted"])
@pytest.mark.parametrize("max_examples", [0, 300])
def test_the_cached_path_yields_the_same_stream(world, monkeypatch, mixing, max_examples):
  cfg = config(world, mixing=mixing)
  cfg.data.datasets.agqa.max_examples = max_examples
  memory = sources(monkeypatch, cfg, "")
  cached = sources(monkeypatch, cfg, str(world / "cache"))  # parsed by the first case only
  assert memory["weights"] == cached["weights"] and memory["pc"] == cached["pc"]
  for a, b in zip(memory["sources"], cached["sources"], strict=True):
    assert len(a) == len(b) and [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
  (anet,) = [ds for ds in cached["sources"] if "activitynet_qa" in ds[0]["source"]]
  assert {anet[i]["video_path"].rsplit(".", 1)[1] for i in range(3)} == {"mkv"}
  # the CoT JSONL too: read once into the cache folder, not pickled into every worker
  (cots,) = [ds for ds in cached["sources"] if ds[0]["mode"] == "cot"]
  (in_memory,) = [ds for ds in memory["sources"] if ds[0]["mode"] == "cot"]
  assert b"they hold a cup 3" in pickle.dumps(in_memory)
  assert b"they hold a cup 3" not in pickle.dumps(cots) and cots[3] == in_memory[3]
  assert any(n.startswith("cot-cot.jsonl-") for n in os.listdir(world / "cache"))
  for count in (1, 2):  # one host; host 1 of 2
    mixed = []
    for got in (memory, cached):
      ds = pipeline.mix_sources(got["sources"], got["weights"], seed=cfg.seed, mixing=mixing)
      ds = ds[count - 1 :: count]
      mixed.append([ds[i] for i in range(900)])
    assert mixed[0] == mixed[1]


def test_worker_processes_give_the_same_batches(world):
  """Grain's spawned workers unpickle the cached source (a path) and decode the same batches."""
  tok = make_tokenizer(
    [f"what did they hold {i}? yes no! Question Options" for i in range(2000)]
    + ["they hold a cup , so yes"]
  )
  cfg = config(world, mixing="concat_epoch", num_workers=2)
  del cfg.data.datasets["clevrer"], cfg.data.datasets["activitynet_qa"]  # videos of empty files
  got = {}
  for cache_dir in ("", str(world / "cache")):
    it = train_data.make_pipeline_data(cfg, STUDENT, tokenizer=tok, cache_dir=cache_dir)
    try:
      got[cache_dir] = [next(it) for _ in range(3)]
    finally:
      it.close()
  (memory, cached) = got.values()
  for a, b in zip(memory, cached):
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_cache_dir_resolution():
  data = ml_collections.ConfigDict(dict(cache_dir=""))
  assert train_data.data_cache_dir(data, "/runs/r1") == "/runs/r1/data_cache"
  assert train_data.data_cache_dir(data, "gs://bucket/r1").endswith("aotd_jax_data_cache")
  assert train_data.data_cache_dir(data, "") == ""
  data.cache_dir = "off"
  assert train_data.data_cache_dir(data, "/runs/r1") == ""
  data.cache_dir = "/local/ssd/cache"
  assert train_data.data_cache_dir(data, "gs://bucket/r1") == "/local/ssd/cache"
  data.cache_dir = "gs://bucket/cache"
  with pytest.raises(ConfigError, match=r"^--config\.data\.cache_dir=gs://bucket/cache: must be"):
    train_data.data_cache_dir(data, "/runs/r1")
  cfg = ml_collections.ConfigDict(dict(data=dict(kind="pipeline", cache_dir="gs://bucket/c")))
  with pytest.raises(ConfigError, match="cache_dir=gs://bucket/c"):  # before the student's load
    train_data.check_paths(cfg)
