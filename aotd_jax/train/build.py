"""Builds the trainer's inputs from a config: the student (HF directory or fresh init) and data."""

from __future__ import annotations

import json
import os

import jax
from flax import nnx
from jax.sharding import Mesh

from aotd_jax import hf, sharding as sharding_lib
from aotd_jax.hf import api as hf_api
from aotd_jax.hf import registry
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.abstract import abstract_model


def load_vision_init(path: str) -> tuple[dict, nnx.Module]:
  """(HF `vision_config` dict, `CLIPVisionTransformer`) of the CLIP directory `path` (a
  `CLIPModel` or `CLIPVisionModel` in HF layout): a student's pretrained vision tower."""
  from aotd_jax.hf.clip import _vision_to_hf

  if not os.path.isfile(os.path.join(str(path), "config.json")):
    raise ValueError(
      f"vision_init={path!r}: no config.json (expected a CLIP directory in HF "
      "layout, e.g. the demo's experts/encoder)"
    )
  clip_model = hf.from_pretrained(str(path))
  if not hasattr(clip_model, "vision_model"):
    raise ValueError(
      f"vision_init={path!r}: {type(clip_model).__name__} is not a CLIP model "
      "(CLIPModel / CLIPVisionModel)"
    )
  vc = getattr(clip_model.config, "vision_config", clip_model.config)
  hf_vision = {k: v for k, v in _vision_to_hf(vc).items() if k != "architectures"}
  return hf_vision, clip_model.vision_model


def compute_options(cfg) -> ComputeOptions:
  """The student's `ComputeOptions` from its config section's `compute` (absent: the defaults);
  an unknown or invalid option raises a ValueError naming `student.compute` and the key."""
  return ComputeOptions.from_mapping(cfg.get("compute"), where="student.compute")


def build_student(cfg, *, mesh: Mesh, seed: int = 0) -> nnx.Module:
  """The student: from `cfg.hf_dir` if set, else a fresh init of `cfg.architecture` with the
  HF-style config dict `cfg.init`, placed on `mesh` (initialised directly sharded).

  A fresh Video-LLM may take its vision tower from a CLIP directory `cfg.vision_init` (its
  `vision_config` replaces `init`'s, its weights the random ones), as LLaVA students start
  from a pretrained CLIP. `cfg.compute` holds the `ComputeOptions` (dtypes, remat policy,
  attention, precision, CPU kernels, `freeze_vision_tower`: no gradients into the tower).
  """
  options = compute_options(cfg)
  if cfg.get("hf_dir"):
    return hf.from_pretrained(cfg.hf_dir, options=options, mesh=mesh)
  adapter = registry.adapter_for(cfg.architecture)
  hf_init, tower = dict(cfg.init), None
  if cfg.get("vision_init"):
    if "vision_config" not in hf_init:
      raise ValueError(
        f"vision_init={cfg.vision_init!r}: architecture {cfg.architecture} has no vision tower"
      )
    hf_init["vision_config"], tower = load_vision_init(cfg.vision_init)
  config = adapter.config_from_hf(hf_init)
  abstract = abstract_model(
    lambda rngs: adapter.model_class(config, options=options, rngs=rngs), seed
  )
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding_lib.state_shardings(abstract_state, mesh)

  def init():
    return nnx.state(adapter.model_class(config, options=options, rngs=nnx.Rngs(seed)))

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  model = nnx.merge(graphdef, state)
  if tower is not None:
    target = model.vision_tower.vision_model
    placed = jax.tree.map(
      lambda new, old: jax.device_put(new, old.sharding), nnx.state(tower), nnx.state(target)
    )
    nnx.update(target, placed)
  return model


def write_hf_config(model: nnx.Module, directory: str, *, source_dir: str = "") -> None:
  """Writes `hf_config.json` beside the checkpoints, so `python -m aotd_jax.hf export` can
  rebuild the model without the training config, and a student's processor files with the
  pixel normalisation its frames get (`source_dir`'s, the checkpoint it started from, else
  the released processor's), which `launch/evaluate.py` and `launch/export.py` read back."""
  from aotd_jax.hf import processor_files
  from aotd_jax.train.checkpoint import as_path

  hf_config = hf_api.hf_config_of(model)
  directory = as_path(directory)  # local, gs:// or any fsspec filesystem
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / "hf_config.json.tmp"
  tmp.write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  tmp.replace(directory / "hf_config.json")
  normalization = processor_files.pixel_normalization(model.config, source_dir)
  processor_files.write_processor_files(str(directory), hf_config, normalization)
