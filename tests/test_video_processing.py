"""Video/image preprocessing and token counts against transformers' own processors (PIL backend)."""

import numpy as np
import PIL.Image
import pytest

from aotd_jax.data import video_processing as vp
from aotd_jax.models import llava_anyres

transformers = pytest.importorskip("transformers")
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402
from transformers.models.llava_next.image_processing_pil_llava_next import (
  LlavaNextImageProcessorPil,
)  # noqa: E402
from transformers.models.llava_next_video.processing_llava_next_video import LlavaNextVideoProcessor  # noqa: E402

PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]


@pytest.mark.parametrize(
  "size,out",
  [
    ((50, 70), (224, 313)),
    ((31, 97), (17, 300)),
    ((100, 100), (20, 80)),
    ((20, 20), (30, 80)),
    ((90, 40), (45, 30)),
    ((13, 7), (13, 2)),
  ],
)
def test_resize_is_pillow_bicubic_bit_exact(size, out):
  image = np.random.default_rng(sum(size)).integers(0, 256, size + (3,), dtype=np.uint8)
  ref = np.asarray(PIL.Image.fromarray(image).resize(out[::-1], resample=PIL.Image.BICUBIC))
  np.testing.assert_array_equal(vp.resize_bicubic_numpy(image, *out), ref)
  np.testing.assert_array_equal(vp.resize_bicubic(image, *out), ref)
  # the bilinear filter (the official AoTD's UniVTG frames), numpy port and Pillow alike
  ref = np.asarray(PIL.Image.fromarray(image).resize(out[::-1], resample=PIL.Image.BILINEAR))
  np.testing.assert_array_equal(vp.resize_bicubic_numpy(image, *out, kind="bilinear"), ref)
  np.testing.assert_array_equal(vp.resize_bicubic(image, *out, kind="bilinear"), ref)


@pytest.mark.parametrize("hw", [(50, 70), (90, 30), (20, 20), (240, 320), (36, 36)])
def test_video_frames_match_transformers(hw, monkeypatch):
  frames = np.random.default_rng(hw[0]).integers(0, 256, (3,) + hw + (3,), dtype=np.uint8)
  ref = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36})(
    list(frames), return_tensors="np"
  )["pixel_values"]
  ours = vp.preprocess_video(frames, shortest_edge=40, crop_size=36)
  assert ours.shape == (3, 3, 36, 36) and ours.dtype == np.float32
  assert np.abs(ours - ref).max() <= 1e-5
  monkeypatch.setattr(vp, "resize_bicubic", vp.resize_bicubic_numpy)  # the no-Pillow path
  assert np.abs(vp.preprocess_video(frames, shortest_edge=40, crop_size=36) - ref).max() <= 1e-5


@pytest.mark.parametrize("hw", [(40, 70), (28, 28), (20, 90), (120, 40), (56, 56), (61, 33)])
def test_anyres_images_match_transformers(hw):
  image = np.random.default_rng(hw[1]).integers(0, 256, hw + (3,), dtype=np.uint8)
  proc = LlavaNextImageProcessorPil(
    size={"shortest_edge": 28},
    crop_size={"height": 28, "width": 28},
    image_grid_pinpoints=PINPOINTS,
  )
  ref = proc(image, return_tensors="np")
  tiles, size = vp.preprocess_image(
    image, shortest_edge=28, crop_size=28, image_grid_pinpoints=PINPOINTS
  )
  assert size == hw and tuple(ref["image_sizes"][0]) == hw
  assert tiles.shape == ref["pixel_values"][0].shape
  assert np.abs(tiles - ref["pixel_values"][0]).max() <= 1e-5
  assert tiles.shape[0] == llava_anyres.anyres_num_tiles(hw, PINPOINTS, 28)


def test_image_batch_pads_tiles_like_transformers():
  rng = np.random.default_rng(0)
  images = [
    rng.integers(0, 256, (40, 70, 3), dtype=np.uint8),
    rng.integers(0, 256, (28, 28, 3), dtype=np.uint8),
  ]
  proc = LlavaNextImageProcessorPil(
    size={"shortest_edge": 28},
    crop_size={"height": 28, "width": 28},
    image_grid_pinpoints=PINPOINTS,
  )
  ref = proc(images, return_tensors="np")
  ours = vp.preprocess_images(
    images, shortest_edge=28, crop_size=28, image_grid_pinpoints=PINPOINTS
  )
  np.testing.assert_array_equal(ours["image_sizes"], ref["image_sizes"])
  assert np.abs(ours["pixel_values"] - ref["pixel_values"]).max() <= 1e-5


def _processor(strategy):
  # The processor's counting methods need only these attributes (its video processor needs
  # torchvision, which the CPU image does not ship).
  proc = LlavaNextVideoProcessor.__new__(LlavaNextVideoProcessor)
  proc.patch_size, proc.vision_feature_select_strategy = 7, strategy
  proc.num_additional_image_tokens = 1
  proc.video_token, proc.image_token = "<video>", "<image>"
  proc.image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS)
  return proc


@pytest.mark.parametrize("strategy", ["default", "full"])
@pytest.mark.parametrize("hw", [(40, 70), (28, 28), (20, 90), (120, 40), (61, 33), (1000, 30)])
def test_image_token_counts_match_transformers(hw, strategy):
  want = _processor(strategy)._get_number_of_features(hw[0], hw[1], 28, 28) - (
    strategy == "default"
  )
  got = llava_anyres.num_image_tokens(
    hw,
    image_grid_pinpoints=PINPOINTS,
    tile_size=28,
    patch_size=7,
    vision_feature_select_strategy=strategy,
  )
  assert got == want


@pytest.mark.parametrize("frames,size", [(8, 28), (3, 336), (1, 224)])
def test_video_token_counts_match_transformers(frames, size):
  proc = _processor("default")
  proc.patch_size = 14 if size != 28 else 7
  video = np.zeros((frames, 3, size, size), np.float32)
  want = len(proc.replace_video_token({"pixel_values_videos": [video]}, 0)) // len("<video>")
  assert llava_anyres.num_video_tokens(frames, image_size=size, patch_size=proc.patch_size) == want


def test_expand_media_tokens():
  text = "USER: <video>\nWhat happens? <image> ASSISTANT:"
  out = vp.expand_media_tokens(text, video_tokens=[3], image_tokens=[2])
  assert out == "USER: <video><video><video>\nWhat happens? <image><image> ASSISTANT:"
  with pytest.raises(ValueError, match=r"1 <video> placeholder\(s\) but 2 videos"):
    vp.expand_media_tokens(text, video_tokens=[3, 4], image_tokens=[2])


def test_sample_frame_indices():
  np.testing.assert_array_equal(vp.sample_frame_indices(100, 4), np.linspace(0, 99, 4).astype(int))
  np.testing.assert_array_equal(vp.sample_frame_indices(100, 3, start=10, end=20), [10, 14, 19])
  assert list(vp.sample_frame_indices(2, 4)) == [0, 0, 0, 1]  # short clips repeat frames
  with pytest.raises(ValueError, match="empty range start=50 end=40"):
    vp.sample_frame_indices(100, 4, start=50, end=40)
  with pytest.raises(ValueError, match="n must be >= 1"):
    vp.sample_frame_indices(100, 0)
  with pytest.raises(ValueError, match="no frames"):
    vp.sample_frame_indices(0, 4)


def test_bad_frames_are_named():
  with pytest.raises(ValueError, match=r"frames: expected \(T, H, W, 3\).*got shape \(4, 32, 32\)"):
    vp.preprocess_video(np.zeros((4, 32, 32), np.uint8))
  with pytest.raises(
    ValueError, match=r"frames: expected \(T, H, W, 3\).*got shape \(4, 3, 32, 32\)"
  ):
    vp.preprocess_video(np.zeros((4, 3, 32, 32), np.uint8))
  with pytest.raises(ValueError, match="frames: expected uint8 pixels.*float32"):
    vp.preprocess_video(np.zeros((4, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"image: expected \(H, W, 3\)"):
    vp.preprocess_image(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="image_grid_pinpoints is empty"):
    vp.preprocess_image(np.zeros((32, 32, 3), np.uint8), image_grid_pinpoints=[])


def test_normalize_table_is_the_per_pixel_arithmetic_bit_for_bit():
  frames = np.random.default_rng(7).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
  want = np.moveaxis(
    ((frames.astype(np.float64) / 255).astype(np.float32) - np.asarray(vp.CLIP_MEAN, np.float32))
    / np.asarray(vp.CLIP_STD, np.float32),
    -1,
    -3,
  )
  got = vp.normalize(frames)
  assert got.dtype == np.float32 and got.shape == (2, 3, 5, 6) and got.flags.c_contiguous
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(vp.normalize(frames.astype(np.float32)), want)  # no table
