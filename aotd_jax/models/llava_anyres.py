"""LLaVA-NeXT any-resolution geometry: grid choice, unpadding and visual-token counts.

Pure Python on sizes (no arrays), shared by the model (`llava_next_video.py`, which packs the
tile features) and the preprocessor (`aotd_jax/data/video_processing.py`, which tiles the image
and writes the right number of `<image>` / `<video>` tokens). Every rule follows transformers'
LLaVA-NeXT code, including its integer truncations, so the counts agree token for token.
"""
from __future__ import annotations

from typing import Sequence


def select_best_resolution(original_size: Sequence[int],
                           possible_resolutions: Sequence[Sequence[int]]) -> tuple[int, int]:
  """The (height, width) of `possible_resolutions` that keeps most pixels and wastes fewest."""
  orig_h, orig_w = (int(s) for s in original_size)
  best, best_eff, best_waste = None, 0, float("inf")
  for height, width in possible_resolutions:
    scale = min(width / orig_w, height / orig_h)
    eff = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
    waste = width * height - eff
    if eff > best_eff or (eff == best_eff and waste < best_waste):
      best, best_eff, best_waste = (int(height), int(width)), eff, waste
  if best is None:
    raise ValueError(f"image_grid_pinpoints is empty or invalid: {possible_resolutions!r}")
  return best


def anyres_grid_shape(image_size: Sequence[int], grid_pinpoints, tile_size: int) -> tuple[int, int]:
  """Number of tiles (rows, cols) an image of `image_size` (H, W) is cut into."""
  height, width = select_best_resolution(image_size, grid_pinpoints)
  return height // tile_size, width // tile_size


def anyres_num_tiles(image_size: Sequence[int], grid_pinpoints, tile_size: int) -> int:
  """Tiles fed to the vision tower for one image: the grid plus the resized base image."""
  height, width = select_best_resolution(image_size, grid_pinpoints)
  return -(-height // tile_size) * -(-width // tile_size) + 1


def unpadded_extent(original_size: Sequence[int], current_size: Sequence[int]) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the feature map region that holds the image, not the padding.

  The processor letterboxes the image into the best grid resolution; the model crops the same
  rows/columns back out of the (rows*side, cols*side) feature map (transformers' `unpad_image`).
  """
  orig_h, orig_w = (int(s) for s in original_size)
  cur_h, cur_w = (int(s) for s in current_size)
  if orig_w / orig_h > cur_w / cur_h:
    new_h = int(round(orig_h * (cur_w / orig_w), 7))
    pad = (cur_h - new_h) // 2
    return pad, cur_h - pad, 0, cur_w
  new_w = int(round(orig_w * (cur_h / orig_h), 7))
  pad = (cur_w - new_w) // 2
  return 0, cur_h, pad, cur_w - pad


def num_image_tokens(image_size: Sequence[int], *, image_grid_pinpoints, tile_size: int,
                     patch_size: int, vision_feature_select_strategy: str = "default") -> int:
  """`<image>` tokens for one image of original `image_size` (H, W), newline tokens included."""
  side = tile_size // patch_size
  rows, cols = anyres_grid_shape(image_size, image_grid_pinpoints, tile_size)
  top, bottom, left, right = unpadded_extent(image_size, (rows * side, cols * side))
  unpadded = (bottom - top) * (right - left) + (bottom - top)  # one newline per row
  base = side * side + (1 if vision_feature_select_strategy == "full" else 0)
  return unpadded + base


def pooled_side(side: int, stride: int) -> int:
  """Side of the pooled patch grid (AvgPool2d / MaxPool2d / Conv2d, kernel = stride, no padding)."""
  return (side - stride) // stride + 1


def num_video_tokens(num_frames: int, *, image_size: int, patch_size: int,
                     spatial_pool_stride: int = 2) -> int:
  """`<video>` tokens for a clip of `num_frames` frames of `image_size`² pixels after pooling."""
  side = pooled_side(image_size // patch_size, spatial_pool_stride)
  return num_frames * side * side
