"""The import graph follows docs/architecture.md's layers; the debts it lists do not grow.

Every import (module level or inside a function) between the project's packages is an arrow.
An arrow may point down the stack or sideways within a layer; one that points up, a package
cycle, or `aotd_jax.models` reaching `aotd_jax.kernels` directly is a debt. The debts that
exist are listed in `KNOWN_DEBT` with the file that holds them: a new one fails this test, and
so does a listed one that is gone (take it off the list, so the ratchet holds).
"""

from __future__ import annotations

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOP = ("aotd_jax", "experts", "configs", "launch")

# Higher imports lower; equal is a sideways arrow (allowed unless it closes a cycle).
LAYER = {
  "launch": 6,
  "configs": 5,
  # a project builds on the experts and the core; nothing but launch, configs, tests imports it
  "aotd_jax.projects.toyworld": 4.5,
  "aotd_jax.projects": 4.5,
  "experts": 4,
  "aotd_jax.rehearsal": 4,
  "aotd_jax.agent": 3,
  "aotd_jax.train": 3,
  "aotd_jax.eval": 3,
  # one layer, ordered inside: hf reads and writes models; data may use a model's processor
  "aotd_jax.hf": 2.2,
  "aotd_jax.data": 2.1,
  "aotd_jax.models": 2,
  "aotd_jax.layers": 1,
  "aotd_jax.kernels": 1,
  "aotd_jax.sharding": 1,
  "aotd_jax.host_memory": 1,
  "aotd_jax.memory_stats": 1,
  "aotd_jax.paths": 1,
  "aotd_jax": 0,
}

# (importing file, imported package): the arrows against the stack today (docs/architecture.md).
KNOWN_DEBT: set[tuple[str, str]] = set()


def package_of(module: str) -> str | None:
  """'aotd_jax.models.llama' -> 'aotd_jax.models'; 'experts.tools' -> 'experts';
  'aotd_jax.projects.toyworld.run' -> 'aotd_jax.projects.toyworld' (each project a package)."""
  parts = module.split(".")
  if parts[0] not in TOP:
    return None
  if parts[:2] == ["aotd_jax", "projects"] and len(parts) > 2:
    return ".".join(parts[:3])
  if parts[0] == "aotd_jax" and len(parts) > 1:
    return "aotd_jax." + parts[1]
  return parts[0]


def arrows() -> dict[tuple[str, str], str]:
  """(importing package, imported package) -> one file that holds the arrow."""
  out: dict[tuple[str, str], str] = {}
  per_file = collections.defaultdict(set)
  for top in TOP:
    for path in sorted((ROOT / top).rglob("*.py")):
      rel = path.relative_to(ROOT).as_posix()
      src = package_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
      for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
          targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
          targets = (
            [f"{node.module}.{a.name}" for a in node.names]
            if node.module == "aotd_jax"
            else [node.module]
          )
        for t in targets:
          dst = package_of(t)
          if dst and dst != src and dst in LAYER:
            per_file[rel].add(dst)
            out.setdefault((src, dst), rel)
  arrows.per_file = per_file
  return out


def _debts() -> set[tuple[str, str]]:
  edges = arrows()
  found = set()
  for (src, dst), _ in edges.items():
    if src not in LAYER:
      continue
    up = LAYER[dst] > LAYER[src]
    cycle = (dst, src) in edges and LAYER[dst] == LAYER[src]
    direct_kernels = src == "aotd_jax.models" and dst == "aotd_jax.kernels"
    if up or cycle or direct_kernels:
      for rel, dsts in arrows.per_file.items():
        if (
          dst in dsts
          and package_of(".".join(pathlib.PurePosixPath(rel).with_suffix("").parts)) == src
        ):
          found.add((rel, dst))
  return found


def test_every_package_has_a_layer():
  packages = {src for src, _ in arrows()} | {dst for _, dst in arrows()}
  assert not packages - set(LAYER), (
    f"packages without a layer in tests/test_architecture.py: {sorted(packages - set(LAYER))}"
    " (add them to LAYER and to docs/architecture.md)"
  )


def test_no_new_arrow_against_the_stack():
  debts = _debts()
  new = sorted(debts - KNOWN_DEBT)
  assert not new, (
    "imports against docs/architecture.md's layers (or a package cycle): "
    f"{new}; inject the dependency instead of importing it"
  )


def test_listed_debts_still_exist():
  gone = sorted(KNOWN_DEBT - _debts())
  assert not gone, f"these debts are paid: take them off KNOWN_DEBT: {gone}"
