"""The optimiser of AoTD's distillation: AdamW with linear warmup and cosine decay."""

from __future__ import annotations

from typing import Any, Mapping

import optax
from flax import nnx


def learning_rate_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_ratio` of the steps (at least one), then cosine decay
  to `final_lr_ratio` × lr by the last step.

  Tiny runs (a smoke test's `total_steps=1`) keep at least one step to decay: warmup ≤
  total_steps - 1, so a 1-step run trains at the peak rate (optax refuses a 0-step decay).
  """
  total_steps = int(total_steps)
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  lr = float(cfg["learning_rate"])
  warmup = min(
    max(int(round(float(cfg.get("warmup_ratio", 0.03)) * total_steps)), 1), total_steps - 1
  )
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=lr,
    warmup_steps=warmup,
    decay_steps=total_steps,
    end_value=lr * float(cfg.get("final_lr_ratio", 0.0)),
  )


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
  """AdamW + warmup/cosine (the paper: lr 4e-5, warmup 3 %, one epoch) + global-norm clipping.

  Keys of `cfg`: learning_rate, warmup_ratio, weight_decay, b1, b2, eps, grad_clip,
  final_lr_ratio (all optional except learning_rate). The schedule is
  `learning_rate_schedule(cfg, total_steps)` (give it to `Trainer` to log the rate).
  """
  schedule = learning_rate_schedule(cfg, total_steps)
  parts = []
  if cfg.get("grad_clip"):
    parts.append(optax.clip_by_global_norm(float(cfg["grad_clip"])))
  parts.append(
    optax.adamw(
      schedule,
      b1=float(cfg.get("b1", 0.9)),
      b2=float(cfg.get("b2", 0.999)),
      eps=float(cfg.get("eps", 1e-8)),
      weight_decay=float(cfg.get("weight_decay", 0.0)),
    )
  )
  return optax.chain(*parts)


def trainable_filter(freeze_vision_tower: bool = True, freeze_image_newline: bool = False):
  """Params the optimiser updates: all, or all but the vision tower (the paper freezes it),
  and with `freeze_image_newline` all but LLaVA's `image_newline` (the official run's)."""
  frozen = []
  if freeze_vision_tower:
    # LLaVA students name their tower `vision_tower`, Qwen2-VL `visual`.
    frozen += [nnx.PathContains("vision_tower"), nnx.PathContains("visual")]
  if freeze_image_newline:
    frozen.append(nnx.PathContains("image_newline"))
  return nnx.All(nnx.Param, nnx.Not(nnx.Any(*frozen))) if frozen else nnx.Param
