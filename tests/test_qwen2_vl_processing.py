"""Qwen2-VL preprocessing against transformers' processors: the PIL image processor, and the
video processor run with PIL resizing in place of torchvision's (tests/qwen2_vl_reference.py)."""

import numpy as np
import pytest

from aotd_jax.data import qwen2_vl_processing as qp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_smart_resize_matches_transformers():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

  rng = np.random.default_rng(0)
  for h, w in [(1, 1), (27, 29), (480, 640), (4000, 30), (2000, 3000)] + [
    tuple(int(v) for v in rng.integers(10, 3000, 2)) for _ in range(50)
  ]:
    for bounds in [
      (qp.IMAGE_MIN_PIXELS, qp.IMAGE_MAX_PIXELS),
      (qp.VIDEO_MIN_PIXELS, qp.VIDEO_MAX_PIXELS),
    ]:
      assert qp.smart_resize(h, w, 28, *bounds) == smart_resize(h, w, 28, *bounds), (h, w, bounds)
  with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
    qp.smart_resize(1, 300)


def test_images_match_transformers_pil_processor_exactly():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  rng = np.random.default_rng(1)
  images = [
    rng.integers(0, 256, s, dtype=np.uint8) for s in ((50, 90, 3), (120, 64, 3), (20, 30, 3))
  ]
  bounds = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
  want = Qwen2VLImageProcessorPil(**bounds)(images=images, return_tensors="np")
  got = qp.preprocess_images(images, **bounds)
  np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
  assert got["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 4], [1, 4, 6]]
  np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])


def test_video_patches_match_transformers_video_processor():
  from tests.test_qwen2_vl import transformers_video_patchify

  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, (5, 40, 70, 3), dtype=np.uint8)  # odd count: last frame repeated
  out = qp.preprocess_video(frames, min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 6)
  h, w = qp.smart_resize(40, 70, 28, 28 * 28 * 2, 28 * 28 * 6)
  assert out["video_grid_thw"].tolist() == [[3, h // 14, w // 14]]
  # Resize + normalise per frame as the image processor, then transformers' video patchify.
  from aotd_jax.data import video_processing

  x = video_processing.normalize(video_processing.resize_bicubic(frames, h, w))
  want, t, gh, gw = transformers_video_patchify()(None, torch.tensor(x[None]), 14, 2, 2)
  assert (t, gh, gw) == (3, h // 14, w // 14)
  np.testing.assert_array_equal(out["pixel_values_videos"], want[0].numpy())
  with pytest.raises(ValueError, match="not a multiple of patch_size \\* merge_size = 28"):
    qp.patchify(np.zeros((2, 3, 28, 30), np.float32))
  with pytest.raises(ValueError, match="expected uint8"):
    qp.preprocess_video(frames.astype(np.float32))


def test_frame_sampling_and_the_per_frame_cap():
  want = torch.arange(0, 100, 100 / 16).int().tolist()
  assert qp.sample_frame_indices(100, num_frames=16).tolist() == want
  assert qp.sample_frame_indices(100, num_frames=15).tolist() == want  # rounded to a multiple of 2
  # fps: 2 frames a second of a 10 s, 30 fps video -> 20 frames
  assert len(qp.sample_frame_indices(300, fps=2, video_fps=30)) == 20
  with pytest.raises(ValueError, match="needs the video's fps"):
    qp.sample_frame_indices(300, fps=2)
  with pytest.raises(ValueError, match="cannot sample 20 frames of a 10-frame video"):
    qp.sample_frame_indices(10, num_frames=20)
  # 64 frames with a small budget: each frame gets an even share of it (transformers' rule is
  # compared in test_video_sizes_and_the_cap_match_transformers).
  capped = qp.video_size(64, 720, 1280, cap_pixels_per_frame=True, max_video_tokens=16384)
  assert capped[0] * capped[1] <= max(16384 * 28 * 28 * 0.9 * 2 // 64, qp.VIDEO_MIN_PIXELS * 1.05)
  assert qp.video_size(64, 720, 1280) == qp.smart_resize(
    720, 1280, 28, qp.VIDEO_MIN_PIXELS, qp.VIDEO_MAX_PIXELS
  )


# transformers' Qwen2VLVideoProcessor, run with PIL resizing in place of torchvision's (see
# tests/qwen2_vl_reference.py: everything else is transformers' code). Pixels agree to float
# rounding: transformers fuses rescale and normalise ((x - 255 mean) / (255 std)), we rescale first.
VIDEO_TOL = 1e-6


@pytest.fixture
def video_processor(monkeypatch):
  from tests.qwen2_vl_reference import video_processor_class

  return video_processor_class(monkeypatch)


@pytest.mark.parametrize("frames,height,width", [(5, 37, 53), (4, 480, 854), (3, 53, 37)])
def test_videos_match_transformers_video_processor(video_processor, frames, height, width):
  """Odd sizes and frame counts at the processor's default bounds: smart_resize (37 x 53 is
  upscaled to the minimum area, 480 x 854 rounded to multiples of 28), bicubic resize,
  normalisation, the last frame repeated to an even count, the patch order and the grid."""
  rng = np.random.default_rng(frames * height)
  video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
  want = video_processor(cap_pixels_per_frame=False)(videos=[video], return_tensors="np")
  got = qp.preprocess_video(video)
  np.testing.assert_array_equal(got["video_grid_thw"], want["video_grid_thw"])
  h, w = qp.smart_resize(height, width, 28, qp.VIDEO_MIN_PIXELS, qp.VIDEO_MAX_PIXELS)
  assert got["video_grid_thw"].tolist() == [[(frames + 1) // 2, h // 14, w // 14]]
  assert got["pixel_values_videos"].shape == want["pixel_values_videos"].shape
  np.testing.assert_allclose(
    got["pixel_values_videos"], want["pixel_values_videos"], rtol=0, atol=VIDEO_TOL
  )


def test_video_sizes_and_the_cap_match_transformers(video_processor):
  """The per-frame pixel cap (`cap_pixels_per_frame`, a budget of `max_video_tokens`) and
  custom bounds pick the same size as transformers' processor; the default budget is its."""
  rng = np.random.default_rng(3)
  video = rng.integers(0, 256, (8, 90, 160, 3), dtype=np.uint8)
  processor = video_processor(cap_pixels_per_frame=True)
  assert processor.max_video_tokens == qp.VIDEO_MAX_TOKENS
  grids = []
  for tokens, bounds in (
    (40, (28 * 28 * 4, 28 * 28 * 30)),
    (200, (28 * 28 * 4, 28 * 28 * 30)),
    (qp.VIDEO_MAX_TOKENS, (qp.VIDEO_MIN_PIXELS, qp.VIDEO_MAX_PIXELS)),
  ):
    want = processor(
      videos=[video],
      return_tensors="np",
      max_video_tokens=tokens,
      size={"shortest_edge": bounds[0], "longest_edge": bounds[1]},
    )
    got = qp.preprocess_video(
      video,
      min_pixels=bounds[0],
      max_pixels=bounds[1],
      cap_pixels_per_frame=True,
      max_video_tokens=tokens,
    )
    np.testing.assert_array_equal(got["video_grid_thw"], want["video_grid_thw"])
    np.testing.assert_allclose(
      got["pixel_values_videos"], want["pixel_values_videos"], rtol=0, atol=VIDEO_TOL
    )
    grids.append(got["video_grid_thw"].tolist())
  # 40 tokens cap each frame at 56 x 112; 200 leave max_pixels (84 x 168) the binding bound
  assert grids == [[[4, 4, 8]], [[4, 6, 12]], [[4, 18, 32]]]


def test_frame_sampling_matches_transformers(video_processor):
  from transformers.video_utils import VideoMetadata

  processor = video_processor(cap_pixels_per_frame=False)
  for total, fps, kw in (
    (100, 30.0, dict(num_frames=16)),
    (100, 30.0, dict(num_frames=15)),
    (301, 30.0, dict(fps=2)),
    (37, 25.0, dict(fps=1)),
    (900, 29.97, dict(fps=0.5)),
  ):
    want = processor.sample_frames(VideoMetadata(total_num_frames=total, fps=fps), **kw)
    got = qp.sample_frame_indices(total, video_fps=fps, **kw)
    np.testing.assert_array_equal(got, want.numpy()), (total, fps, kw)
