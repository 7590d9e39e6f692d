"""HF <-> Flax parameter maps: a table of names plus small reversible transforms (MaxText style).

A model's adapter lists `Rule`s: HF tensor name, the '/'-joined path of the `nnx.Param` in our
model, and a `Transform` run forward on import and backward on export. `import_params` and
`export_params` are generic; every check (missing, unexpected, mis-shaped) names the file and
the tensor.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.hf.io import CheckpointError


@dataclasses.dataclass(frozen=True)
class Transform:
  """A reversible array transform: `to_flax` on import, `to_hf` on export."""

  name: str
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda x: x, lambda x: x)
# torch.nn.Linear stores (out, in); a Flax kernel is (in, out).
TRANSPOSE = Transform("transpose", lambda x: x.T, lambda x: x.T)
# torch Conv2d (O, I, kh, kw) <-> Flax (kh, kw, I, O).
CONV2D = Transform("conv2d", lambda x: x.transpose(2, 3, 1, 0), lambda x: x.transpose(3, 2, 0, 1))
# torch Conv1d (O, I, k) <-> Flax (k, I, O).
CONV1D = Transform("conv1d", lambda x: x.transpose(2, 1, 0), lambda x: x.transpose(2, 1, 0))


def reshape(
  flax_shape: Sequence[int], hf_shape: Sequence[int], transpose: bool = False
) -> Transform:
  """A (transpose +) reshape between the HF layout and ours, e.g. fused heads -> (heads, dim)."""

  def fwd(x):
    return (x.T if transpose else x).reshape(flax_shape)

  def bwd(x):
    y = x.reshape(tuple(reversed(hf_shape)) if transpose else hf_shape)
    return y.T if transpose else y

  return Transform(f"reshape{tuple(flax_shape)}", fwd, bwd)


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str
  flax: str
  transform: Transform = IDENTITY


def linear(hf: str, flax: str, bias: bool = True) -> list[Rule]:
  """Rules for a torch Linear `hf` -> an `nnx.Linear` at `flax`."""
  rules = [Rule(f"{hf}.weight", f"{flax}/kernel", TRANSPOSE)]
  if bias:
    rules.append(Rule(f"{hf}.bias", f"{flax}/bias"))
  return rules


def norm(hf: str, flax: str, bias: bool = True) -> list[Rule]:
  """Rules for a LayerNorm/RMSNorm: weight -> scale (and bias)."""
  rules = [Rule(f"{hf}.weight", f"{flax}/scale")]
  if bias:
    rules.append(Rule(f"{hf}.bias", f"{flax}/bias"))
  return rules


def embed(hf: str, flax: str) -> list[Rule]:
  """Rules for an Embedding: weight -> embedding."""
  return [Rule(f"{hf}.weight", f"{flax}/embedding")]


def _path_str(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def param_paths(model: nnx.Module) -> dict[str, nnx.Variable]:
  """All `nnx.Param`s of a (possibly abstract) model, keyed by '/'-joined path."""
  return {_path_str(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def import_params(
  model: nnx.Module,
  rules: Iterable[Rule],
  tensors: Mapping[str, np.ndarray],
  origin: Mapping[str, str],
  *,
  source: str,
  dtype=None,
  ignore: Sequence[str] = (),
  shardings: Mapping[str, jax.sharding.Sharding] | None = None,
) -> nnx.Module:
  """Fills `model`'s params (abstract or concrete) from HF `tensors`, checking every name and shape.

  Args:
    model: the target model; `nnx.eval_shape` output is fine (nothing is initialised twice).
    rules: the adapter's name table.
    tensors / origin: from `aotd_jax.hf.io.read_tensors`.
    source: the directory, for messages.
    dtype: cast floating params to this dtype (None keeps the model's dtype).
    ignore: regexes of HF tensors that carry no parameter (buffers such as `inv_freq`).
    shardings: optional '/'-path -> Sharding to place each param on a mesh.
  """
  rules = list(rules)
  graphdef, state = nnx.split(model)
  flat = {_path_str(p): v for p, v in nnx.to_flat_state(state)}
  params = {k for k, v in flat.items() if isinstance(v, nnx.Param)}
  covered = {r.flax for r in rules}
  for path in sorted(params - covered):
    raise CheckpointError(f"{source}: no rule maps a tensor onto parameter {path} (adapter bug)")
  used = set()
  for rule in rules:
    if rule.flax not in flat:
      raise CheckpointError(f"{source}: rule for {rule.hf} targets unknown parameter {rule.flax}")
    if rule.hf not in tensors:
      raise CheckpointError(f"{source}: missing tensor {rule.hf} (needed for {rule.flax})")
    used.add(rule.hf)
    var = flat[rule.flax]
    arr = rule.transform.to_flax(np.asarray(tensors[rule.hf]))
    want = tuple(var.get_value().shape)
    if tuple(arr.shape) != want:
      raise CheckpointError(
        f"{origin.get(rule.hf, source)}: tensor {rule.hf} has shape "
        f"{tuple(tensors[rule.hf].shape)}, expected one that maps to {want} ({rule.transform.name})"
      )
    stored = var.get_value().dtype
    target = dtype if (dtype is not None and jnp.issubdtype(stored, jnp.floating)) else stored
    value = np.asarray(arr).astype(target)
    if shardings is not None and rule.flax in shardings:
      var.set_value(jax.device_put(value, shardings[rule.flax]))
    else:
      var.set_value(jnp.asarray(value))
  unexpected = [k for k in tensors if k not in used and not any(re.search(p, k) for p in ignore)]
  if unexpected:
    k = sorted(unexpected)[0]
    more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
    raise CheckpointError(f"{origin.get(k, source)}: unexpected tensor {k}{more}")
  return nnx.merge(graphdef, state)


def export_params(model: nnx.Module, rules: Iterable[Rule], dtype=None) -> dict[str, np.ndarray]:
  """Returns the HF tensors of `model` (inverse of `import_params`)."""
  flat = param_paths(model)
  out = {}
  for rule in rules:
    value = np.asarray(jax.device_get(flat[rule.flax].get_value()))
    if dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
      value = value.astype(dtype)
    out[rule.hf] = np.asarray(rule.transform.to_hf(value), order="C")  # keeps 0-d tensors 0-d
  return out
