"""What a project hands the experts so that the experts never import it.

A project (the toy world, `aotd_jax.projects.toyworld.oracle.PLUGIN`) defines its own data
kind: a ground-truth file format, an object vocabulary, saved frame features, a sub-task data
reader and a compact program prompt. `experts.make_tools(config, plugins=[PLUGIN])` resolves
`ground_truth.kind`, `object_vocabulary` and `grounder.features_path` with it;
`experts.subtasks.evaluate(config, plugins=[PLUGIN])` resolves `data.kind` and the program
generator's `prompt="demo"`. Launchers, configs and tests pass the plugins.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Plugin:
  """One project's data kind.

  kind: the name configs use for it (`ground_truth.kind`, `object_vocabulary`, `data.kind`).
  ground_truth: path -> `experts.backends.oracle.GroundTruth` (what the oracle experts read).
  object_names: the vocabulary `object_vocabulary=<kind>` stands for.
  frame_features: path -> frame features for the UniVTG grounder (`grounder.features_path`).
  subtask_data: data section getter `get(key, default)` -> `experts.subtasks.DataSource`.
  program_prompt: (question, choices) -> the prompt of the project's program generator
    (the sub-task harness's `program_generator.prompt="demo"`).
  """

  kind: str
  ground_truth: Callable[[str], Any]
  object_names: Sequence[str] = ()
  frame_features: Callable[[str], Any] | None = None
  subtask_data: Callable[[Callable[..., Any]], Any] | None = None
  program_prompt: Callable[[str, Sequence[str]], str] | None = None


def by_kind(plugins: Iterable[Plugin] | None) -> Mapping[str, Plugin]:
  """{kind: plugin}; a kind given twice is an error (it would be ambiguous)."""
  out: dict[str, Plugin] = {}
  for p in plugins or ():
    if not isinstance(p, Plugin):
      raise TypeError(f"plugins: expected experts.plugins.Plugin, got {type(p).__name__}")
    if p.kind in out:
      raise ValueError(f"plugins: two plugins for kind {p.kind!r}")
    out[p.kind] = p
  return out
