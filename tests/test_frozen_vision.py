"""Cached-feature training of a frozen-tower LLaVA-NeXT-Video: same logits as the full model,
and training the wrapper trains the model."""

import jax

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax import sharding
from aotd_jax.hf import llava_next_video as adapter
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.llava_next_video import LlavaNextVideoForConditionalGeneration
from aotd_jax.train.frozen_vision import CachedVisionLM, tower_features
from aotd_jax.train.optim import make_optimizer
from aotd_jax.train.trainer import Trainer
from configs.toyworld.distill import TINY_LLAVA


def _model(freeze=True):
  return LlavaNextVideoForConditionalGeneration(
    adapter.config_from_hf(dict(TINY_LLAVA)),
    options=ComputeOptions(freeze_vision_tower=freeze),
    rngs=nnx.Rngs(0),
  )


def _batch(model, rng, frames=2, batch=2):
  cfg = model.config
  n = frames * cfg.video_tokens_per_frame()
  ids = np.concatenate(
    [
      rng.integers(6, 100, (batch, 3)),
      np.full((batch, n), cfg.video_token_index),
      rng.integers(6, 100, (batch, 5)),
    ],
    1,
  ).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :2] = 0  # left padding
  s = cfg.vision_config.image_size
  videos = rng.standard_normal((batch, frames, 3, s, s)).astype(np.float32)
  return ids, mask, videos


def test_cached_features_give_the_full_models_logits():
  model = _model()
  ids, mask, videos = _batch(model, np.random.default_rng(0))
  want = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), pixel_values_videos=videos).logits)
  feats = tower_features(model, videos.reshape((-1,) + videos.shape[2:]), batch=3)
  assert feats.shape == (
    4,
    model.config.video_tokens_per_frame(),
    model.config.vision_config.hidden_size,
  )
  got = CachedVisionLM(model)(
    jnp.asarray(ids),
    jnp.asarray(mask),
    video_features=jnp.asarray(feats.reshape(2, -1, feats.shape[-1])),
  )
  np.testing.assert_allclose(np.asarray(got.logits), want, atol=1e-5)


def test_training_the_wrapper_trains_the_model():
  model = _model()
  rng = np.random.default_rng(1)
  ids, mask, videos = _batch(model, rng)
  feats = tower_features(model, videos.reshape((-1,) + videos.shape[2:]))
  before = np.asarray(model.multi_modal_projector.linear_1.kernel[...]).copy()
  tower_before = np.asarray(
    model.vision_tower.vision_model.embeddings.patch_embedding.kernel[...]
  ).copy()
  lm = CachedVisionLM(model)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  trainer = Trainer(
    lm,
    make_optimizer(dict(learning_rate=1e-2, warmup_ratio=0.0), 2),
    mesh=mesh,
    rationale_weight=0.0,
  )
  label = np.zeros_like(ids)
  label[:, -5:] = 1
  batch = {
    "input_ids": ids,
    "attention_mask": mask,
    "label_mask": label,
    "rationale_mask": np.zeros_like(ids),
    "video_features": feats.reshape(2, -1, feats.shape[-1]),
  }
  out = [trainer.train_step(batch) for _ in range(2)][-1]  # the schedule starts at lr 0
  assert np.isfinite(out.loss) and out.grad_norm > 0
  trainer.sync_model()
  assert np.abs(np.asarray(model.multi_modal_projector.linear_1.kernel[...]) - before).max() > 0
  np.testing.assert_array_equal(  # the tower is not part of the wrapper
    np.asarray(model.vision_tower.vision_model.embeddings.patch_embedding.kernel[...]), tower_before
  )


def test_errors():
  with pytest.raises(ValueError, match="freeze_vision_tower=False"):
    CachedVisionLM(_model(freeze=False))
  with pytest.raises(ValueError, match=r"pixels must be \(frames, 3, S, S\)"):
    tower_features(_model(), np.zeros((2, 2, 3, 8, 8), np.float32))
