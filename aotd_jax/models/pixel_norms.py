"""Per-channel pixel normalisations of the released vision towers' processors.

A frame is `(x / 255 - mean) / std` per channel. Each model config's `pixel_normalization`
names the one its released checkpoints' processor files hold; a checkpoint directory's own
`video_preprocessor_config.json` / `preprocessor_config.json` overrides it
(`aotd_jax.hf.processor_files.pixel_normalization`).
"""

from __future__ import annotations

# OpenAI CLIP's: LLaVA-NeXT-Video (CLIP ViT-L/14-336), Qwen2-VL, OWLv2, UniVTG's CLIP ViT-B/32.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP's: LLaVA-OneVision (SigLIP so400m-patch14-384; the original LLaVA-NeXT code's
# `SigLipImageProcessor` and the processor transformers' conversion script takes from
# google/siglip-so400m-patch14-384).
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (image_mean, image_std)
CLIP: Normalization = (CLIP_MEAN, CLIP_STD)
SIGLIP: Normalization = (SIGLIP_MEAN, SIGLIP_STD)
