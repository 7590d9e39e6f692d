"""Each student's frames are normalised as its checkpoint's processor files say (the released
values when a directory has none): LLaVA-OneVision's released processor uses SigLIP's 0.5 / 0.5,
not CLIP's. Checked against transformers' PIL image processors loaded from the same files, and
through the trainer's pipeline config, the trainer's checkpoint directory, the export's files,
the LLaVA expert, and the errors a bad file gets."""

import json
import types

import numpy as np
import pytest

from aotd_jax.data import video_processing as vp
from aotd_jax.hf import processor_files
from aotd_jax.models import pixel_norms

transformers = pytest.importorskip("transformers")

SIZE = 24  # tiny frames: the processors' arithmetic does not depend on the size


def _frames(n=3, height=30, width=44, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _write(directory, name, content) -> str:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / name).write_text(json.dumps(content))
  return str(directory)


def _onevision_released(size: int) -> dict:
  """The normalisation and geometry fields of llava-hf's OneVision `preprocessor_config.json`
  (SigLIP's mean/std, bicubic resize straight to size x size), at a tiny size."""
  return {
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"height": size, "width": size},
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_pad": True,
    "image_grid_pinpoints": [[size, size]],
  }


def _config(architecture: str, init: dict):
  from aotd_jax.hf import registry

  return registry.adapter_for(architecture).config_from_hf(dict(init))


def _onevision_config():
  from configs.toyworld import distill as toy

  return _config("LlavaOnevisionForConditionalGeneration", toy.TINY_ONEVISION)


def test_released_normalisation_of_each_student():
  from aotd_jax.models import llava_next_video, llava_onevision, qwen2_vl

  assert llava_next_video.LlavaNextVideoConfig().pixel_normalization == pixel_norms.CLIP
  assert llava_onevision.LlavaOnevisionConfig().pixel_normalization == pixel_norms.SIGLIP
  from configs.toyworld import distill as toy

  qwen = _config("Qwen2VLForConditionalGeneration", toy.TINY_QWEN2VL)
  assert isinstance(qwen, qwen2_vl.Qwen2VLConfig) and qwen.pixel_normalization == pixel_norms.CLIP
  assert pixel_norms.SIGLIP == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  # a directory without processor files: the released values
  assert processor_files.pixel_normalization(_onevision_config(), "") == pixel_norms.SIGLIP


def test_onevision_frames_equal_transformers_processor_from_the_released_config(tmp_path):
  """The pipeline's OneVision frames (normalisation from the checkpoint folder's file, "square"
  resize) equal transformers' PIL processor loaded from that file (its base tile), bit for bit;
  CLIP's normalisation (what the pipeline used before) is far off."""
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
  )

  ckpt = _write(tmp_path / "ov", processor_files.IMAGE_FILE, _onevision_released(SIZE))
  cfg = _onevision_config()
  mean, std = processor_files.pixel_normalization(cfg, ckpt)
  assert (mean, std) == pixel_norms.SIGLIP
  frames = _frames()
  proc = LlavaOnevisionImageProcessorPil.from_pretrained(ckpt)
  want = np.stack([proc(images=[f], return_tensors="np")["pixel_values"][0][0] for f in frames])
  got = vp.preprocess_video(
    frames, crop_size=SIZE, resize=cfg.video_resize, image_mean=mean, image_std=std
  )
  np.testing.assert_array_equal(got, want)
  clip = vp.preprocess_video(frames, crop_size=SIZE, resize=cfg.video_resize)
  assert np.abs(clip - want).mean() > 0.1


def test_a_checkpoints_own_values_win_and_match_transformers(tmp_path):
  """A LLaVA-NeXT-Video folder whose files hold other values: the video processor file is read
  before the image one, and the pipeline's frames equal transformers' CLIP PIL processor
  (shortest-edge resize, centre crop) given the same values."""
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

  from aotd_jax.models import llava_next_video

  custom = {"image_mean": [0.4, 0.45, 0.5], "image_std": [0.2, 0.25, 0.3]}
  d = tmp_path / "lnv"
  _write(d, processor_files.IMAGE_FILE, {"image_mean": 0.5, "image_std": 0.5})
  _write(d, processor_files.VIDEO_FILE, {**custom, "rescale_factor": 0.00392156862745098})
  mean, std = processor_files.pixel_normalization(llava_next_video.LlavaNextVideoConfig(), str(d))
  assert [list(mean), list(std)] == [custom["image_mean"], custom["image_std"]]
  frames = _frames(seed=1)
  want = CLIPImageProcessorPil(
    size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, **custom
  )(list(frames), return_tensors="np")["pixel_values"]
  got = vp.preprocess_video(
    frames, shortest_edge=SIZE, crop_size=SIZE, image_mean=mean, image_std=std
  )
  assert np.abs(got - want).max() <= 1e-5
  # one number for all channels (transformers allows it), from the image file alone
  (d / processor_files.VIDEO_FILE).unlink()
  assert processor_files.read_normalization(str(d))[0] == pixel_norms.SIGLIP


@pytest.mark.parametrize(
  "content,match",
  [
    ({"image_mean": [0.5, 0.5], "image_std": [0.5] * 3}, "`image_mean` must be 3 numbers"),
    ({"image_mean": [0.5] * 3, "image_std": [0.5, 0.0, 0.5]}, "`image_std` must be 3 positive"),
    ({"image_mean": ["a", 0, 0], "image_std": [1] * 3}, "`image_mean` must be 3 numbers"),
    ({"image_mean": [0.5] * 3}, "has `image_mean` but no `image_std`"),
    ({"rescale_factor": 1.0, "image_mean": [0] * 3, "image_std": [1] * 3}, "by 1/255 only"),
    ({"do_rescale": False}, "by 1/255 only"),
    ([0.5, 0.5], "expected a JSON object"),
  ],
)
def test_bad_processor_files_are_named(tmp_path, content, match):
  d = _write(tmp_path / "bad", processor_files.VIDEO_FILE, content)
  with pytest.raises(ValueError, match=match) as e:
    processor_files.pixel_normalization(_onevision_config(), d)
  assert processor_files.VIDEO_FILE in str(e.value)


def test_unparsable_file_and_do_normalize_false(tmp_path):
  d = tmp_path / "x"
  d.mkdir()
  (d / processor_files.IMAGE_FILE).write_text("{not json")
  with pytest.raises(ValueError, match="preprocessor_config.json: not valid JSON"):
    processor_files.read_normalization(str(d))
  _write(d, processor_files.IMAGE_FILE, {"do_normalize": False, "image_mean": [0.5] * 3})
  assert processor_files.read_normalization(str(d))[0] == ((0.0,) * 3, (1.0,) * 3)
  # a file that leaves the values to its class default: the released values
  _write(d, processor_files.IMAGE_FILE, {"size": {"height": 8, "width": 8}})
  assert processor_files.read_normalization(str(d)) is None


def test_trainer_pipeline_takes_the_student_checkpoints_values(tmp_path, monkeypatch):
  from aotd_jax.data import pipeline
  from fixtures.train_data import pipeline_config as stubbed

  cfg = _onevision_config()
  student = types.SimpleNamespace(config=cfg)

  def pipeline_config(hf_dir):
    return stubbed(monkeypatch, student, student_section=dict(hf_dir=hf_dir))[0]

  pc = pipeline_config("")
  assert (pc.image_mean, pc.image_std) == pixel_norms.SIGLIP and pc.video_resize == "square"
  d = _write(
    tmp_path / "s", processor_files.IMAGE_FILE, {"image_mean": [0.1] * 3, "image_std": [0.2] * 3}
  )
  pc = pipeline_config(d)
  assert (pc.image_mean, pc.image_std) == ((0.1,) * 3, (0.2,) * 3)
  prepare = pipeline.PrepareSample(None, pc)
  frames = _frames(2)
  np.testing.assert_array_equal(
    prepare._pixels(frames),
    vp.preprocess_video(
      frames,
      crop_size=cfg.vision_config.image_size,
      resize="square",
      image_mean=(0.1,) * 3,
      image_std=(0.2,) * 3,
    ),
  )


def test_checkpoint_dir_and_export_files_carry_the_values(tmp_path):
  """The trainer writes the processor files of the values it used beside its checkpoints; they
  load in transformers' processor with those values, read back for evaluation, and an export
  whose tokenizer folder has no processor files writes them."""
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
  )

  from aotd_jax.hf import api as hf_api
  from aotd_jax.hf import hub, registry
  from aotd_jax.train import build

  cfg = _onevision_config()
  adapter = registry.adapter_for("LlavaOnevisionForConditionalGeneration")
  model = hf_api.build_abstract(adapter, cfg, hf_api.dtype_options("float32"))  # shapes only
  ckpt = str(tmp_path / "checkpoints")
  build.write_hf_config(model, ckpt)  # a fresh student: the released values
  assert processor_files.read_normalization(ckpt)[0] == pixel_norms.SIGLIP
  proc = LlavaOnevisionImageProcessorPil.from_pretrained(ckpt)
  assert list(proc.image_mean) == [0.5] * 3 and list(proc.image_std) == [0.5] * 3
  source = _write(
    tmp_path / "src", processor_files.VIDEO_FILE, {"image_mean": [0.3] * 3, "image_std": [0.6] * 3}
  )
  build.write_hf_config(model, ckpt, source_dir=source)
  found = processor_files.read_normalization(ckpt)[0]
  assert found == ((0.3,) * 3, (0.6,) * 3)
  hf_config = json.loads((tmp_path / "checkpoints" / "hf_config.json").read_text())
  export = tmp_path / "export"
  export.mkdir()
  written = hub.write_hub_files(str(export), hf_config=hf_config, normalization=found)
  assert processor_files.IMAGE_FILE in written
  assert processor_files.read_normalization(str(export))[0] == found
  # with nothing given the export states the released values
  released = processor_files.processor_configs(hf_config)[processor_files.IMAGE_FILE]
  assert released["image_mean"] == [0.5] * 3 and released["image_std"] == [0.5] * 3


def test_llava_expert_normalises_with_the_checkpoints_values():
  import experts
  from experts import random_weights as rw
  from experts.backends.llava import LlavaVideoQA

  from aotd_jax.models.clip import CLIPVisionConfig
  from aotd_jax.models.llava_next_video import LlavaNextVideoConfig

  # the backend reads only the config to make its inputs: no weights needed
  vision = CLIPVisionConfig(image_size=28, patch_size=14, num_hidden_layers=2)
  model = types.SimpleNamespace(
    config=LlavaNextVideoConfig(vision_config=vision, video_token_index=98, image_token_index=99)
  )
  tok = rw.WordTokenizer(100, video_token_id=98, image_token_id=99)
  clip = experts.VideoClip(_frames(5, 20, 28, seed=3), video_id="v")
  size = model.config.vision_config.image_size
  default = LlavaVideoQA(model, tok, num_frames=2)
  assert default.normalization == pixel_norms.CLIP
  custom = ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))
  _, got = LlavaVideoQA(model, tok, num_frames=2, normalization=custom).inputs(clip, "what?")
  idx = vp.sample_frame_indices(len(clip), 2)
  want = vp.preprocess_video(
    clip.frames[idx], shortest_edge=size, crop_size=size, image_mean=custom[0], image_std=custom[1]
  )
  np.testing.assert_array_equal(got[0], want)


CUSTOM = ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))


def test_univtg_clip_features_use_the_clip_directorys_values(monkeypatch):
  import experts
  from experts import random_weights as rw
  from experts.backends.univtg import UniVTGGrounder

  clip_size = dict(
    image_size=32, patch_size=16, vision_hidden=16, vision_layers=1, vision_heads=2,
    text_hidden=16, text_layers=1, text_heads=2, projection=12, vocab=99, text_length=16,
  )  # fmt: skip
  size = dict(hidden_dim=32, nheads=4, enc_layers=1, dim_feedforward=48, clip_length=1.0)
  from flax import nnx

  model, clip_model = nnx.eval_shape(lambda: rw.univtg(size, clip_size))  # the pixels only
  tokenize = rw.word_tokenize(99, 16)
  assert UniVTGGrounder(model, clip_model, tokenize).normalization == pixel_norms.CLIP
  g = UniVTGGrounder(model, clip_model, tokenize, normalization=CUSTOM)
  monkeypatch.setattr(g, "_run", lambda part, fn, rows, state: rows)  # the pixels it would run
  clip = experts.VideoClip(_frames(6, 30, 40, seed=5), fps=2.0, video_id="v")
  pixels, pos = g.features(clip)
  want = vp.preprocess_video(
    clip.frames[pos], shortest_edge=32, crop_size=32, image_mean=CUSTOM[0], image_std=CUSTOM[1]
  )
  np.testing.assert_array_equal(pixels, want)


def test_owlv2_detector_uses_the_values_it_is_given():
  import jax.numpy as jnp

  from aotd_jax.models import owlv2_processing as proc
  from experts import random_weights as rw
  from experts.backends.owlv2 import Owlv2Detector

  size = dict(
    image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=32, text_layers=1, text_heads=2, projection=32, vocab=99, text_length=16,
  )  # fmt: skip
  model = rw.owlv2(size)
  tokenize = rw.word_tokenize(99, 16)
  assert Owlv2Detector(model, tokenize).normalization == pixel_norms.CLIP
  det = Owlv2Detector(model, tokenize, normalization=CUSTOM, buckets=(2,))
  frames = _frames(2, 20, 28, seed=6)
  feats, _ = det.image_fn(frames, det._state, to_host=True)
  pixels = proc.preprocess(list(frames), 32, image_mean=CUSTOM[0], image_std=CUSTOM[1])
  fmap = model.image_embedder(jnp.asarray(pixels))
  want = np.asarray(fmap).reshape(2, -1, fmap.shape[-1])
  np.testing.assert_allclose(feats, want, atol=2e-5)
