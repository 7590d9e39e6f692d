"""Checks that each CoT set was made on the frames the trainer decodes, before training starts.

A CoT job records in its `manifest.json` (beside its `cot-*.array_record`) the frames its
experts saw: the window (`identity.data.read_kwargs.window`: the question's or the whole
video), which N frames (`identity.frame_sampling`) and, when its traces number the sampled
frames (`frame_numbers="sampled"`), how many (`identity.max_frames`). The trainer's
`config.data.window`, `.frame_sampling` and `.num_frames` must agree, or the rationales'
frame numbers and windows name other frames than the student sees. A mismatch stops the run
naming both values, the manifest and the flag; `--config.data.allow_cot_frame_mismatch=True`
trains anyway (deliberately), and `workdir/cot_frames.json` records what was compared.

A manifest written before these keys were recorded is read with the values its run used
(`aotd_jax.agent.manifest_added`). CoT files whose records name no manifest (hand-made sets)
are not checked, and the report says so; files whose records name one that is not beside them
stop the run.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from absl import logging

from aotd_jax.agent import manifest_added
from aotd_jax.data import files
from aotd_jax.train import data as train_data
from aotd_jax.train.config_check import ConfigError

MANIFEST = "manifest.json"
_SPLIT = re.compile(r"-\d{5}-of-(\d{5})\.[a-z_]+$")
ALLOW_FLAG = "--config.data.allow_cot_frame_mismatch=True"
REPORT = "cot_frames.json"
# formats whose records carry a question window (`annotations.read(window=)` changes them)
WINDOWED_FORMATS = ("star", "mvbench")
# the CoT job's config settings for each compared key (for messages)
COT_SETTINGS = {
  "window": "window={} in the configs/cot/*.py string",
  "frame_sampling": "frame_sampling={} in the configs/cot/*.py string",
  "num_frames": "frames={} in the configs/cot/*.py string (config.max_frames)",
}


def cot_sources(d) -> list[tuple[str, Any]]:
  """(flag, CoT path or glob) of each CoT source of `config.data`, as the pipeline reads them."""
  out = [(f"--config.data.cot[{i}].path", c["path"]) for i, c in enumerate(d.get("cot", ()) or ())]
  for name, ds in (d.get("datasets", None) or {}).items():
    if ds.get("cots", ""):
      out.append((f"--config.data.datasets.{name}.cots", ds["cots"]))
  return out


def _first_record(path: str) -> Mapping | None:
  """The first record of a CoT file (None: an empty file or one that is not JSON records)."""
  try:
    if path.endswith((".array_record", ".arrayrecord")):
      import grain.python as grain

      source = grain.ArrayRecordDataSource([path])
      return json.loads(source[0]) if len(source) else None
    with files.open_binary(path) as f:
      if isinstance(f, str):
        with open(f, "rb") as local:
          line = local.readline()
      else:
        line = f.readline()
    return json.loads(line) if line.strip() else None
  except (ValueError, OSError):
    return None


def _read_manifest(path: str, flag: str) -> dict:
  try:
    data = json.loads(files.read_text(path))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{flag}: its CoT manifest {path} is not readable JSON ({e})") from None
  if not isinstance(data, dict):
    raise ConfigError(f"{flag}: its CoT manifest {path} is not a JSON object")
  return data


def recorded_frames(manifest: Mapping[str, Any]) -> dict[str, dict]:
  """{key: {"value", "recorded"}} of the frames a manifest's CoTs were made on: `window` (for
  formats with question windows), `frame_sampling`, `num_frames` (when the traces number the
  sampled frames). A key the manifest predates has its old default, `recorded=False`."""
  identity = manifest.get("identity") or {}
  out = {}

  def value(path: tuple[str, ...]) -> dict:
    got = manifest_added.lookup(manifest, path)
    if got is not manifest_added.MISSING:
      return {"value": got, "recorded": True}
    added = next(k for k in manifest_added.ADDED_KEYS if k.path == path)
    return {"value": added.old_default, "recorded": False}

  if (identity.get("data") or {}).get("format") in WINDOWED_FORMATS:
    out["window"] = value(("identity", "data", "read_kwargs", "window"))
  out["frame_sampling"] = value(("identity", "frame_sampling"))
  if identity.get("frame_numbers") == "sampled" and identity.get("max_frames"):
    out["num_frames"] = {"value": int(identity["max_frames"]), "recorded": True}
  if identity.get("frame_numbers"):  # how the traces number frames: reported, for evaluation
    out["frame_numbers"] = {"value": identity["frame_numbers"], "recorded": True}
  grounder = (manifest.get("roles") or {}).get("grounder") or {}
  if grounder.get("kind") == "univtg":  # the grounder's own CLIP frames: reported, not compared
    out["grounder_frame_preprocess"] = value(("roles", "grounder", "frame_preprocess"))
  return out


def trainer_frames(d) -> dict[str, Any]:
  """The frames the trainer decodes under `config.data`."""
  return {
    "window": d.get("window", train_data.DATA_DEFAULTS["window"]),
    "frame_sampling": d.get("frame_sampling", train_data.DATA_DEFAULTS["frame_sampling"]),
    "num_frames": d.get("num_frames", None),
  }


def _folder(path: str) -> str:
  return path.rpartition("/")[0] if files.is_url(path) else os.path.dirname(path)


def _manifests(flag: str, pattern: Any, allow: bool) -> list[dict]:
  """One entry per folder of the source's CoT files: its manifest, or why it has none."""
  from aotd_jax.data import pipeline

  try:
    cot_files = pipeline.cot_files(pattern)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"{flag}: {e}") from None
  by_folder: dict[str, list[str]] = {}
  for f in cot_files:
    by_folder.setdefault(_folder(f), []).append(f)
  out = []
  for folder, members in by_folder.items():
    splits = sorted({m.group(1) for m in map(_SPLIT.search, members) if m})
    if len(splits) > 1:
      raise ConfigError(
        f"{flag}: {folder} holds CoT shards of {len(splits)} different splits (-of-"
        f"{', -of-'.join(splits)}): two runs over the same questions, whose CoTs would be "
        "trained on twice. Keep one run's shards there (python -m launch.merge_cots refuses "
        "the mix too)"
      )
    path = files.join(folder, MANIFEST)
    refs = {
      rec.get("manifest")
      for rec in (_first_record(f) for f in members)
      if isinstance(rec, Mapping) and isinstance(rec.get("manifest"), str)
    }
    entry = {"source": flag, "files": members, "manifest": path, "refs": sorted(refs)}
    if files.exists(path):
      out.append(entry)
      continue
    if refs and not allow:
      raise ConfigError(
        f"{flag}: the CoT records of {members[0]} name {sorted(refs)[0]}, but {path} is missing: "
        "copy the CoT job's manifest.json beside its cot-*.array_record (the trainer checks the "
        f"frames it records), or pass {ALLOW_FLAG} to train without that check"
      )
    why = "its manifest is missing (allowed)" if refs else "its records name no manifest"
    out.append({**entry, "manifest": None, "unchecked": why})
  return out


def check(cfg) -> dict:
  """Compares every CoT source's manifest with `cfg.data`; returns the report.

  Raises:
    ConfigError: a frame setting differs (unless `data.allow_cot_frame_mismatch`), a manifest
      is unreadable or missing while the records name it, or a source's files are missing.
  """
  d = cfg.data
  allow = bool(d.get("allow_cot_frame_mismatch", False))
  trainer = trainer_frames(d)
  report: dict[str, Any] = {"trainer": trainer, "allow_cot_frame_mismatch": allow, "sources": []}
  errors = []
  for flag, pattern in cot_sources(d):
    for entry in _manifests(flag, pattern, allow):
      if entry["manifest"] is None:
        report["sources"].append(entry)
        continue
      manifest = _read_manifest(entry["manifest"], flag)
      ids = {r.partition("#")[2] for r in entry.pop("refs")}
      if ids and manifest.get("id") not in ids:
        errors.append(
          f"{flag}: the CoT records name manifest id(s) {sorted(ids)}, but {entry['manifest']} "
          f"has id {manifest.get('id')!r}: the files beside it were made by another run"
        )
      frames = recorded_frames(manifest)
      mismatches = []
      for key, got in frames.items():
        if key not in trainer or trainer[key] is None or got["value"] == trainer[key]:
          continue
        mismatches.append(key)
        source = "" if got["recorded"] else ", not recorded: its run's default before 2026-12-04"
        errors.append(
          f"{flag}: its CoTs were made with {key}={got['value']!r} ({entry['manifest']}{source}), "
          f"but this run trains with --config.data.{key}={trainer[key]!r}. Set "
          f"--config.data.{key}={got['value']} to train on the CoTs' frames, or regenerate the "
          f"CoTs with {COT_SETTINGS[key].format(trainer[key])}"
        )
      report["sources"].append(
        {**entry, "id": manifest.get("id"), "recorded": frames, "mismatches": mismatches}
      )
  if errors and not allow:
    raise ConfigError(
      "the CoT sets' manifests do not match this run (frames, or the run that made them):\n  "
      + "\n  ".join(errors)
      + f"\nIf the mismatch is deliberate, pass {ALLOW_FLAG} (recorded in WORKDIR/{REPORT})."
    )
  report["errors_allowed"] = errors
  return report


def frame_numbers(report: Mapping[str, Any]) -> str | None:
  """How the checked CoT sets' traces number frames (`sampled` or `source`): what a student
  trained on them names in its rationales; None when no set records it or the sets differ."""
  values = {
    (s.get("recorded") or {}).get("frame_numbers", {}).get("value")
    for s in report.get("sources", ())
    if s.get("manifest")
  }
  values.discard(None)
  return values.pop() if len(values) == 1 else None


def manifest_ids(report: Mapping[str, Any]) -> dict[str, str]:
  """{manifest id: manifest path} of the CoT sets a report checked."""
  return {s["id"]: s["manifest"] for s in report.get("sources", ()) if s.get("id")}


def trained_manifests(report: Mapping[str, Any]) -> list[dict]:
  """The manifest.json of each CoT set a report checked (the sets the run trained on), read
  again from where the run found it: what an export's card names when not given a manifest.
  One no longer readable there, or holding another run's id, is left out with a warning."""
  out = []
  for manifest_id, path in manifest_ids(report).items():
    try:
      manifest = json.loads(files.read_text(path))
    except (OSError, ValueError) as e:
      logging.warning("CoT set %s: %s is no longer readable (%s)", manifest_id, path, e)
      continue
    if not isinstance(manifest, dict) or manifest.get("id") != manifest_id:
      logging.warning("CoT set %s: %s now holds another run's manifest", manifest_id, path)
      continue
    out.append(manifest)
  return out


def read_report(workdir: str) -> dict | None:
  """`workdir/cot_frames.json` (None: absent or unreadable)."""
  path = files.join(workdir, REPORT)
  if not files.isfile(path):
    return None
  try:
    report = json.loads(files.read_text(path))
  except (OSError, ValueError):
    return None
  return report if isinstance(report, dict) else None


def write_report(report: Mapping[str, Any], workdir: str) -> str:
  """Writes `workdir/cot_frames.json`; returns its path."""
  files.makedirs(workdir)
  path = files.join(workdir, REPORT)
  files.write_text(path, json.dumps(report, indent=1, sort_keys=True, default=str))
  return path
