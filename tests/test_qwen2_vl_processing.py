"""Qwen2-VL preprocessing against transformers' processors (PIL image backend; the video
processor's torch-only parts, since its module needs torchvision)."""
import numpy as np
import pytest

from aotd_jax.data import qwen2_vl_processing as qp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_smart_resize_matches_transformers():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
  rng = np.random.default_rng(0)
  for h, w in [(1, 1), (27, 29), (480, 640), (4000, 30), (2000, 3000)] + [
      tuple(int(v) for v in rng.integers(10, 3000, 2)) for _ in range(50)]:
    for bounds in [(qp.IMAGE_MIN_PIXELS, qp.IMAGE_MAX_PIXELS), (qp.VIDEO_MIN_PIXELS, qp.VIDEO_MAX_PIXELS)]:
      assert qp.smart_resize(h, w, 28, *bounds) == smart_resize(h, w, 28, *bounds), (h, w, bounds)
  with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
    qp.smart_resize(1, 300)


def test_images_match_transformers_pil_processor_exactly():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((50, 90, 3), (120, 64, 3), (20, 30, 3))]
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
  # 64 frames with the reference cap: each frame gets an even share of the token budget.
  capped = qp.video_size(64, 720, 1280, cap_pixels_per_frame=True)
  assert capped[0] * capped[1] <= max(16384 * 28 * 28 * 0.9 * 2 // 64, qp.VIDEO_MIN_PIXELS * 1.05)
  assert qp.video_size(64, 720, 1280) == qp.smart_resize(720, 1280, 28, qp.VIDEO_MIN_PIXELS, qp.VIDEO_MAX_PIXELS)
