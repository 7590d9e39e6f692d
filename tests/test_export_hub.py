"""A Hub-ready export: transformers' Auto classes load the folder (tokenizer, generation config,
the model from sharded safetensors), the card names base model / datasets / λ / CoT summary,
and nothing of the project's own files is in it."""
import json
import os

import numpy as np
import pytest

from aotd_jax import hf
from aotd_jax.hf import hub, io

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ALLOWED = {"config.json", "generation_config.json", "README.md", "model.safetensors",
           "model.safetensors.index.json", *hub.TOKENIZER_FILES, *hub.PROCESSOR_FILES}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  import jax
  from aotd_jax import sharding
  from aotd_jax.data.toy_tokenizer import train_tokenizer
  from aotd_jax.train import build
  from configs.toyworld import distill as toy
  tmp = tmp_path_factory.mktemp("export")
  cfg = toy.get_config("llava")
  mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh)
  out, tok = str(tmp / "hub"), str(tmp / "tok")
  hf.save_pretrained(student, out, max_shard_bytes=60_000)  # several shards + an index
  train_tokenizer(["what is on the table? the red cube.", "step 1: find the cube"] * 20, tok,
                  vocab_size=300)
  config = json.loads(cfg.to_json_best_effort())
  config["student"]["hf_dir"] = "/models/LLaVA-NeXT-Video-7B-hf"
  config["data"]["datasets"] = {"star": {}, "nextqa": {}}
  manifest = {"roles": {"program": {"kind": "real", "model": "Qwen2.5-Coder"}},
              "counts": {"kept": 3, "total": 5}}
  hub.write_hub_files(out, hf_config=io.read_config(out), tokenizer_dir=tok, config=config,
                      manifest=manifest)
  return out


def test_folder_holds_hub_files_only(export_dir):
  names = set(os.listdir(export_dir))
  shards = {n for n in names if n.startswith("model-") and n.endswith(".safetensors")}
  assert len(shards) > 1 and "model.safetensors.index.json" in names
  assert names - shards <= ALLOWED, names - shards - ALLOWED
  assert {"tokenizer.json", "generation_config.json", "README.md"} <= names
  config = io.read_config(export_dir)
  text = config["text_config"]
  assert config["rope_theta"] == text.get("rope_theta", text.get("rope_parameters", {}).get("rope_theta"))
  assert config["rope_theta"] == 10000.0


def test_model_card_names_base_model_datasets_lambda_and_cots(export_dir):
  card = open(os.path.join(export_dir, "README.md")).read()
  front = card.split("---")[1]
  assert "library_name: transformers" in front and "license:" in front
  assert "base_model: LLaVA-NeXT-Video-7B-hf" in front
  assert "- star" in front and "- nextqa" in front
  assert "λ (rationale weight): 1.0" in card
  assert "program: real Qwen2.5-Coder" in card and "kept 3" in card
  assert "/models/" not in card  # no local paths


def test_transformers_auto_classes_load_the_export(export_dir):
  tok = transformers.AutoTokenizer.from_pretrained(export_dir)
  assert tok("the red cube")["input_ids"]
  gen = transformers.GenerationConfig.from_pretrained(export_dir)
  assert gen.eos_token_id == 2 and gen.do_sample is False
  model = transformers.AutoModelForImageTextToText.from_pretrained(export_dir)
  assert type(model).__name__ == "LlavaNextVideoForConditionalGeneration"
  ours = io.read_tensors(export_dir)[0]
  theirs = dict(model.state_dict())
  key = "model.language_model.norm.weight" if "model.language_model.norm.weight" in theirs else None
  if key is None:
    key = next(k for k in theirs if k.endswith("language_model.norm.weight"))
  ours_key = next(k for k in ours if k.endswith("norm.weight") and "language_model" in k
                  and "layers" not in k)
  np.testing.assert_array_equal(theirs[key].numpy(), ours[ours_key])


def test_auto_processor_loads_the_export(export_dir, tmp_path):
  pytest.importorskip("torchvision", reason="transformers' LLaVA-NeXT-Video video processor "
                      "needs torchvision, which this environment does not install")
  processor = transformers.LlavaNextVideoProcessor(
      image_processor=transformers.LlavaNextImageProcessor(),
      video_processor=transformers.AutoVideoProcessor.from_pretrained(
          "llava-hf/LLaVA-NeXT-Video-7B-hf", local_files_only=True),
      tokenizer=transformers.AutoTokenizer.from_pretrained(export_dir))
  processor.save_pretrained(tmp_path)
  hub.copy_tokenizer_files(str(tmp_path), export_dir)
  assert transformers.AutoProcessor.from_pretrained(export_dir) is not None
