"""Keys a CoT manifest gained after manifests were first written, with what runs used before.

A manifest's identity (`aotd_jax.agent.manifest`) decides whether a directory may be resumed,
and the trainer reads the frames it records (`aotd_jax.train.cot_frames`). A manifest written
before a key was recorded lacks it, although its run did use a value: the code's default of the
time, listed here. A resume of such a directory is told which keys are missing and what they
were (`launch.generate_cots --accept_old_defaults` writes them in); the trainer reads a missing
key as its old default.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class AddedKey:
  """A manifest key added on `since`; runs before it used `old_default`.

  Attributes:
    path: where it is in the manifest (`("identity", "frame_sampling")`).
    old_default: the value every run made before the key was recorded.
    setting: how a CoT config sets it (for messages).
    since: the day manifests started recording it.
  """

  path: tuple[str, ...]
  old_default: Any
  setting: str
  since: str = "2026-12-04"

  @property
  def name(self) -> str:
    return ".".join(self.path)


ADDED_KEYS = (
  AddedKey(
    ("identity", "frame_sampling"),
    "ours",
    "frame_sampling= in the configs/cot/*.py string (--config.frame_sampling)",
  ),
  AddedKey(
    ("identity", "data", "read_kwargs", "window"),
    "question",
    "window= in the configs/cot/star.py string (--config.data.read_kwargs.window)",
  ),
  AddedKey(
    ("roles", "grounder", "frame_preprocess"),
    "clip_processor",
    "--config.experts.grounder.frame_preprocess",
  ),
)
MISSING = object()  # what `lookup` returns for a path a tree lacks


def lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  """The value at `path` of nested dicts, or `MISSING` when a level lacks it."""
  node: Any = tree
  for part in path:
    if not isinstance(node, Mapping) or part not in node:
      return MISSING
    node = node[part]
  return node


def missing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[AddedKey]:
  """The added keys `new` (a manifest's {"roles", "identity"}) has and `old` lacks."""
  return [
    k for k in ADDED_KEYS if lookup(old, k.path) is MISSING and lookup(new, k.path) is not MISSING
  ]


def with_old_defaults(old: Mapping[str, Any], keys: list[AddedKey]) -> dict:
  """A deep copy of `old` with each of `keys` set to its old default."""
  out = copy.deepcopy(dict(old))
  for key in keys:
    node = out
    for part in key.path[:-1]:
      node = node.setdefault(part, {})
    node[key.path[-1]] = key.old_default
  return out


def describe(keys: list[AddedKey]) -> str:
  """`identity.frame_sampling (then always 'ours'), ...` for messages."""
  return ", ".join(f"{k.name} (before {k.since} always {k.old_default!r})" for k in keys)
