"""transformers' processor files (`preprocessor_config.json`, `video_preprocessor_config.json`,
`processor_config.json`): read, for the pixel normalisation a checkpoint's frames get
(`pixel_normalization`), and written for an export whose source folder has none, from the
model's own config, so that `AutoProcessor` on the export makes the inputs the student was
trained on.

One builder per student family; each states the preprocessing of `aotd_jax.data`:
- LLaVA-NeXT-Video: bicubic shortest-edge resize, centre crop, CLIP mean/std
  (`video_processing.preprocess_video`), any-res image tiling;
- LLaVA-OneVision: frames resized straight to image_size squared (`resize="square"`), the same
  rescale, SigLIP's 0.5 / 0.5 mean/std (the released processor's), any-res images capped by
  `vision_aspect_ratio`;
- Qwen2-VL: frames resized to image_size squared, CLIP mean/std, then the model's patchify
  (`qwen2_vl_processing.patchify`); the processor's pixel bounds are both image_size squared,
  so a square clip gets exactly the training size (a non-square one keeps its aspect ratio
  at about that area, as Qwen2-VL's processor does).
The mean/std written are the ones the model was trained with: the `normalization` given, else
the model config's `pixel_normalization` (the released processor's).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from aotd_jax.hf.io import CheckpointError
from aotd_jax.models import pixel_norms

IMAGE_FILE = "preprocessor_config.json"
VIDEO_FILE = "video_preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
FILES = (IMAGE_FILE, PROCESSOR_FILE, VIDEO_FILE)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, transformers' `resample` value


RESCALE = 1 / 255  # the only rescale factor the pipeline applies (`video_processing.normalize`)


def _channels(value: Any, path: str, key: str, *, positive: bool) -> tuple[float, ...]:
  values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
  ok = isinstance(values, (list, tuple)) and len(values) == 3
  ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  if not ok or (positive and min(values) <= 0):
    what = "3 positive numbers" if positive else "3 numbers"
    raise CheckpointError(f"{path}: `{key}` must be {what} (one per RGB channel), got {value!r}")
  return tuple(float(v) for v in values)


def read_normalization(directory: str) -> tuple[pixel_norms.Normalization, str] | None:
  """((image_mean, image_std), the file read) from `directory`'s video processor file, else its
  image processor file; None when neither exists. `do_normalize: false` reads as mean 0, std 1.

  Raises a CheckpointError (a ValueError) naming the file for a file that is not a JSON
  object, a mean or std that is not 3 numbers (or one, for all channels), a std <= 0, or a
  rescale this pipeline does not apply (`do_rescale: false`, or a `rescale_factor` other than
  1/255)."""
  from aotd_jax.data import files  # pylint: disable=g-import-not-at-top

  for name in (VIDEO_FILE, IMAGE_FILE):
    path = files.join(directory, name)
    if not files.isfile(path):
      continue
    try:
      content = json.loads(files.read_text(path))
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(content, dict):
      raise CheckpointError(f"{path}: expected a JSON object, got {type(content).__name__}")
    rescale = content.get("rescale_factor", RESCALE)
    if content.get("do_rescale", True) is False or not (
      isinstance(rescale, (int, float)) and abs(rescale - RESCALE) < 1e-9
    ):
      raise CheckpointError(
        f"{path}: do_rescale={content.get('do_rescale', True)}, rescale_factor={rescale!r}: "
        f"this pipeline rescales pixels by 1/255 only"
      )
    if content.get("do_normalize", True) is False:
      return ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), path
    if "image_mean" not in content and "image_std" not in content:
      continue  # a file that leaves the normalisation to its class default
    for key in ("image_mean", "image_std"):
      if key not in content:
        raise CheckpointError(f"{path}: has `{_other(key)}` but no `{key}`")
    mean = _channels(content["image_mean"], path, "image_mean", positive=False)
    std = _channels(content["image_std"], path, "image_std", positive=True)
    return (mean, std), path
  return None


def _other(key: str) -> str:
  return "image_std" if key == "image_mean" else "image_mean"


def pixel_normalization(
  model_config: Any, directory: str | None = None
) -> pixel_norms.Normalization:
  """(image_mean, image_std) for the frames of a model: its checkpoint `directory`'s processor
  files' (`read_normalization`) when it has them, else the released processor's, the model
  config's `pixel_normalization` (CLIP's for a config without one)."""
  if directory:
    found = read_normalization(directory)
    if found is not None:
      return found[0]
  return getattr(model_config, "pixel_normalization", pixel_norms.CLIP)


def released_normalization(hf_config: Mapping[str, Any]) -> pixel_norms.Normalization:
  """The released processor's (image_mean, image_std) for a config.json's model."""
  from aotd_jax.hf import registry  # pylint: disable=g-import-not-at-top

  adapter = registry.adapter_for(registry.architecture_of(dict(hf_config), "config.json"))
  return pixel_normalization(adapter.config_from_hf(dict(hf_config)))


def _normalization(
  hf_config: Mapping[str, Any], normalization: pixel_norms.Normalization | None
) -> dict:
  mean, std = normalization or released_normalization(hf_config)
  return {
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": RESCALE,
    "do_normalize": True,
    "image_mean": list(mean),
    "image_std": list(std),
    "resample": BICUBIC,
  }


def _pinpoints(hf_config: Mapping[str, Any]) -> list[list[int]]:
  return [list(p) for p in hf_config["image_grid_pinpoints"]]


def llava_next_video(
  hf_config: Mapping[str, Any], normalization: pixel_norms.Normalization | None = None
) -> dict[str, dict]:
  """Shortest-edge resize + centre crop to the vision tile size; `<video>` / `<image>` expand
  to the model's feature counts (CLIP's class token counted by `num_additional_image_tokens`)."""
  vision = hf_config["vision_config"]
  size = int(vision["image_size"])
  common = {
    **_normalization(hf_config, normalization),
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


def llava_onevision(
  hf_config: Mapping[str, Any], normalization: pixel_norms.Normalization | None = None
) -> dict[str, dict]:
  """Resize straight to image_size x image_size (no crop); `num_image_tokens` is the patch grid
  of one tile, from which the processor counts a frame's pooled features and the newline."""
  vision = hf_config["vision_config"]
  size = int(vision["image_size"])
  side = size // int(vision["patch_size"])
  common = {
    **_normalization(hf_config, normalization),
    "do_resize": True,
    "size": {"height": size, "width": size},
  }
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


def qwen2_vl(
  hf_config: Mapping[str, Any], normalization: pixel_norms.Normalization | None = None
) -> dict[str, dict]:
  """Pixel bounds of image_size squared (the training frame size; the model's default where the
  config has none, as in the released checkpoints) and the vision tower's patch, merge and
  temporal sizes."""
  from aotd_jax.hf import qwen2_vl as adapter  # pylint: disable=g-import-not-at-top

  vision = adapter.vision_config_from_hf(hf_config["vision_config"])
  area = vision.image_size**2
  common = {
    **_normalization(hf_config, normalization),
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


# The keys of a copied processor file that state the frame size the student trained at, where
# the released processor picks another (Qwen2-VL: a size per video between pixel bounds).
PINNED_KEYS = {"qwen2_vl": ("size", "min_pixels", "max_pixels")}


def pin_training_geometry(directory: str, hf_config: Mapping[str, Any]) -> list[str]:
  """Rewrites, in `directory`'s image and video processor files (copied from the student's
  source checkpoint), the keys `PINNED_KEYS` names for the model with the builder's values:
  the frame size the student was trained at. Returns the names rewritten ([] for a model whose
  released processor already makes the training frames)."""
  from aotd_jax.data import files  # pylint: disable=g-import-not-at-top

  keys = PINNED_KEYS.get(str(hf_config.get("model_type", "")), ())
  if not keys:
    return []
  built = processor_configs(hf_config)
  rewritten = []
  for name in (IMAGE_FILE, VIDEO_FILE):
    path = files.join(directory, name)
    if not files.isfile(path):
      continue
    content = json.loads(files.read_text(path))
    content.update({k: built[name][k] for k in keys})
    files.write_text(path, json.dumps(content, indent=2, sort_keys=True))
    rewritten.append(name)
  return rewritten


BUILDERS: dict[str, Callable[..., dict[str, dict]]] = {
  "llava_next_video": llava_next_video,
  "llava_onevision": llava_onevision,
  "qwen2_vl": qwen2_vl,
}


def processor_configs(
  hf_config: Mapping[str, Any], normalization: pixel_norms.Normalization | None = None
) -> dict[str, dict]:
  """File name -> content of the processor files for `hf_config`'s model ({} for a model type
  without a builder: a language model or an expert); `normalization`: the (image_mean,
  image_std) the model was trained with (default: the released processor's)."""
  builder = BUILDERS.get(str(hf_config.get("model_type", "")))
  return builder(hf_config, normalization) if builder is not None else {}


def write_processor_files(
  directory: str,
  hf_config: Mapping[str, Any],
  normalization: pixel_norms.Normalization | None = None,
) -> list[str]:
  """Writes `processor_configs(hf_config, normalization)` into `directory`; returns the names."""
  from aotd_jax.data import files  # pylint: disable=g-import-not-at-top

  written = []
  for name, content in processor_configs(hf_config, normalization).items():
    files.write_text(files.join(directory, name), json.dumps(content, indent=2, sort_keys=True))
    written.append(name)
  return written
