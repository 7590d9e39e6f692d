"""Hyper-parameter sweeps, big_vision / scenic style: a config's `get_hyper(h)` returns
`h.product([...])` / `h.sweep(key, values)` / `h.zip(...)`, expanded here into a list of
override dicts (`{"optim.learning_rate": 1e-4, "seed": 1}`)."""

from __future__ import annotations

import itertools
import shlex
from typing import Any, Iterable, Sequence

Overrides = list[dict[str, Any]]


def _merge(overrides: Sequence[dict[str, Any]]) -> dict[str, Any]:
  merged: dict[str, Any] = {}
  for d in overrides:
    merged.update(d)
  return merged


class Hyper:
  """The `h` passed to `get_hyper(h)`."""

  @staticmethod
  def sweep(key: str, values: Iterable[Any]) -> Overrides:
    return [{key: v} for v in values]

  @staticmethod
  def fixed(key: str, value: Any) -> Overrides:
    return [{key: value}]

  @staticmethod
  def product(parts: Sequence[Overrides]) -> Overrides:
    return [_merge(combo) for combo in itertools.product(*parts)]

  @staticmethod
  def zip(parts: Sequence[Overrides]) -> Overrides:
    lengths = {len(p) for p in parts}
    if len(lengths) > 1:
      raise ValueError(f"h.zip needs sweeps of equal length, got {sorted(lengths)}")
    return [_merge(combo) for combo in zip(*parts)]

  @staticmethod
  def chain(parts: Sequence[Overrides]) -> Overrides:
    return [d for p in parts for d in p]


def expand(config_module, arg: str | None = None) -> Overrides:
  """The variants of a config module (one empty override when it defines no `get_hyper`)."""
  get_hyper = getattr(config_module, "get_hyper", None)
  if get_hyper is None:
    return [{}]
  try:
    return get_hyper(Hyper(), arg) if get_hyper.__code__.co_argcount > 1 else get_hyper(Hyper())
  except TypeError as e:
    raise ValueError(f"{config_module.__name__}.get_hyper: {e}") from e


def variant_name(overrides: dict[str, Any]) -> str:
  """A short, filesystem-safe name for a variant (`optim.learning_rate=0.0001,seed=1`)."""
  if not overrides:
    return "base"
  parts = [f"{config_key(k).split('.')[-1]}={v}" for k, v in sorted(overrides.items())]
  return ",".join(parts).replace("/", "_").replace(" ", "")


def config_key(key: str) -> str:
  """A sweep key as a config path: big_vision writes `config.lr`, we write `lr`; both work."""
  return key[len("config.") :] if key.startswith("config.") else key


def command(
  config_path: str,
  workdir: str,
  overrides: dict[str, Any],
  module: str = "launch.train",
  extra: Sequence[str] = (),
) -> list[str]:
  """The absl command line of one variant: `extra` arguments (the sweep's own `--config.*`
  pass-through) first, then the variant's overrides."""
  cmd = ["python", "-m", module, f"--config={config_path}", f"--workdir={workdir}", *extra]
  cmd += [f"--config.{config_key(k)}={v}" for k, v in sorted(overrides.items())]
  return cmd


def render(cmd: list[str]) -> str:
  return " ".join(shlex.quote(c) for c in cmd)
