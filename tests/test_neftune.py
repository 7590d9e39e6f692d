"""NEFTune (the official distillation's `neftune_noise_alpha=0.1`): noise of the right size on
the token embeddings only, fresh each step, on in lnv7b and off at 0; and the official run's
frozen `image_newline`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax.train import neftune
from aotd_jax.train.optim import trainable_filter


def test_noise_is_uniform_within_alpha_over_sqrt_length_times_dim():
  x = jnp.zeros((2, 8, 32), jnp.float32)
  y = np.asarray(neftune.add_noise(x, jax.random.key(0), 0.1))
  bound = 0.1 / np.sqrt(8 * 32)  # transformers' neftune_post_forward_hook
  assert np.abs(y).max() <= bound and np.abs(y).max() > 0.9 * bound
  assert abs(y.mean()) < 0.1 * bound
  assert not np.allclose(y, np.asarray(neftune.add_noise(x, jax.random.key(1), 0.1)))
  assert neftune.add_noise(x.astype(jnp.bfloat16), jax.random.key(0), 0.1).dtype == jnp.bfloat16


def _tiny_llava():
  from aotd_jax.hf import registry
  from configs.toyworld import distill as toy

  adapter = registry.adapter_for("LlavaNextVideoForConditionalGeneration")
  return adapter.model_class(adapter.config_from_hf(dict(toy.TINY_LLAVA)), rngs=nnx.Rngs(0))


def test_video_features_carry_no_noise():
  model = _tiny_llava()
  cfg = model.config
  n = cfg.video_tokens(2)
  ids = np.asarray([[1] + [cfg.video_token_index] * n + [7, 8, 9]], np.int32)
  pixels = np.random.default_rng(0).normal(size=(1, 2, 3, 32, 32)).astype(np.float32)
  clean, _, _ = model.merge_embeddings(ids, pixel_values_videos=pixels)
  graphdef, state = nnx.split(model)
  noisy_model = nnx.merge(graphdef, state)  # a copy, as the train step's
  neftune.noisy_embed(noisy_model, jax.random.key(0), 5.0)
  noisy, _, _ = noisy_model.merge_embeddings(ids, pixel_values_videos=pixels)
  video = ids[0] == cfg.video_token_index
  diff = np.abs(np.asarray(noisy - clean))[0]
  assert diff[video].max() == 0.0  # the features overwrite the noised placeholders
  assert diff[~video].min() > 0.0 and diff.max() <= 5.0 / np.sqrt(ids.shape[1] * clean.shape[-1])
  again, _, _ = model.merge_embeddings(ids, pixel_values_videos=pixels)
  assert np.array_equal(np.asarray(again), np.asarray(clean))  # the original is untouched


@pytest.mark.slow  # two tiny trainers jit a step each
def test_trainer_steps_with_and_without_noise():
  from aotd_jax import sharding
  from aotd_jax.train import build
  from aotd_jax.train.data import make_train_data
  from aotd_jax.train.optim import make_optimizer
  from aotd_jax.train.trainer import Trainer
  from configs.toyworld import distill as toy

  cfg = toy.get_config("llama")
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  batch = next(make_train_data(cfg, student))
  losses = {
    alpha: Trainer(
      build.build_student(cfg.student, mesh=mesh, seed=0),
      make_optimizer(cfg.optim, 2),
      mesh=mesh,
      neftune_alpha=alpha,
    )
    .train_step(batch)
    .loss
    for alpha in (0.0, 5.0)
  }
  assert losses[5.0] != losses[0.0]  # the noise changes the step's loss
  with pytest.raises(ValueError, match="neftune_alpha=-1"):
    Trainer(student, make_optimizer(cfg.optim, 2), mesh=mesh, neftune_alpha=-1.0)


def test_image_newline_frozen_on_request():
  model = _tiny_llava()
  names = lambda f: {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, f))}
  assert "image_newline" in names(trainable_filter(True))
  frozen = names(trainable_filter(True, freeze_image_newline=True))
  assert "image_newline" not in frozen and not any("vision_tower" in n for n in frozen)
  assert any("language_model" in n for n in frozen)


def test_lnv7b_defaults_are_the_official_run():
  from aotd_jax.train import config_check
  from configs.distill import lnv7b
  from configs.toyworld import distill as toy

  c = lnv7b.get_config()
  assert c.neftune_alpha == 0.1 and c.student.freeze_image_newline
  assert toy.get_config("llava").neftune_alpha == 0.0
  t = toy.get_config("llama")
  t.neftune_alpha = -0.5
  with pytest.raises(config_check.ConfigError, match="neftune_alpha=-0.5"):
    config_check.check_train_config(t)
