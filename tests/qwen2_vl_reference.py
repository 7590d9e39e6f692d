"""transformers' own `Qwen2VLVideoProcessor`, runnable without torchvision (not importable
here: its CPU build is only on the PyTorch index, out of reach, and PyPI's 0.28.0 wheel is a CUDA
build that fails to import beside the CPU torch; docs/export.md).

The processor's module imports torchvision at the top and its base class calls three
torchvision functions; everything else (frame sampling, the per-frame pixel cap, `smart_resize`,
channel handling, the fused rescale + normalise, temporal padding, `patchify`, the grids) is
transformers' code, run unchanged. `video_processor()` loads the module from transformers'
source with that import removed and gives the three functions to it and its base classes:

- `resize`: each frame through transformers' PIL resize (`image_transforms.resize`, bicubic:
  what `Qwen2VLImageProcessorPil` uses) instead of torchvision's antialiased tensor bicubic;
- `normalize`: `(x - mean) / std` per channel (torchvision's definition);
- `grayscale_to_rgb`: the identity (the frames are RGB).

So a comparison with it covers the whole video processor except torchvision's resampling
kernel, which can round a pixel one grey level differently from PIL's.
"""

from __future__ import annotations

import ast
import enum
import os
import sys
import types

import numpy as np

MODULE = "transformers.models.qwen2_vl.video_processing_qwen2_vl"


class InterpolationMode(enum.Enum):
  NEAREST = "nearest"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  LANCZOS = "lanczos"


def _resize(video, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
  import torch
  from transformers.image_transforms import resize
  from transformers.image_utils import ChannelDimension, PILImageResampling

  del antialias
  if interpolation != InterpolationMode.BICUBIC:
    raise NotImplementedError(f"qwen2_vl_reference: only bicubic resizing, got {interpolation}")
  frames = video.reshape(-1, *video.shape[-3:]).numpy()
  out = [
    resize(
      f,
      tuple(size),
      resample=PILImageResampling.BICUBIC,
      data_format=ChannelDimension.FIRST,
      input_data_format=ChannelDimension.FIRST,
    )
    for f in frames
  ]
  return torch.from_numpy(np.stack(out)).reshape(*video.shape[:-2], *size)


def _normalize(x, mean, std, inplace=False):
  import torch

  del inplace
  mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
  std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
  return (x - mean) / std


def torchvision_stand_in() -> types.SimpleNamespace:
  return types.SimpleNamespace(
    InterpolationMode=InterpolationMode,
    resize=_resize,
    normalize=_normalize,
    grayscale_to_rgb=lambda video: video,
  )


def video_processor_class(monkeypatch):
  """transformers' `Qwen2VLVideoProcessor` class with the stand-in (patched for one test)."""
  import transformers.models.qwen2_vl as package
  from transformers import image_processing_backends, video_processing_utils
  from transformers.image_utils import PILImageResampling

  tvf = torchvision_stand_in()
  monkeypatch.setattr(image_processing_backends, "tvF", tvf, raising=False)
  monkeypatch.setattr(video_processing_utils, "tvF", tvf, raising=False)
  monkeypatch.setattr(
    image_processing_backends,
    "pil_torch_interpolation_mapping",
    {PILImageResampling.BICUBIC: InterpolationMode.BICUBIC},
  )
  path = os.path.join(os.path.dirname(package.__file__), "video_processing_qwen2_vl.py")
  with open(path) as f:
    tree = ast.parse(f.read())
  tree.body = [
    n
    for n in tree.body
    if not (isinstance(n, ast.Import) and any(a.name.startswith("torchvision") for a in n.names))
  ]
  module = types.ModuleType(MODULE)
  module.__file__ = path  # transformers' docstring decorator reads the class's source file
  module.__package__ = package.__name__
  module.tvF = tvf
  monkeypatch.setitem(sys.modules, MODULE, module)
  exec(compile(tree, path, "exec"), module.__dict__)  # pylint: disable=exec-used
  return module.Qwen2VLVideoProcessor
