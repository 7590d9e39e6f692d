"""`gs://` paths through a non-local filesystem: an in-memory fsspec filesystem registered for
the `gs` protocol (what `gcsfs` provides on a real pod). Nothing may land in a local `./gs:`."""

import json

import fsspec
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):
  """`gs://bucket/...` kept in memory (its own store: not the shared `memory://` one)."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix) :]
    return super()._strip_protocol(path)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  import importlib

  registry = importlib.import_module("fsspec.registry")
  saved = {p: registry._registry.get(p) for p in ("gs", "gcs")}
  for p in ("gs", "gcs"):
    fsspec.register_implementation(p, FakeGCS, clobber=True)
  FakeGCS.store.clear()
  monkeypatch.chdir(tmp_path)  # a stray os.makedirs("gs://...") would show up here
  yield tmp_path
  for p, cls in saved.items():
    if cls is None:
      registry._registry.pop(p, None)
    else:
      registry._registry[p] = cls
  FakeGCS.store.clear()
  assert not (tmp_path / "gs:").exists(), "a gs:// path was written as a local folder"


def test_metrics_and_hf_config_go_to_the_bucket(fake_gcs):
  import jax
  from aotd_jax import sharding
  from aotd_jax.train import build, metrics
  from configs.toyworld import distill as toy

  w = metrics.MetricsWriter("gs://bucket/run", tensorboard=False)
  w.write(1, {"loss": 2.0})
  w.close()
  assert json.loads(epath.Path("gs://bucket/run/metrics.jsonl").read_text())["train/loss"] == 2.0
  assert epath.Path("gs://bucket/run/curves.png").read_bytes()[:4] == b"\x89PNG"
  cfg = toy.get_config("llama")
  mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh)
  build.write_hf_config(student, "gs://bucket/run/checkpoints")
  hf_config = json.loads(epath.Path("gs://bucket/run/checkpoints/hf_config.json").read_text())
  assert hf_config["architectures"] == ["LlamaForCausalLM"]


def test_cot_shards_read_from_a_bucket_glob_or_list(fake_gcs):
  from aotd_jax.data import pipeline

  rec = {
    "qid": "q1",
    "video_path": "v1.mp4",
    "kept": True,
    "conversation": [
      {"from": "human", "value": "What? (A) a (B) b"},
      {"from": "gpt", "value": "Step 1: look. The answer is (B) b."},
    ],
  }
  epath.Path("gs://bucket/cots").mkdir(parents=True, exist_ok=True)
  for i in range(2):
    epath.Path(f"gs://bucket/cots/cot-{i}.jsonl").write_text(
      json.dumps(dict(rec, qid=f"q{i}")) + "\n"
    )
  assert pipeline.cot_files("gs://bucket/cots/cot-*.jsonl") == [
    "gs://bucket/cots/cot-0.jsonl",
    "gs://bucket/cots/cot-1.jsonl",
  ]
  ds = pipeline.cot_source(["gs://bucket/cots/cot-0.jsonl", "gs://bucket/cots/cot-1.jsonl"])
  assert len(ds) == 2
  with pytest.raises(FileNotFoundError, match="gs://bucket/cots/nope-"):
    pipeline.cot_files("gs://bucket/cots/nope-*.jsonl")
  with pytest.raises(FileNotFoundError, match="gs://bucket/cots/missing.jsonl"):
    pipeline.cot_files(["gs://bucket/cots/missing.jsonl"])


def _upload(local, url: str) -> str:
  epath.Path(url).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(url).write_bytes(open(local, "rb").read())
  return url


def test_annotation_files_read_from_a_bucket(fake_gcs):
  """NExT-QA's CSV (with the video map beside it), STAR's JSON and an MVBench folder of task
  files give the same records from `gs://` as from the local copies."""
  import os
  from aotd_jax.data import annotations

  here = os.path.dirname(os.path.abspath(__file__))
  real, fix = os.path.join(here, "fixtures", "real"), os.path.join(here, "fixtures", "annotations")
  for name in ("val.csv", "map_vid_vidorID.json"):
    _upload(os.path.join(real, "nextqa", name), f"gs://bucket/nextqa/{name}")
  _upload(os.path.join(fix, "star_val.json"), "gs://bucket/star/val.json")
  for name in sorted(os.listdir(os.path.join(fix, "mvbench"))):
    _upload(os.path.join(fix, "mvbench", name), f"gs://bucket/mvbench/{name}")
  want_nextqa = None
  cases = [
    ("nextqa", os.path.join(real, "nextqa", "val.csv"), "gs://bucket/nextqa/val.csv"),
    ("star", os.path.join(fix, "star_val.json"), "gs://bucket/star/val.json"),
    ("mvbench", os.path.join(fix, "mvbench"), "gs://bucket/mvbench"),
  ]
  for fmt, local, url in cases:
    want, got = annotations.read(fmt, local), annotations.read(fmt, url)
    assert len(got) > 0 and [r.to_json() for r in got] == [r.to_json() for r in want], fmt
    want_nextqa = want if fmt == "nextqa" else want_nextqa
  assert got[0].meta["task"] and "video_path" in annotations.read("nextqa", cases[0][2])[0].meta
  with pytest.raises(annotations.AnnotationError, match="gs://bucket/star/missing.json"):
    annotations.read("star", "gs://bucket/star/missing.json")
  from launch import evaluate  # its --map is checked on the bucket too

  mapped = evaluate.read_records("nextqa", cases[0][2], "gs://bucket/nextqa/map_vid_vidorID.json")
  assert [r.to_json() for r in mapped] == [r.to_json() for r in want_nextqa]
  with pytest.raises(
    evaluate.ConfigError, match="--map=gs://bucket/nextqa/nope.json: no such file"
  ):
    evaluate.read_records("nextqa", cases[0][2], "gs://bucket/nextqa/nope.json")


def test_videos_decode_from_a_bucket(fake_gcs):
  """A clip under a `gs://` video root decodes to the same frames as the local file (seeking
  through a file object), the frame cache keys it, and a missing one is a named decode error."""
  import numpy as np
  from aotd_jax.data import pipeline, video
  from aotd_jax.data.annotations import VideoQA

  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (40, 32, 48, 3), dtype=np.uint8)
  video.write_video("clip.mp4", frames, fps=10, gop=5)
  _upload("clip.mp4", "gs://bucket/videos/clip.mp4")
  qa = VideoQA(
    qid="q",
    video_id="clip",
    question="?",
    choices=["a", "b"],
    answer="a",
    answer_index=0,
    start=1.0,
    end=3.0,
  )
  ex = pipeline.qa_examples([qa], video_root="gs://bucket/videos")[0]
  assert ex["video_path"] == "gs://bucket/videos/clip.mp4"
  assert video.probe(ex["video_path"]) == video.probe("clip.mp4")
  want = video.read_frames("clip.mp4", 6, start=1.0, end=3.0)
  cache = video.FrameCache()
  got = video.read_frames(ex["video_path"], 6, start=1.0, end=3.0, cache=cache)
  np.testing.assert_array_equal(got, want)
  assert video.read_frames(ex["video_path"], 6, start=1.0, end=3.0, cache=cache) is got
  assert cache.hits == 1
  np.testing.assert_array_equal(video.decode_all(ex["video_path"]), video.decode_all("clip.mp4"))
  for read in (video.probe, lambda p: video.read_frames(p, 2, cache=video.FrameCache())):
    with pytest.raises(video.VideoDecodeError, match="gs://bucket/videos/nope.mp4: file not found"):
      read("gs://bucket/videos/nope.mp4")


def test_cot_shards_merge_from_and_into_a_bucket(fake_gcs):
  from aotd_jax.agent import job, merge
  from aotd_jax.data import pipeline

  rec = {
    "video_path": "v.mp4",
    "verdicts": {},
    "conversation": [
      {"from": "human", "value": "What? (A) a (B) b"},
      {"from": "gpt", "value": "Step 1. (B) b."},
    ],
  }
  for k, qids in enumerate((["q0", "q2"], ["q1"])):
    name = job.shard_name(k, 2)
    lines = [json.dumps(dict(rec, qid=q, kept=q != "q2")) + "\n" for q in qids]
    epath.Path(f"gs://bucket/cots/records-{name}.jsonl").write_text("".join(lines))
    epath.Path(f"gs://bucket/cots/stats-{name}.json").write_text("{}")
  stats = merge.merge("gs://bucket/cots")
  assert stats.total == 3
  merged = epath.Path("gs://bucket/cots/merged/records.jsonl").read_text().splitlines()
  assert [json.loads(line)["qid"] for line in merged] == ["q0", "q1", "q2"]
  assert epath.Path("gs://bucket/cots/merged/cot.array_record").exists()
  assert json.loads(epath.Path("gs://bucket/cots/merged/stats.json").read_text())["total"] == 3
  open("kept.array_record", "wb").write(
    epath.Path("gs://bucket/cots/merged/cot.array_record").read_bytes()
  )
  assert len(pipeline.cot_source("kept.array_record")) == 2  # q0 and q1 were kept


def test_hub_export_writes_to_and_reads_from_a_bucket(fake_gcs):
  """save_pretrained (sharded, with its index) and the hub files go to gs://; the weights and
  config read back from there equal a local export's, as the model rebuilt from the bucket."""
  import numpy as np
  from flax import nnx
  from aotd_jax import hf
  from aotd_jax.data.toy_tokenizer import train_tokenizer
  from aotd_jax.hf import hub, io, registry
  from configs.toyworld import distill as toy

  adapter = registry.adapter_for("LlavaOnevisionForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_ONEVISION)), rngs=nnx.Rngs(0))
  tok = str(fake_gcs / "tok")  # a local tokenizer folder copied into the bucket
  train_tokenizer(["what is on the table? the red cube."] * 10, tok, vocab_size=300)
  hf.save_pretrained(model, "gs://bucket/hf", max_shard_bytes=60_000)
  hf.save_pretrained(model, str(fake_gcs / "local"), max_shard_bytes=60_000)
  written = hub.write_hub_files(
    "gs://bucket/hf",
    hf_config=io.read_config("gs://bucket/hf"),
    tokenizer_dir=tok,
    config={"rationale_weight": 0.5},
  )
  names = {p.name for p in epath.Path("gs://bucket/hf").iterdir()}
  assert {
    "model.safetensors.index.json",
    "config.json",
    "README.md",
    "tokenizer.json",
    "chat_template.jinja",
    "preprocessor_config.json",
  } <= names and set(written) <= names
  assert sum(n.endswith(".safetensors") for n in names) > 1
  assert "λ (rationale weight): 0.5" in epath.Path("gs://bucket/hf/README.md").read_text()
  remote, origin = io.read_tensors("gs://bucket/hf")
  local, _ = io.read_tensors(str(fake_gcs / "local"))
  assert set(remote) == set(local) and all(
    o.startswith("gs://bucket/hf/model-") for o in origin.values()
  )
  for key, value in local.items():
    np.testing.assert_array_equal(remote[key], value)
  assert hf.from_pretrained("gs://bucket/hf").config == model.config
