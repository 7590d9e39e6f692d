"""NEFTune (Jain et al., 2023): uniform noise on the token embeddings during training, as the
official AoTD distillation enables it (`neftune_noise_alpha=0.1`, transformers' Trainer).

transformers adds `U(-a, a)` noise with `a = alpha / sqrt(L * d)` (L: the padded sequence
length, d: the hidden size) to the output of the language model's input embedding layer, in
training only. The student's media features are written over their placeholder tokens after
that layer, so they carry no noise. `noisy_embed` does the same for a student whose language
model embeds tokens through `language_model.embed` (LLaVA-NeXT-Video, LLaVA-OneVision,
Qwen2-VL) or `embed` (a plain Llama).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def add_noise(embeds: jax.Array, key: jax.Array, alpha: float) -> jax.Array:
  """`embeds` (B, L, d) plus NEFTune noise of magnitude `alpha / sqrt(L * d)`."""
  length, dim = embeds.shape[-2:]
  mag = alpha / jnp.sqrt(jnp.float32(length * dim))
  noise = jax.random.uniform(key, embeds.shape, jnp.float32, -mag, mag)
  return (embeds.astype(jnp.float32) + noise).astype(embeds.dtype)


def noisy_embed(student, key: jax.Array, alpha: float) -> None:
  """Makes the student's token embedding (`language_model.embed` of a Video-LLM, `embed` of a
  plain LM) add NEFTune noise, on a traced per-step copy of the student (the served model is
  untouched). ValueError naming the flag when the student has no such layer."""
  owner = getattr(student, "language_model", student)
  embed = getattr(owner, "embed", None)
  if embed is None:
    raise ValueError(
      f"--config.neftune_alpha: {type(student).__name__} has no token embedding "
      "(language_model.embed or embed) to add noise to; set --config.neftune_alpha=0"
    )

  def noisy(input_ids):
    return add_noise(embed(input_ids), key, alpha)

  object.__setattr__(owner, "embed", noisy)
