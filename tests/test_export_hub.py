"""A Hub-ready export: transformers' Auto classes load the folder (tokenizer, generation config,
the model from sharded safetensors), the card names base model / datasets / λ / CoT summary,
and nothing of the project's own files is in it."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from aotd_jax import hf
from aotd_jax.hf import hub, io

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ALLOWED = {
  "config.json",
  "generation_config.json",
  "README.md",
  "model.safetensors",
  "model.safetensors.index.json",
  "aotd_training.json",
  *hub.TOKENIZER_FILES,
  *hub.PROCESSOR_FILES,
}


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
  train_tokenizer(
    ["what is on the table? the red cube.", "step 1: find the cube"] * 20, tok, vocab_size=300
  )
  config = json.loads(cfg.to_json_best_effort())
  config["student"]["hf_dir"] = "/models/LLaVA-NeXT-Video-7B-hf"
  config["data"]["datasets"] = {"star": {}, "nextqa": {}}
  manifest = {
    "roles": {"program": {"kind": "real", "model": "Qwen2.5-Coder"}},
    "counts": {"kept": 3, "total": 5},
  }
  hub.write_hub_files(
    out, hf_config=io.read_config(out), tokenizer_dir=tok, config=config, manifest=manifest
  )
  return out


def test_folder_holds_hub_files_only(export_dir):
  names = set(os.listdir(export_dir))
  shards = {n for n in names if n.startswith("model-") and n.endswith(".safetensors")}
  assert len(shards) > 1 and "model.safetensors.index.json" in names
  assert names - shards <= ALLOWED, names - shards - ALLOWED
  assert {"tokenizer.json", "generation_config.json", "README.md"} <= names
  assert set(hub.PROCESSOR_FILES) <= names  # written from the model's config
  config = io.read_config(export_dir)
  text = config["text_config"]
  assert config["rope_theta"] == text.get(
    "rope_theta", text.get("rope_parameters", {}).get("rope_theta")
  )
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
  with open(os.path.join(export_dir, "tokenizer_config.json")) as f:  # a class 4.x knows too
    tok_config = json.load(f)
  assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
  # 5's inputs, spelt out for 4.x (whose PreTrainedTokenizerFast would add token_type_ids)
  assert tok_config["model_input_names"] == ["input_ids", "attention_mask"] == tok.model_input_names
  # 5's list of extra special tokens, in the key 4.x reads as a list (4.47+ wants a dict there)
  assert tok_config["additional_special_tokens"] == ["<video>", "<image>"]
  assert "extra_special_tokens" not in tok_config
  assert tok.decode(tok("<video> cube")["input_ids"], skip_special_tokens=True).strip() == "cube"
  gen = transformers.GenerationConfig.from_pretrained(export_dir)
  assert gen.eos_token_id == 2 and gen.do_sample is False
  model = transformers.AutoModelForImageTextToText.from_pretrained(export_dir)
  assert type(model).__name__ == "LlavaNextVideoForConditionalGeneration"
  ours = io.read_tensors(export_dir)[0]
  theirs = dict(model.state_dict())
  key = "model.language_model.norm.weight" if "model.language_model.norm.weight" in theirs else None
  if key is None:
    key = next(k for k in theirs if k.endswith("language_model.norm.weight"))
  ours_key = next(
    k for k in ours if k.endswith("norm.weight") and "language_model" in k and "layers" not in k
  )
  np.testing.assert_array_equal(theirs[key].numpy(), ours[ours_key])


def _student_config(export_dir):
  from aotd_jax.hf import llava_next_video

  return llava_next_video.config_from_hf(io.read_config(export_dir))


def _frames(num_frames=3, height=40, width=52):
  return np.random.default_rng(0).integers(0, 255, (num_frames, height, width, 3), dtype=np.uint8)


def test_processor_files_load_in_transformers_own_classes(export_dir):
  """Without torchvision (transformers 5 cannot build `LlavaNextVideoProcessor` then: its
  argument check needs `BaseVideoProcessor`): the export's three processor files, each read by
  transformers' own class, make the student's inputs. `<video>` / `<image>` expand, by the
  processor's own expansion code fed the values it read, to the model's token counts; the
  image processor `AutoImageProcessor` picks (PIL backend) makes the student's pixels."""
  import functools
  import types
  from PIL import Image
  from transformers.models.llava_next_video.processing_llava_next_video import (
    LlavaNextVideoProcessor,
  )
  from transformers.models.llava_next_video.video_processing_llava_next_video import (
    LlavaNextVideoVideoProcessor,
  )
  from aotd_jax.data import video_processing

  cfg = _student_config(export_dir)
  size = cfg.vision_config.image_size
  video_processor = LlavaNextVideoVideoProcessor.from_pretrained(export_dir)
  assert video_processor.size == {"shortest_edge": size} and video_processor.resample == 3
  assert video_processor.crop_size == {"height": size, "width": size}
  assert list(video_processor.image_mean) == list(video_processing.CLIP_MEAN)
  image_processor = transformers.AutoImageProcessor.from_pretrained(export_dir)
  settings, _ = LlavaNextVideoProcessor.get_processor_dict(export_dir, local_files_only=True)
  assert settings["processor_class"] == "LlavaNextVideoProcessor"
  tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
  assert tokenizer.convert_tokens_to_ids(settings["video_token"]) == cfg.video_token_index
  assert tokenizer.convert_tokens_to_ids(settings["image_token"]) == cfg.image_token_index
  proc = types.SimpleNamespace(
    image_processor=image_processor, **{k: v for k, v in settings.items() if k != "processor_class"}
  )
  for name in ("_get_unpadded_features", "_get_number_of_features"):
    setattr(proc, name, functools.partial(getattr(LlavaNextVideoProcessor, name), proc))
  clip = video_processing.preprocess_video(_frames(), shortest_edge=size, crop_size=size)
  expanded = LlavaNextVideoProcessor.replace_video_token(proc, {"pixel_values_videos": [clip]}, 0)
  assert expanded.count("<video>") == cfg.video_tokens(3) > 0
  image = _frames(1, 44, 70)[0]
  inputs = image_processor([Image.fromarray(image)], return_tensors="np")
  expanded = LlavaNextVideoProcessor.replace_image_token(proc, inputs, 0)
  assert expanded.count("<image>") == cfg.image_tokens(image.shape[:2]) > 0
  ours, image_size = video_processing.preprocess_image(
    image, shortest_edge=size, crop_size=size, image_grid_pinpoints=cfg.image_grid_pinpoints
  )
  assert tuple(inputs["image_sizes"][0]) == image_size
  np.testing.assert_allclose(inputs["pixel_values"][0][: len(ours)], ours, atol=1e-5)


def test_auto_processor_loads_the_export(export_dir):
  """Where torchvision imports: AutoProcessor.from_pretrained(export) alone loads the export and
  expands a clip's <video> to the model's token count."""
  from tests.test_export_processors import _torchvision_or_skip

  _torchvision_or_skip()
  cfg = _student_config(export_dir)
  processor = transformers.AutoProcessor.from_pretrained(export_dir)
  out = processor(text="<video> what happens?", videos=[_frames()], return_tensors="np")
  assert (out["input_ids"] == cfg.video_token_index).sum() == cfg.video_tokens(3)
  size = cfg.vision_config.image_size
  assert out["pixel_values_videos"].shape == (1, 3, 3, size, size)


def test_the_exported_chat_template_renders_the_training_prompt(export_dir):
  """The toy tokenizer has no chat template, so the student trained on the plain format; the
  export's template makes its tokenizer render exactly that prompt (the evaluation of the
  export sees what training saw)."""
  from aotd_jax.data import conversation

  tok = transformers.AutoTokenizer.from_pretrained(export_dir)
  assert tok.chat_template == conversation.PLAIN_CHAT_TEMPLATE
  with open(os.path.join(export_dir, "tokenizer_config.json")) as f:  # where 4.x reads it
    assert json.load(f)["chat_template"] == conversation.PLAIN_CHAT_TEMPLATE
  for media in ("video", "image", None):
    for answer in (None, "Step 1: look. (B) b."):
      want = conversation.build_prompt(
        None, "What? (A) a (B) b", assistant_text=answer, media=media
      )
      got = conversation.build_prompt(tok, "What? (A) a (B) b", assistant_text=answer, media=media)
      assert got == want, (media, answer)
  text = tok.apply_chat_template(
    [
      {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "yo"},
      {"role": "user", "content": "again"},
    ],
    tokenize=False,
  )
  assert text == "USER: hi ASSISTANT: yo USER: again ASSISTANT:"


def test_exporting_again_into_the_folder_keeps_the_chat_template(export_dir, tmp_path):
  """A second export into a folder holding the first one's chat_template.jinja still writes the
  template into the freshly copied tokenizer_config.json (the source folder decides)."""
  import shutil
  from aotd_jax.data import conversation

  again = tmp_path / "again"
  shutil.copytree(export_dir, again)
  hub.write_hub_files(
    str(again),
    hf_config=io.read_config(str(again)),
    tokenizer_dir=os.path.join(os.path.dirname(export_dir), "tok"),
  )
  with open(again / "tokenizer_config.json") as f:
    assert json.load(f)["chat_template"] == conversation.PLAIN_CHAT_TEMPLATE


def test_launch_export_from_a_training_checkpoint(tmp_path):
  """launch.export on a trainer-style workdir (model / opt_state / meta / data items, the run's
  config in meta, hf_config.json): the student's weights, the tokenizer of the config's
  student.hf_dir, a card naming base model, datasets, λ and the CoT manifest, nothing else."""
  from flax import nnx
  from aotd_jax.data.toy_tokenizer import train_tokenizer
  from aotd_jax.hf import registry
  from aotd_jax.train import build
  from aotd_jax.train.checkpoint import Checkpointer
  from configs.toyworld import distill as toy

  adapter = registry.adapter_for("LlavaNextVideoForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_LLAVA)), rngs=nnx.Rngs(0))
  base = tmp_path / "LLaVA-NeXT-Video-7B-hf"  # the student's base folder: its tokenizer
  train_tokenizer(["what is on the table? the red cube."] * 10, str(base), vocab_size=300)
  config = json.loads(toy.get_config("llava").to_json_best_effort())
  config["student"]["hf_dir"] = str(base)
  config["data"]["datasets"] = {"star": {}}
  ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ckpt.save(
    3,
    model=nnx.state(model, nnx.Param).to_pure_dict(),
    opt_state={"count": np.zeros((), np.int32)},
    meta={"step": 3, "config": config},
    data={},
  )
  ckpt.close()
  build.write_hf_config(model, str(tmp_path / "run" / "checkpoints"))
  (tmp_path / "manifest.json").write_text(json.dumps({"counts": {"kept": 7}}))
  # the trainer's report of its CoT sets (aotd_jax.train.cot_frames): traces numbered by source
  report = {"sources": [{"manifest": "m", "recorded": {"frame_numbers": {"value": "source"}}}]}
  (tmp_path / "run" / "cot_frames.json").write_text(json.dumps(report))
  out = tmp_path / "hub"
  # a subprocess, as users run it (importing launch.export here would define its absl flags
  # in a process whose other test files define their own)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.export",
      f"--workdir={tmp_path / 'run'}",
      f"--hf_dir={out}",
      f"--cot_manifest={tmp_path / 'manifest.json'}",
      "--base_model=llava-hf/LLaVA-NeXT-Video-7B-hf",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "tokenizer.json" in r.stdout and "README.md" in r.stdout
  assert set(os.listdir(out)) <= ALLOWED, set(os.listdir(out)) - ALLOWED
  card = (out / "README.md").read_text()
  assert "base_model: llava-hf/LLaVA-NeXT-Video-7B-hf" in card and "- star" in card
  assert f"λ (rationale weight): {config['rationale_weight']}" in card and "kept 7" in card
  assert str(tmp_path) not in card  # no local paths
  # what the run trained on, for launch.evaluate (the toy config: 4 frames, the trainer's defaults)
  inputs = json.loads((out / "aotd_training.json").read_text())
  assert inputs == {
    "data": {
      "num_frames": 4,
      "window": "question",
      "frame_sampling": "ours",
      "frame_numbers": "source",
    }
  }
  assert transformers.AutoTokenizer.from_pretrained(str(out))("the red cube")["input_ids"]
  loaded = hf.from_pretrained(str(out))
  assert loaded.config == model.config
  want, got = (nnx.to_flat_state(nnx.state(m, nnx.Param)) for m in (model, loaded))
  assert len(want) == len(got) > 0
  for (path, a), (_, b) in zip(want, got):
    np.testing.assert_array_equal(
      np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path)
    )
