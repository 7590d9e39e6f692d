"""Provenance of a CoT run: `out_dir/manifest.json` names what made every record.

For each role (detector, grounder, action recogniser, video QA, selector; program, CoT and
judge LLMs) the manifest holds the backend kind, its checkpoint path or server URL and model
name, and a fingerprint of local weights; then the config, the code version and, per shard,
the counts. Every record carries `"manifest": "manifest.json#<id>"`, the id being a hash of the
roles and the config, so an oracle-made CoT can always be told from an expert-made one.

A manifest is written once per output directory. A later run (a resume, another shard) with
the same roles and config adds its counts; one with other roles or config is refused, since
its records would mix backends in one dataset. Settings that do not change a record (how
expert calls are batched: `info`) are recorded, per run, but never refused on.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import pathlib
import subprocess
from typing import Any, Iterator, Mapping

from aotd_jax.agent import manifest_added

FILE = "manifest.json"
# role keys that manifests of 2026-12-04 wrote into `roles` (hence into the id) although they do
# not change a record; a manifest holding them is compared without them
_LEGACY_INFO_KEYS = ("coalesce", "coalesce_wait_s")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pth", ".pt", ".msgpack", ".npz", ".h5")
_EDGE = 1 << 20  # bytes read from each end of a weight file for its fingerprint


class ManifestError(ValueError):
  """An output directory already holds records of other backends or another config."""


def _weight_files(path: pathlib.Path) -> list[pathlib.Path]:
  if path.is_file():
    return [path]
  return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_fingerprint(path: str, *, full: bool = False) -> dict | None:
  """sha256 over the weight files under `path` (a file or a directory); None if not local.

  `full=False` hashes each file's name, size and first and last MiB (seconds for a 7B model,
  and any re-save or truncation changes it); `full=True` hashes every byte.
  """
  p = pathlib.Path(path)
  if not path or not p.exists():
    return None
  h = hashlib.sha256()
  files = _weight_files(p)
  for f in files:
    size = f.stat().st_size
    h.update(f"{f.relative_to(p) if p.is_dir() else f.name}\0{size}\0".encode())
    with open(f, "rb") as stream:
      if full or size <= 2 * _EDGE:
        for chunk in iter(lambda: stream.read(1 << 24), b""):
          h.update(chunk)
      else:
        h.update(stream.read(_EDGE))
        stream.seek(size - _EDGE)
        h.update(stream.read(_EDGE))
  return {
    "sha256": h.hexdigest(),
    "files": len(files),
    "method": "full" if full else "name, size, first and last MiB of each weight file",
  }


def code_version() -> dict:
  """The package's git revision (and whether the tree had changes), when it is a checkout."""
  root = pathlib.Path(__file__).resolve().parents[2]
  try:
    rev = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    ).stdout.strip()
    return {"git": rev, "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"git": None, "dirty": None}


def llm_role(section: Mapping[str, Any] | None) -> dict:
  """A role entry for an LLM config section (`kind`, `kwargs`: base_url / model / model_dir)."""
  if not section or section.get("kind", "none") == "none":
    return {"kind": "none"}
  kind = section.get("kind")
  kwargs = dict(section.get("kwargs", {}) or {})
  entry = {"kind": kind}
  for key in ("base_url", "model", "model_dir", "path", "factory"):
    value = kwargs.get(key, section.get(key) if key == "factory" else None)
    if value:
      entry[key] = value
  if kind == "local" and kwargs.get("model_dir"):
    entry["weights"] = weights_fingerprint(kwargs["model_dir"])
  return entry


def vision_summary(roles: Mapping[str, Mapping[str, Any]]) -> str:
  """ "real", "oracle", "mixed" or "none" over the vision roles."""
  kinds = {
    roles[r]["kind"]
    for r in ("detector", "grounder", "action_recognizer", "video_qa")
    if r in roles and roles[r].get("kind") not in (None, "none")
  }
  if not kinds:
    return "none"
  if kinds == {"oracle"}:
    return "oracle"
  return "mixed" if "oracle" in kinds else "real"


def manifest_id(roles: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
  """A hash of what decides a record's content: the roles and the `identity` settings."""
  text = json.dumps({"roles": roles, "identity": identity}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
  with open(str(path) + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: pathlib.Path, data: dict) -> None:
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
  os.replace(tmp, path)


def open_manifest(
  out_dir: str,
  roles: Mapping[str, Any],
  identity: Mapping[str, Any],
  config: Mapping[str, Any],
  info: Mapping[str, Any] | None = None,
  *,
  accept_old_defaults: bool = False,
) -> str:
  """Writes (or checks) `out_dir/manifest.json`; returns the records' `manifest` reference.

  `identity` holds the settings that decide a record's content (data, prompts, program
  source, judge, frames, decoding); `config` is stored whole, but settings outside `identity`
  (question limits, batch sizes, workers) may change between shards and resumes. `info` holds
  settings that do not change a record either (e.g. the experts' cross-program batching): each
  run's is appended to the manifest's `runs`, and a resume with another `info` is accepted.

  A manifest written before some keys were recorded (`manifest_added.ADDED_KEYS`: frame
  sampling, window, the grounder's frame preprocessing) is refused naming them and their old
  defaults; with `accept_old_defaults` a run whose config asks for those defaults resumes it,
  and the defaults are written into the manifest (`old_defaults_accepted` says when).

  Raises:
    ManifestError: the directory's manifest names other roles or another identity, or lacks
      keys this run records (see above).
  """
  folder = pathlib.Path(out_dir)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / FILE
  ident = manifest_id(roles, identity)
  run = {
    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "info": dict(info or {}),
  }
  with _locked(path):
    if path.exists():
      old = json.loads(path.read_text())
      old_roles = _without_legacy_info(old.get("roles", {}))
      if old.get("id") != ident and manifest_id(old_roles, old.get("identity", {})) != ident:
        current = {"roles": dict(roles), "identity": dict(identity)}
        recorded = {"roles": old_roles, "identity": old.get("identity", {})}
        added = manifest_added.missing_keys(recorded, current)
        if not added:
          raise _mismatch(path, recorded, current)
        filled = manifest_added.with_old_defaults(recorded, added)
        if manifest_id(filled["roles"], filled["identity"]) != ident:
          raise _mismatch(path, filled, current, added)
        if not accept_old_defaults:
          raise ManifestError(
            f"{path} was written before the manifest recorded "
            f"{manifest_added.describe(added)}. This run's config asks for those same values, "
            "so its records match the directory's: rerun with --accept_old_defaults to resume "
            "it (the old defaults are then written into the manifest), or use a new out_dir."
          )
        old["roles"] = dict(filled["roles"])
        old["identity"] = filled["identity"]
        old.setdefault("old_defaults_accepted", []).append(
          {"at": run["started"], "keys": {k.name: k.old_default for k in added}}
        )
      old.setdefault("runs", []).append(run)
      _write(path, old)
      return f"{FILE}#{old['id']}"  # the directory's records keep one reference
    _write(
      path,
      {
        "id": ident,
        "vision_experts": vision_summary(roles),
        "roles": dict(roles),
        "identity": dict(identity),
        "config": dict(config),
        "code": code_version(),
        "created": run["started"],
        "runs": [run],
        "shards": {},
      },
    )
  return f"{FILE}#{ident}"


def _without_legacy_info(roles: Mapping[str, Any]) -> dict:
  return {
    r: {k: v for k, v in e.items() if k not in _LEGACY_INFO_KEYS} if isinstance(e, dict) else e
    for r, e in roles.items()
  }


def _mismatch(
  path: pathlib.Path,
  old: Mapping[str, Any],
  new: Mapping[str, Any],
  added: list[manifest_added.AddedKey] | None = None,
) -> ManifestError:
  """The refusal of a resume whose roles or identity differ from the directory's manifest."""
  old_roles, roles = old["roles"], new["roles"]
  changed = sorted(r for r in set(old_roles) | set(roles) if old_roles.get(r) != roles.get(r))
  settings = _diff(old["identity"], new["identity"]) if old["identity"] != new["identity"] else ""
  what = f"roles that differ: {changed}" if changed else "roles that differ: none"
  if not added:
    what += f"; the settings differ: {settings}" if settings or not changed else ""
    return ManifestError(
      f"{path} was written by a run with other backends or config ({what}); its records would "
      "mix with this run's. Use a new out_dir."
    )
  details = [_roles_diff(old_roles, roles, changed)] if changed else []
  details += [settings] if settings else []
  return ManifestError(
    f"{path} was written before the manifest recorded {manifest_added.describe(added)}; with "
    f"those old values it still differs from this run ({'; '.join(details)}). To resume that "
    "directory, give this run its values ("
    + "; ".join(f"{k.name}: {k.setting}" for k in added)
    + ") and pass --accept_old_defaults; to make CoTs with this run's settings, use a new out_dir."
  )


def _roles_diff(old: Mapping[str, Any], new: Mapping[str, Any], roles: list[str]) -> str:
  parts = []
  for r in roles:
    a, b = old.get(r), new.get(r)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      parts.append(f"{r}: {_diff(a, b)}")
    else:
      parts.append(f"{r}: {a!r} -> {b!r}")
  return "; ".join(parts)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
  """`key: old -> new` for each differing key; nested dicts by their dotted keys."""
  parts = []
  for k in sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      parts.append(_diff(a, b, f"{prefix}{k}."))
    else:
      parts.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return ", ".join(parts) or "?"


def add_counts(out_dir: str, shard: str, counts: Mapping[str, Any]) -> None:
  """Records one shard's counts (questions, kept, ...) in the manifest."""
  path = pathlib.Path(out_dir) / FILE
  with _locked(path):
    data = json.loads(path.read_text())
    data.setdefault("shards", {})[shard] = dict(counts)
    _write(path, data)
