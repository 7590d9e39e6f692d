"""LLaVA-OneVision and Qwen2-VL exports carry processor files and the student's chat template:
transformers' own processor classes, loaded from the export, make the pixels our pipeline feeds
the student and expand the media placeholders to the model's token counts.

Without torchvision (transformers 5 processes videos with torchvision only) the video processors
are checked by their loaded settings and token counts, OneVision's frame pixels through its PIL
image processor (tile 0 is the frame resized to image_size squared, as the pipeline's "square"
resize), and Qwen2-VL's video pixels through transformers' own video processor with PIL resizing
(tests/qwen2_vl_reference.py). Where torchvision imports, `AutoProcessor` alone loads each export.
"""

import copy
import functools
import json
import os
import types

import numpy as np
import pytest

from aotd_jax import hf
from aotd_jax.hf import hub, io, processor_files
from aotd_jax.rehearsal.checkpoints import QWEN_SPECIALS

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _export(tmp, arch: str, init: dict, tok) -> tuple[str, object]:
  """save_pretrained of a random tiny `arch` + the hub files with `tok`'s folder; (dir, model)."""
  from flax import nnx
  from aotd_jax.hf import registry

  adapter = registry.adapter_for(arch)
  model = adapter.model_class(adapter.config_from_hf(init), rngs=nnx.Rngs(0))
  out, tok_dir = str(tmp / "hub"), str(tmp / "tok")
  hf.save_pretrained(model, out)
  tok.save_pretrained(tok_dir)
  hub.write_hub_files(out, hf_config=io.read_config(out), tokenizer_dir=tok_dir)
  return out, model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  from aotd_jax.data.toy_tokenizer import train_tokenizer

  return train_tokenizer(
    ["what is on the table? the red cube.", "step 1: find the cube"] * 20,
    str(tmp_path_factory.mktemp("tok")),
    vocab_size=300,
  )


@pytest.fixture(scope="module")
def onevision(tmp_path_factory, tokenizer):
  from configs.toyworld import distill as toy

  return _export(
    tmp_path_factory.mktemp("ov"),
    "LlavaOnevisionForConditionalGeneration",
    dict(toy.TINY_ONEVISION),
    tokenizer,
  )


@pytest.fixture(scope="module")
def qwen2vl(tmp_path_factory, tokenizer):
  from configs.toyworld import distill as toy

  tok = copy.deepcopy(tokenizer)
  tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
  ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
  init = dict(
    toy.TINY_QWEN2VL,
    video_token_id=ids["<|video_pad|>"],
    image_token_id=ids["<|image_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"],
    vision_end_token_id=ids["<|vision_end|>"],
  )
  return _export(tmp_path_factory.mktemp("qwen"), "Qwen2VLForConditionalGeneration", init, tok)


def _frames(num_frames=4, height=40, width=52, seed=0):
  return np.random.default_rng(seed).integers(
    0, 255, (num_frames, height, width, 3), dtype=np.uint8
  )


def _processor(cls, export_dir, **parts):
  """An instance-like namespace of processor class `cls` with the export's processor_config.json
  settings and `parts` (so its own token-expansion methods run without torchvision)."""
  settings, _ = cls.get_processor_dict(export_dir, local_files_only=True)
  assert settings.pop("processor_class") == cls.__name__
  proc = types.SimpleNamespace(**settings, **parts)
  for name in ("_get_unpadded_features", "_get_number_of_features"):
    if hasattr(cls, name):
      setattr(proc, name, functools.partial(getattr(cls, name), proc))
  return proc


def test_exports_hold_processor_files_and_the_students_chat_template(onevision, qwen2vl):
  from aotd_jax.data import conversation

  for (export_dir, _), template in (
    (onevision, conversation.ONEVISION_CHAT_TEMPLATE),
    (qwen2vl, conversation.QWEN2_VL_CHAT_TEMPLATE),
  ):
    assert set(processor_files.FILES) <= set(os.listdir(export_dir)), export_dir
    tok = transformers.AutoTokenizer.from_pretrained(export_dir)
    assert tok.chat_template == template  # the template training used, not the tokenizer's own
    with open(os.path.join(export_dir, "tokenizer_config.json")) as f:  # where 4.x reads it
      assert json.load(f)["chat_template"] == template
  assert processor_files.processor_configs({"model_type": "llama"}) == {}


def test_onevision_processor_files_make_the_students_inputs(onevision):
  from PIL import Image
  from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
  from transformers.models.llava_onevision.video_processing_llava_onevision import (
    LlavaOnevisionVideoProcessor,
  )
  from aotd_jax.data import video_processing

  export_dir, model = onevision
  cfg = model.config
  size = cfg.vision_config.image_size
  video_processor = LlavaOnevisionVideoProcessor.from_pretrained(export_dir)
  assert video_processor.size == {"height": size, "width": size} and video_processor.resample == 3
  # the released OneVision processor's SigLIP normalisation, which the pipeline also uses
  mean, std = cfg.pixel_normalization
  assert (mean, std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  assert list(video_processor.image_mean) == list(mean)
  assert list(video_processor.image_std) == list(std)
  image_processor = transformers.AutoImageProcessor.from_pretrained(export_dir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
  proc = _processor(LlavaOnevisionProcessor, export_dir, image_processor=image_processor)
  assert tokenizer.convert_tokens_to_ids(proc.video_token) == cfg.video_token_index
  assert tokenizer.convert_tokens_to_ids(proc.image_token) == cfg.image_token_index
  clip = video_processing.preprocess_video(
    _frames(),
    shortest_edge=size,
    crop_size=size,
    resize=cfg.video_resize,
    image_mean=mean,
    image_std=std,
  )
  expanded = LlavaOnevisionProcessor.replace_video_token(proc, {"pixel_values_videos": [clip]}, 0)
  assert expanded.count("<video>") == cfg.video_tokens(4) > 0
  # An image: the processor's any-res count is the model's; its tile 0 (the picture resized
  # straight to image_size squared) is the pipeline's frame preprocessing.
  frame = _frames(1, 44, 70)[0]
  inputs = image_processor([Image.fromarray(frame)], return_tensors="np")
  inputs["batch_num_images"] = [1]
  expanded = LlavaOnevisionProcessor.replace_image_token(proc, inputs, 0)
  assert expanded.count("<image>") == cfg.image_tokens(frame.shape[:2]) > 0
  ours = video_processing.preprocess_video(
    frame[None],
    shortest_edge=size,
    crop_size=size,
    resize=cfg.video_resize,
    image_mean=mean,
    image_std=std,
  )
  np.testing.assert_allclose(inputs["pixel_values"][0][0], ours[0], atol=1e-5)


def test_qwen2vl_processor_files_make_the_students_inputs(qwen2vl, monkeypatch):
  """transformers' Qwen2VLVideoProcessor (PIL resizing, tests/qwen2_vl_reference.py) loaded from
  the export makes the model's patches of the pipeline's square frames; its image processor
  likewise for one frame; the placeholders expand to the model's token counts."""
  from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
  from aotd_jax.data import qwen2_vl_processing as qp
  from aotd_jax.data import video_processing
  from tests.qwen2_vl_reference import video_processor_class

  export_dir, model = qwen2vl
  cfg, vision = model.config, model.config.vision_config
  size = vision.image_size
  frames = _frames(4, 40, 40)  # square: the processor's bounds give exactly the training size
  ours = video_processing.preprocess_video(
    frames, shortest_edge=size, crop_size=size, resize=cfg.video_resize
  )
  patch = dict(
    patch_size=vision.patch_size,
    merge_size=vision.spatial_merge_size,
    temporal_patch_size=vision.temporal_patch_size,
  )
  want, grid = qp.patchify(ours, **patch)
  video_processor = video_processor_class(monkeypatch).from_pretrained(export_dir)
  got = video_processor(videos=[frames], return_tensors="np")
  assert got["video_grid_thw"].tolist() == [list(grid)]
  np.testing.assert_allclose(got["pixel_values_videos"], want, atol=1e-5)
  image_processor = transformers.AutoImageProcessor.from_pretrained(export_dir)
  image = image_processor(images=[frames[0]], return_tensors="np")
  np.testing.assert_allclose(image["pixel_values"], qp.patchify(ours[:1], **patch)[0], atol=1e-5)
  tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
  proc = _processor(
    Qwen2VLProcessor,
    export_dir,
    video_processor=video_processor,
    image_processor=image_processor,
    video_token="<|video_pad|>",
  )
  assert tokenizer.convert_tokens_to_ids(proc.video_token) == cfg.video_token_id
  expanded = Qwen2VLProcessor.replace_video_token(proc, got, 0)
  assert expanded.count("<|video_pad|>") == cfg.video_tokens(4) > 0


def _torchvision_or_skip():
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(
      f"torchvision does not import ({type(e).__name__}: {str(e)[:80]}): transformers 5 "
      "builds video processors with torchvision only; the CPU build is "
      "torchvision==0.28.0 from https://download.pytorch.org/whl/cpu (docs/export.md)"
    )


@pytest.mark.parametrize("which", ["onevision", "qwen2vl"])
def test_auto_processor_loads_the_export(which, request):
  _torchvision_or_skip()
  export_dir, model = request.getfixturevalue(which)
  cfg = model.config
  processor = transformers.AutoProcessor.from_pretrained(export_dir)
  token = getattr(cfg, "video_token", "<video>")
  out = processor(text=f"{token} what happens?", videos=[_frames(4, 40, 40)], return_tensors="np")
  video_id = getattr(cfg, "video_token_id", None) or cfg.video_token_index
  assert (out["input_ids"] == video_id).sum() == cfg.video_tokens(4)


def test_qwen2vl_export_from_a_released_folder_keeps_the_training_frame_size(tmp_path, qwen2vl):
  """The source folder's processor files are copied (its mean/std, everything else) with the
  pixel bounds of the frames the student trained at: transformers' image processor loaded from
  the export makes the training grid, where the released bounds would pick another size."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  export_dir, model = qwen2vl
  vision = model.config.vision_config
  area, patch = vision.image_size**2, vision.patch_size
  src = tmp_path / "released"
  src.mkdir()
  released = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "size": {"shortest_edge": 3136, "longest_edge": 12845056},
    "patch_size": patch,
    "merge_size": vision.spatial_merge_size,
    "temporal_patch_size": vision.temporal_patch_size,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
  }
  (src / processor_files.IMAGE_FILE).write_text(json.dumps(released))
  out = tmp_path / "export"
  out.mkdir()
  hub.write_hub_files(str(out), hf_config=io.read_config(export_dir), tokenizer_dir=str(src))
  got = json.loads((out / processor_files.IMAGE_FILE).read_text())
  assert (got["min_pixels"], got["max_pixels"]) == (area, area)
  assert got["size"] == {"shortest_edge": area, "longest_edge": area}
  assert got["image_mean"] == released["image_mean"] and got["patch_size"] == patch
  side = vision.image_size
  frame = _frames(1, side, side)[0]
  grid = Qwen2VLImageProcessorPil.from_pretrained(str(out))(images=[frame], return_tensors="np")
  assert grid["image_grid_thw"].tolist() == [[1, side // patch, side // patch]]
  grid = Qwen2VLImageProcessorPil.from_pretrained(str(src))(images=[frame], return_tensors="np")
  assert grid["image_grid_thw"].tolist() != [[1, side // patch, side // patch]]
