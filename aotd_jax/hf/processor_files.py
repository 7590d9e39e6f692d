"""transformers' processor files (`preprocessor_config.json`, `video_preprocessor_config.json`,
`processor_config.json`) for an export whose source folder has none, written from the model's
own config so that `AutoProcessor` on the export makes the inputs the student was trained on.

One builder per student family; each states the preprocessing of `aotd_jax.data`:
- LLaVA-NeXT-Video: bicubic shortest-edge resize, centre crop, CLIP mean/std
  (`video_processing.preprocess_video`), any-res image tiling;
- LLaVA-OneVision: frames resized straight to image_size squared (`resize="square"`), the same
  rescale and CLIP mean/std, any-res images capped by `vision_aspect_ratio`;
- Qwen2-VL: frames resized to image_size squared, CLIP mean/std, then the model's patchify
  (`qwen2_vl_processing.patchify`); the processor's pixel bounds are both image_size squared,
  so a square clip gets exactly the training size (a non-square one keeps its aspect ratio
  at about that area, as Qwen2-VL's processor does).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

IMAGE_FILE = "preprocessor_config.json"
VIDEO_FILE = "video_preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
FILES = (IMAGE_FILE, PROCESSOR_FILE, VIDEO_FILE)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, transformers' `resample` value


def _normalization() -> dict:
  from aotd_jax.data import video_processing  # pylint: disable=g-import-not-at-top

  return {
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(video_processing.CLIP_MEAN),
    "image_std": list(video_processing.CLIP_STD),
    "resample": BICUBIC,
  }


def _pinpoints(hf_config: Mapping[str, Any]) -> list[list[int]]:
  return [list(p) for p in hf_config["image_grid_pinpoints"]]


def llava_next_video(hf_config: Mapping[str, Any]) -> dict[str, dict]:
  """Shortest-edge resize + centre crop to the vision tile size; `<video>` / `<image>` expand
  to the model's feature counts (CLIP's class token counted by `num_additional_image_tokens`)."""
  vision = hf_config["vision_config"]
  size = int(vision["image_size"])
  common = {
    **_normalization(),
    "do_resize": True,
    "size": {"shortest_edge": size},
    "do_center_crop": True,
    "crop_size": {"height": size, "width": size},
  }
  image = {
    **common,
    "image_processor_type": "LlavaNextImageProcessor",
    "do_pad": True,
    "image_grid_pinpoints": _pinpoints(hf_config),
  }
  video = {
    **common,
    "video_processor_type": "LlavaNextVideoVideoProcessor",
    "do_sample_frames": False,
  }
  processor = {
    "processor_class": "LlavaNextVideoProcessor",
    "patch_size": int(vision["patch_size"]),
    "vision_feature_select_strategy": hf_config.get("vision_feature_select_strategy", "default"),
    "num_additional_image_tokens": int(vision.get("model_type") == "clip_vision_model"),
    "image_token": "<image>",
    "video_token": "<video>",
  }
  return {IMAGE_FILE: image, VIDEO_FILE: video, PROCESSOR_FILE: processor}


def llava_onevision(hf_config: Mapping[str, Any]) -> dict[str, dict]:
  """Resize straight to image_size x image_size (no crop); `num_image_tokens` is the patch grid
  of one tile, from which the processor counts a frame's pooled features and the newline."""
  vision = hf_config["vision_config"]
  size = int(vision["image_size"])
  side = size // int(vision["patch_size"])
  common = {**_normalization(), "do_resize": True, "size": {"height": size, "width": size}}
  image = {
    **common,
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "do_pad": True,
    "image_grid_pinpoints": _pinpoints(hf_config),
  }
  video = {
    **common,
    "video_processor_type": "LlavaOnevisionVideoProcessor",
    "do_sample_frames": False,
  }
  processor = {
    "processor_class": "LlavaOnevisionProcessor",
    "num_image_tokens": side * side,
    "vision_feature_select_strategy": hf_config.get("vision_feature_select_strategy", "full"),
    "vision_aspect_ratio": hf_config.get("vision_aspect_ratio", "anyres_max_9"),
    "image_token": "<image>",
    "video_token": "<video>",
  }
  return {IMAGE_FILE: image, VIDEO_FILE: video, PROCESSOR_FILE: processor}


def qwen2_vl(hf_config: Mapping[str, Any]) -> dict[str, dict]:
  """Pixel bounds of image_size squared (the training frame size; the model's default where the
  config has none, as in the released checkpoints) and the vision tower's patch, merge and
  temporal sizes."""
  from aotd_jax.hf import qwen2_vl as adapter  # pylint: disable=g-import-not-at-top

  vision = adapter.vision_config_from_hf(hf_config["vision_config"])
  area = vision.image_size**2
  common = {
    **_normalization(),
    "do_resize": True,
    "size": {"shortest_edge": area, "longest_edge": area},
    "min_pixels": area,
    "max_pixels": area,  # the same bounds, as transformers 4.x reads them
    "patch_size": vision.patch_size,
    "merge_size": vision.spatial_merge_size,
    "temporal_patch_size": vision.temporal_patch_size,
  }
  image = {**common, "image_processor_type": "Qwen2VLImageProcessor"}
  video = {**common, "video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False}
  return {
    IMAGE_FILE: image,
    VIDEO_FILE: video,
    PROCESSOR_FILE: {"processor_class": "Qwen2VLProcessor"},
  }


BUILDERS: dict[str, Callable[[Mapping[str, Any]], dict[str, dict]]] = {
  "llava_next_video": llava_next_video,
  "llava_onevision": llava_onevision,
  "qwen2_vl": qwen2_vl,
}


def processor_configs(hf_config: Mapping[str, Any]) -> dict[str, dict]:
  """File name -> content of the processor files for `hf_config`'s model ({} for a model type
  without a builder: a language model or an expert)."""
  builder = BUILDERS.get(str(hf_config.get("model_type", "")))
  return builder(hf_config) if builder is not None else {}
