"""The trainer's data: the Grain dual-mode pipeline, or synthetic batches for smoke runs."""
from __future__ import annotations

from flax import nnx

from aotd_jax.train.synthetic import SyntheticBatches


def _video_tokens(config, num_frames: int) -> int:
  """Visual tokens of a video after LLaVA-NeXT-Video's spatial pooling (as transformers counts)."""
  side = config.vision_config.image_size // config.vision_config.patch_size
  pooled = -(-side // config.spatial_pool_stride)
  return num_frames * pooled * pooled


def make_train_data(cfg, student: nnx.Module):
  """Batches for `cfg` (host-local numpy; the trainer shards them on the mesh)."""
  kind = cfg.data.get("kind", "synthetic")
  if kind == "synthetic":
    mc = student.config
    text = getattr(mc, "text_config", mc)
    vision = getattr(mc, "vision_config", None)
    video_token = getattr(mc, "video_token_index", None)
    return SyntheticBatches(
        batch_size=cfg.batch_size, seq_len=cfg.data.seq_len, vocab_size=text.vocab_size,
        seed=cfg.seed, num_frames=cfg.data.get("num_frames", 0) if vision is not None else 0,
        image_size=vision.image_size if vision is not None else 0,
        video_token_id=video_token if vision is not None else None,
        num_video_tokens=_video_tokens(mc, cfg.data.get("num_frames", 0)) if vision is not None else 0)
  raise ValueError(f"config.data.kind={kind!r}: expected 'synthetic' or 'pipeline'")
