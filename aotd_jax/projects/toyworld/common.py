"""Shared pieces of the demo's stages: errors, the stage cache, the config stamp, splits."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DONE = "DONE"
REPO_ROOT = Path(__file__).resolve().parents[3]


class DemoError(RuntimeError):
  """A stage cannot run (bad config, missing input); the message names the stage and cause."""


def write_json(path: str | os.PathLike, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True, default=_jsonable)
  os.replace(tmp, path)


def _jsonable(value: Any):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cached(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
  """`compute()`'s JSON result, read back from `path` when a previous run finished it."""
  if os.path.exists(path):
    try:
      with open(path) as f:
        return json.load(f)
    except json.JSONDecodeError as e:
      raise DemoError(f"{path}: corrupt stage summary ({e}); delete it to recompute") from None
  value = compute()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_json(path, value)
  return value


STAMP_IGNORED = ("report", "efficiency", "compilation_cache")


def check_config_stamp(config, workdir: str) -> None:
  """Cached stages are only valid for the config that made them: the first run writes
  `workdir/config.json`; a rerun with different settings (other than those in
  `STAMP_IGNORED`) is refused, naming the sections that differ."""
  path = os.path.join(workdir, "config.json")
  current = {
    k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in STAMP_IGNORED
  }
  if not os.path.exists(path):
    write_json(path, current)
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except json.JSONDecodeError as e:
    raise DemoError(f"{path}: corrupt config stamp ({e}); use a fresh --workdir") from None
  differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  if differ:
    raise DemoError(
      f"{workdir} holds a run of another config (sections {differ} differ from "
      f"{path}); use a fresh --workdir or delete it"
    )


def done(directory: str | os.PathLike) -> bool:
  return os.path.exists(os.path.join(directory, DONE))


def mark_done(directory: str | os.PathLike) -> None:
  Path(directory, DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def read_split(world_dir: str, split: str):
  """The split's questions as `VideoQA` records (STAR reader, as for real data)."""
  from aotd_jax.data import annotations

  return annotations.read("star", os.path.join(world_dir, f"{split}.json"))


def trainer(module: str, name: str) -> Callable | None:
  """`aotd_jax.projects.toyworld.<module>.<name>` when that expert trainer is committed, else None."""
  try:
    mod = importlib.import_module(f"aotd_jax.projects.toyworld.{module}")
  except ImportError:
    return None
  return getattr(mod, name, None)


def load_tokenizer(path: str):
  """A tokenizer directory (the toy tokenizer, or a student's copy of it)."""
  from aotd_jax import hf

  return hf.load_tokenizer(path)


def enable_compilation_cache(workdir: str) -> None:
  """JAX's persistent compilation cache in `workdir/jax_cache`: the three students share
  their train-step program, the efficiency processes reuse the evaluation's, reruns reuse all.
  A cache directory already set (JAX_COMPILATION_CACHE_DIR: the user's, or `make test`'s for
  its run) is kept, and so is a lower minimum compile time: the demo only adds caching."""
  import jax

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update(
      "jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache")
    )
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    min(0.5, jax.config.jax_persistent_cache_min_compile_time_secs),
  )
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def student_format(config) -> dict:
  """The prompt and answer format the students train with (`config.students.prompt_format`:
  "plain" | "official"; `answer_style`: "letter_text" | "letter"), which their evaluation uses."""
  s = config.students
  return {
    "prompt_format": s.get("prompt_format", "plain"),
    "answer_style": s.get("answer_style", "letter_text"),
  }


def run_student(config, model, tokenizer, records, world_dir, mode: str, max_new_tokens: int):
  """`aotd_jax.eval.student.run_student` with the config's evaluation settings."""
  from aotd_jax.eval import student as student_eval

  e = config.eval
  return student_eval.run_student(
    model,
    tokenizer,
    records,
    mode=mode,
    video_root=os.path.join(world_dir, "videos"),
    num_frames=e.num_frames,
    decode_size=e.decode_size,
    batch_size=e.batch_size,
    max_new_tokens=max_new_tokens,
    prompt_format=student_format(config)["prompt_format"],
  )
