"""The distillation train step over a device mesh: L_label + λ·L_rationale, jitted, donated.

The student is split into trainable params (optimised), and the rest (a frozen vision tower,
non-param state). The step is one `jax.jit` with explicit in/out shardings from the
logical-axis rules; the batch is sharded over (`data`, `fsdp`) on its first axis.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aotd_jax import sharding as sharding_lib
from aotd_jax.train import neftune
from aotd_jax.train.losses import LOSS_NORMALIZATIONS, distill_loss

LOSS_KEYS = ("input_ids", "label_mask", "rationale_mask")


class _MeshContext:
  def __init__(self, mesh: Mesh, rules):
    self._mesh, self._rules = mesh, rules if rules is not None else sharding_lib.DEFAULT_RULES
    self._stack = []

  def __enter__(self):
    for ctx in (jax.set_mesh(self._mesh), spmd.logical_axis_rules(self._rules)):
      ctx.__enter__()
      self._stack.append(ctx)
    return self

  def __exit__(self, *exc):
    while self._stack:
      self._stack.pop().__exit__(*exc)
    return False


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN/Inf: the run stops, keeping the last good checkpoint."""


def _model_inputs(model: nnx.Module, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch entries the student's __call__ accepts (masks for the loss are not inputs)."""
  params = inspect.signature(type(model).__call__).parameters
  accepts_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
  return {
    k: v
    for k, v in batch.items()
    if k not in ("label_mask", "rationale_mask") and (accepts_all or k in params)
  }


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch axis over (data, fsdp); everything else replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def matmul_flops_per_token(model: nnx.Module) -> float:
  """6 × (parameters used in matmuls) per trained token: the usual MFU numerator."""
  n = 0
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name = "/".join(map(str, path))
    value = var.get_value()
    if value.ndim >= 2 and "embed_tokens" not in name and "position_embedding" not in name:
      n += math.prod(value.shape)
  return 6.0 * n


@dataclasses.dataclass
class StepMetrics:
  loss: float
  label_loss: float
  rationale_loss: float
  label_tokens: float
  rationale_tokens: float
  grad_norm: float
  learning_rate: float | None = None
  tokens: float = 0.0  # attended tokens of the global batch (every host's rows)


class Trainer:
  """Holds the sharded student and optimiser state and runs jitted train steps."""

  def __init__(
    self,
    model: nnx.Module,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    trainable=nnx.Param,
    rationale_weight: float = 1.0,
    rules=None,
    schedule: Callable[[int], float] | None = None,
    loss_normalization: str = "per_part",
    neftune_alpha: float = 0.0,
    seed: int = 0,
  ):
    self.model = model
    self.mesh = mesh
    self.tx = tx
    self.rules = rules
    self.schedule = schedule
    self.rationale_weight = float(rationale_weight)
    if loss_normalization not in LOSS_NORMALIZATIONS:
      raise ValueError(
        f"loss_normalization={loss_normalization!r}: expected one of {LOSS_NORMALIZATIONS}"
      )
    self.loss_normalization = loss_normalization
    if neftune_alpha < 0:
      raise ValueError(f"neftune_alpha={neftune_alpha} must be >= 0 (0: no NEFTune noise)")
    self.neftune_alpha, self.seed = float(neftune_alpha), int(seed)
    self._trainable = trainable
    self.graphdef, params, rest = nnx.split(model, trainable, ...)
    self.param_shardings = sharding_lib.state_shardings(params, mesh, rules)
    self.rest_shardings = sharding_lib.state_shardings(rest, mesh, rules)
    self.params = jax.device_put(params, self.param_shardings)
    self.rest = jax.device_put(rest, self.rest_shardings)
    # Moments follow their params' shardings; scalars (step counts) are replicated on the mesh.
    replicated = NamedSharding(mesh, P())
    opt_state = jax.jit(tx.init)(self.params)
    self.opt_shardings = jax.tree.map(
      lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else replicated, opt_state
    )
    self.opt_state = jax.device_put(opt_state, self.opt_shardings)
    self.step = 0
    self._train_step = self._build_step()

  def _build_step(self):
    graphdef, tx, lam = self.graphdef, self.tx, self.rationale_weight
    normalization = self.loss_normalization
    example_model = self.model
    alpha, base_key = self.neftune_alpha, jax.random.key(self.seed)

    def train_step(params, opt_state, rest, batch, step):
      def loss_fn(p):
        student = nnx.merge(graphdef, p, rest)
        if alpha > 0:  # NEFTune: fresh noise every step
          neftune.noisy_embed(student, jax.random.fold_in(base_key, step), alpha)
        logits = student(**_model_inputs(example_model, batch)).logits
        out = distill_loss(
          logits,
          batch["input_ids"],
          batch["label_mask"],
          batch["rationale_mask"],
          lam,
          normalization=normalization,
          attention_mask=batch.get("attention_mask"),
        )
        return out.loss, out

      (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      grad_norm = optax.global_norm(grads)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      metrics = dict(
        loss=parts.loss,
        label_loss=parts.label_loss,
        rationale_loss=parts.rationale_loss,
        label_tokens=parts.label_tokens,
        rationale_tokens=parts.rationale_tokens,
        grad_norm=grad_norm,
      )
      if "attention_mask" in batch:
        metrics["tokens"] = jnp.sum(batch["attention_mask"].astype(jnp.float32))
      return params, opt_state, metrics

    return jax.jit(
      train_step,
      donate_argnums=(0, 1),
      out_shardings=(self.param_shardings, self.opt_shardings, None),
    )

  def shard_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Places a host batch (numpy) on the mesh, batch axis over (data, fsdp)."""
    out = {}
    for k, v in batch.items():
      if isinstance(v, (np.ndarray, jax.Array)) and np.asarray(v).dtype != object:
        out[k] = jax.make_array_from_process_local_data(
          batch_sharding(self.mesh, np.ndim(v)), np.asarray(v)
        )
    return out

  def train_step(self, batch: Mapping[str, Any]) -> StepMetrics:
    """One optimiser step; raises `NonFiniteLossError` (state not committed) on NaN/Inf."""
    device_batch = self.shard_batch(batch)
    with self.mesh_context():
      new_params, new_opt, metrics = self._train_step(
        self.params, self.opt_state, self.rest, device_batch, np.int32(self.step)
      )
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
      raise NonFiniteLossError(
        f"step {self.step + 1}: non-finite loss {metrics['loss']} / grad norm "
        f"{metrics['grad_norm']}; stopping (the last checkpoint is kept)"
      )
    self.params, self.opt_state = new_params, new_opt
    self.step += 1
    lr = float(self.schedule(self.step - 1)) if self.schedule is not None else None
    return StepMetrics(learning_rate=lr, **metrics)

  def mesh_context(self):
    """The mesh and logical-axis rules that `aotd_jax.sharding.constrain` reads while tracing."""
    return _MeshContext(self.mesh, self.rules)

  # --- checkpoint views -------------------------------------------------------------------------
  def model_state(self) -> dict:
    """The full parameter state (trainable + frozen) as a pure dict: the checkpoint's `model`."""
    nnx.update(self.model, self.params, self.rest)
    return nnx.state(self.model, nnx.Param).to_pure_dict()

  def load(self, model_dict: dict, opt_state: Any, step: int) -> None:
    """Restores parameters (pure dict), optimiser state and step count."""
    full = nnx.state(self.model, nnx.Param)
    full.replace_by_pure_dict(model_dict)
    nnx.update(self.model, full)
    _, params, rest = nnx.split(self.model, self._trainable, ...)
    self.params = jax.device_put(params, self.param_shardings)
    self.rest = jax.device_put(rest, self.rest_shardings)
    self.opt_state = jax.device_put(opt_state, self.opt_shardings)
    self.step = int(step)

  def sync_model(self) -> nnx.Module:
    """Writes the current params back into `self.model` (for eval or export) and returns it."""
    nnx.update(self.model, self.params, self.rest)
    return self.model
