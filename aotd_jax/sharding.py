"""Device mesh and logical-axis sharding (MaxText style).

Models name the axes of weights and activations logically (`embed`, `mlp`, `heads`,
`activation_batch`, ...) and never a mesh axis. One rules table maps logical names to the
mesh axes `data`, `fsdp`, `tensor`; the mesh is built in one place from a config.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None: replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  # weights
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("norm", None),
  ("conv_in", None),
  ("conv_out", None),
  ("layers", None),
  # activations
  ("activation_batch", ("data", "fsdp")),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_mlp", "tensor"),
  ("activation_heads", "tensor"),
  ("activation_kv_heads", "tensor"),
  ("activation_vocab", "tensor"),
  ("activation_frames", None),
)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves axis sizes (one may be -1: it fills the rest) for `num_devices` devices."""
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh config {dict(axis_sizes)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(
        f"mesh config {dict(axis_sizes)}: {num_devices} devices do not divide by {known}"
      )
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh config {dict(axis_sizes)} needs {math.prod(sizes)} devices, have {num_devices}"
    )
  return tuple(sizes)


def make_mesh(
  axis_sizes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None
) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) from a config such as {'data': -1, 'fsdp': 1, 'tensor': 1}."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(axis_sizes or {"data": -1}, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def maybe_initialize_distributed(config: Mapping[str, Any] | None, environ=None) -> bool:
  """Calls `jax.distributed.initialize()` when the config asks for it (multi-host pods).

  On TPU VMs (and SLURM, Kubernetes, ...) JAX finds its peers itself. Elsewhere set
  `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
  in each process's environment; on the CPU the processes then talk over Gloo (how the
  2-process test runs on one machine). Call it before anything touches a JAX backend;
  a second call does nothing. Returns whether it initialised.
  """
  import os

  if config is None or not config.get("distributed", False) or jax.distributed.is_initialized():
    return False
  env = os.environ if environ is None else environ
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(k)]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
    kwargs = dict(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(env["JAX_NUM_PROCESSES"]),
      process_id=int(env["JAX_PROCESS_ID"]),
    )
    # the CPU backend's cross-process collectives (accelerators use their own)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def logical_to_spec(logical: Sequence[str | None] | None, rules=None) -> P:
  """Maps logical axis names to a PartitionSpec over mesh axes (no mesh axis used twice)."""
  if logical is None:
    return P()
  table = dict(rules if rules is not None else DEFAULT_RULES)
  used: set[str] = set()
  out = []
  for name in logical:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide a dimension (tiny test models, odd vocab sizes)."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    kept, prod = [], 1
    for a in axes:
      if dim % (prod * mesh.shape[a]) == 0:
        kept.append(a)
        prod *= mesh.shape[a]
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def _logical_of(var: nnx.Variable):
  meta = var.get_metadata()
  return meta.get("out_sharding") or meta.get("sharding") or meta.get("sharding_names")


def state_shardings(state: nnx.State, mesh: Mesh, rules=None) -> nnx.State:
  """NamedShardings for every variable of `state`, from its logical annotations."""

  def one(var):
    if not isinstance(var, nnx.Variable):
      return NamedSharding(mesh, P())
    spec = logical_to_spec(_logical_of(var), rules)
    return NamedSharding(mesh, _fit_spec(spec, np.shape(var.get_value()), mesh))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_shardings_by_path(model: nnx.Module, mesh: Mesh, rules=None) -> dict[str, NamedSharding]:
  """'/'-joined param path -> NamedSharding (used by `aotd_jax.hf.from_pretrained`)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    spec = logical_to_spec(_logical_of(var), rules)
    out["/".join(map(str, path))] = NamedSharding(
      mesh, _fit_spec(spec, np.shape(var.get_value()), mesh)
    )
  return out


def shard_model(model: nnx.Module, mesh: Mesh, rules=None) -> nnx.Module:
  """Places every variable of `model` on `mesh` as the rules say (in place; returns the model)."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op unless a mesh is set (`jax.set_mesh`)
  and rules are active (`flax.core.spmd.logical_axis_rules`), so models run unchanged on one device."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = spmd.get_logical_axis_rules()
  if mesh is None or mesh.empty or not rules:
    return x
  spec = _fit_spec(logical_to_spec(logical, rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)
