"""AoTD's distillation loss: L = L_label + λ · L_rationale.

Both parts are token-level cross-entropies of the student's next-token predictions, each
averaged over its own tokens: `label_mask` marks answer tokens (QA samples), `rationale_mask`
marks rationale tokens (CoT samples). A batch without CoT samples has an empty rationale mask,
so its rationale loss is 0 and the objective is plain instruction tuning.

`normalization` picks how the tokens are averaged (docs/fidelity.md, "loss"):
- "per_part" (ours): mean over answer tokens + λ · mean over rationale tokens; the prompt is
  masked. A QA answer of 3 tokens weighs as much as a 300-token rationale.
- "sequence" (the official release's `Trainer` loss): one mean over every real token of the
  batch (`attention_mask`), prompt and video placeholders included, as the official collator's
  labels are; rationale tokens weigh λ (1 reproduces the official loss exactly).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


LOSS_NORMALIZATIONS = ("per_part", "sequence")


class DistillLoss(NamedTuple):
  loss: jax.Array
  label_loss: jax.Array
  rationale_loss: jax.Array
  label_tokens: jax.Array
  rationale_tokens: jax.Array


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token cross-entropy (B, L) without materialising a one-hot over the vocabulary."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return lse - target_logit


def masked_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean of `values` over `mask` (0 when the mask is empty) and the token count."""
  mask = mask.astype(jnp.float32)
  count = mask.sum()
  return (values * mask).sum() / jnp.maximum(count, 1.0), count


def distill_loss(
  logits: jax.Array,
  input_ids: jax.Array,
  label_mask: jax.Array,
  rationale_mask: jax.Array,
  rationale_weight: float = 1.0,
  *,
  normalization: str = "per_part",
  attention_mask: jax.Array | None = None,
) -> DistillLoss:
  """L_label + λ·L_rationale for causal-LM `logits` (B, L, V) over `input_ids` (B, L).

  Masks are aligned with `input_ids`: mask[b, t] = 1 means token t is a target. Position t is
  predicted by logits at t - 1, so the first token is never a target. `label_loss` and
  `rationale_loss` are each part's own token mean under either `normalization`; only `loss`
  (what is differentiated) changes.
  """
  if normalization not in LOSS_NORMALIZATIONS:
    raise ValueError(f"loss normalization {normalization!r} not in {LOSS_NORMALIZATIONS}")
  ce = token_cross_entropy(logits[:, :-1], input_ids[:, 1:])
  label_loss, n_label = masked_mean(ce, label_mask[:, 1:])
  rationale_loss, n_rationale = masked_mean(ce, rationale_mask[:, 1:])
  if normalization == "per_part":
    loss = label_loss + rationale_weight * rationale_loss
  else:
    if attention_mask is None:
      raise ValueError('loss normalization "sequence" needs the batch\'s attention_mask')
    tokens = attention_mask[:, 1:].astype(jnp.float32)
    weight = tokens + (rationale_weight - 1.0) * rationale_mask[:, 1:].astype(jnp.float32)
    loss = (ce * weight).sum() / jnp.maximum(tokens.sum(), 1.0)
  return DistillLoss(loss, label_loss, rationale_loss, n_label, n_rationale)
