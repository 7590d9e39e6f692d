"""Reading and writing Hugging Face model directories: config.json and safetensors shards.

A directory may be local or a URL (`gs://bucket/model`, any fsspec filesystem `etils.epath`
reaches: `aotd_jax.data.files`). Local safetensors are memory-mapped (`safe_open`); a remote
file is read whole into memory, one at a time, and written from bytes.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from aotd_jax.data import files

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A Hugging Face directory that cannot be read as the model it claims to be."""


def read_config(path: str) -> dict:
  """Returns the parsed `config.json` of a HF model directory, with a clear error if absent."""
  cfg_path = files.join(path, "config.json")
  if not files.isfile(cfg_path):
    if files.isfile(files.join(path, "hf_config.json")):  # aotd_jax.hf.orbax_io's layout
      raise CheckpointError(
        f"{path}: an Orbax checkpoint directory (hf_config.json, as `python -m aotd_jax.hf "
        "convert` and launch.train write), not a Hugging Face directory (config.json + "
        "safetensors): give the Hugging Face directory here (launch.evaluate --student takes "
        "either; `python -m aotd_jax.hf export` turns an Orbax one back)"
      )
    raise CheckpointError(f"{cfg_path}: no config.json in this Hugging Face directory")
  try:
    return json.loads(files.read_text(cfg_path))
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e


def write_config(config: Mapping, path: str) -> None:
  files.makedirs(path)
  files.write_text(
    files.join(path, "config.json"), json.dumps(dict(config), indent=2, sort_keys=True)
  )


def _read_file(fpath: str) -> dict[str, np.ndarray]:
  """Reads one safetensors file through `safetensors.safe_open` (memory-mapped: only the
  tensors are copied out, never the whole file; bf16 via ml_dtypes, no torch needed)."""
  from safetensors import SafetensorError, safe_open

  try:
    if files.is_url(fpath):  # no memory-mapping through fsspec: the bytes of this one file
      from safetensors.numpy import load  # pylint: disable=g-import-not-at-top

      with files.open_binary(fpath) as f:
        return load(f.read())
    with safe_open(fpath, framework="numpy") as f:
      return {key: f.get_tensor(key) for key in f.keys()}
  except SafetensorError as e:
    raise CheckpointError(f"{fpath}: unreadable safetensors file ({e})") from e


def _write_file(tensors: Mapping[str, np.ndarray], fpath: str) -> None:
  """Writes one safetensors file with the `safetensors` package (bf16 included)."""
  from safetensors.numpy import save, save_file

  remote = files.is_url(fpath)  # an object store writes the whole object at once
  tmp = fpath if remote else fpath + ".tmp"
  try:
    if remote:
      data = save(dict(tensors), metadata={"format": "pt"})
    else:
      save_file(dict(tensors), tmp, metadata={"format": "pt"})
  except Exception as e:  # the package names the tensor and dtype it cannot write
    raise CheckpointError(f"{fpath}: cannot write ({e})") from e
  if remote:
    files.write_bytes(fpath, data)
  else:
    os.replace(tmp, fpath)


def read_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads all tensors of a HF directory (single file or sharded index).

  Returns the tensors and, for each name, the file it came from (for error messages).
  """
  index_path = files.join(path, SAFE_INDEX)
  single = files.join(path, SAFE_WEIGHTS)
  if files.isfile(index_path):
    weight_map = json.loads(files.read_text(index_path))["weight_map"]
    names = sorted(set(weight_map.values()))
  elif files.isfile(single):
    names = [SAFE_WEIGHTS]
  else:
    raise CheckpointError(f"{path}: no {SAFE_WEIGHTS} or {SAFE_INDEX} found")
  tensors: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  for name in names:
    fpath = files.join(path, name)
    if not files.isfile(fpath):
      raise CheckpointError(f"{fpath}: listed in {SAFE_INDEX} but missing")
    for key, value in _read_file(fpath).items():
      tensors[key] = value
      origin[key] = fpath
  return tensors, origin


def write_tensors(
  tensors: Mapping[str, np.ndarray], path: str, *, max_shard_bytes: int = 5 * 2**30
) -> None:
  """Writes tensors as `model.safetensors`, or as shards plus an index when over the limit."""
  files.makedirs(path)
  # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d tensors (CLIP logit_scale) into (1,).
  tensors = {k: np.asarray(v, order="C") for k, v in tensors.items()}
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key in sorted(tensors):
    nbytes = tensors[key].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = tensors[key]
    size += nbytes
  if len(shards) == 1:
    _write_file(shards[0], files.join(path, SAFE_WEIGHTS))
    return
  weight_map = {}
  total = 0
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    _write_file(shard, files.join(path, name))
    for key, value in shard.items():
      weight_map[key] = name
      total += value.nbytes
  files.write_text(
    files.join(path, SAFE_INDEX),
    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2),
  )
