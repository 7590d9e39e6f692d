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
        path = path[len(prefix):]
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
  from configs.distill import toy
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
  rec = {"qid": "q1", "video_path": "v1.mp4", "kept": True,
         "conversation": [{"from": "human", "value": "What? (A) a (B) b"},
                          {"from": "gpt", "value": "Step 1: look. The answer is (B) b."}]}
  epath.Path("gs://bucket/cots").mkdir(parents=True, exist_ok=True)
  for i in range(2):
    epath.Path(f"gs://bucket/cots/cot-{i}.jsonl").write_text(
        json.dumps(dict(rec, qid=f"q{i}")) + "\n")
  assert pipeline.cot_files("gs://bucket/cots/cot-*.jsonl") == [
      "gs://bucket/cots/cot-0.jsonl", "gs://bucket/cots/cot-1.jsonl"]
  ds = pipeline.cot_source(["gs://bucket/cots/cot-0.jsonl", "gs://bucket/cots/cot-1.jsonl"])
  assert len(ds) == 2
  with pytest.raises(FileNotFoundError, match="gs://bucket/cots/nope-"):
    pipeline.cot_files("gs://bucket/cots/nope-*.jsonl")
  with pytest.raises(FileNotFoundError, match="gs://bucket/cots/missing.jsonl"):
    pipeline.cot_files(["gs://bucket/cots/missing.jsonl"])
