"""UniVTG checkpoints: the official torch state dict <-> our Flax NNX `UniVTG`.

The released checkpoints (`model_best.ckpt`) are `torch.save({"model": state_dict,
"optimizer": ..., "epoch": ..., "opt": argparse.Namespace})`. UniVTG is not a transformers
model, so this is its own loader (not the HF registry); it reuses the name-table machinery of
`aotd_jax.hf.mapping`. The config comes from the saved `opt` where present, otherwise from the
tensor shapes (`nheads` cannot be read from shapes: pass it, default 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import (
  CONV1D,
  TRANSPOSE,
  Rule,
  embed,
  export_params,
  import_params,
  linear,
  norm,
)
from aotd_jax.models.abstract import abstract_model
from aotd_jax.models.univtg import UniVTG, UniVTGConfig

# Official feature widths per `v_feat_types` entry (scripts/*.sh).
FEATURE_DIMS = {"slowfast": 2304, "i3d": 1024, "c3d": 500, "clip": 512}
_OPT_FIELDS = (
  "t_feat_dim",
  "hidden_dim",
  "nheads",
  "enc_layers",
  "dim_feedforward",
  "n_input_proj",
  "max_q_l",
  "max_v_l",
  "use_txt_pos",
  "clip_length",
  "input_dropout",
  "dropout",
  "droppath",
)


def rules(config: UniVTGConfig) -> list[Rule]:
  """Official state-dict names -> our parameter paths."""
  out = []
  for i in range(config.enc_layers):
    hf, fx = f"transformer.encoder.layers.{i}", f"transformer/encoder/layers/{i}"
    out += linear(f"{hf}.self_attn.out_proj", f"{fx}/self_attn/out_proj")
    out += [
      Rule(f"{hf}.self_attn.in_proj_weight", f"{fx}/self_attn/in_proj/kernel", TRANSPOSE),
      Rule(f"{hf}.self_attn.in_proj_bias", f"{fx}/self_attn/in_proj/bias"),
    ]
    out += linear(f"{hf}.linear1", f"{fx}/linear1") + linear(f"{hf}.linear2", f"{fx}/linear2")
    out += norm(f"{hf}.norm1", f"{fx}/norm1") + norm(f"{hf}.norm2", f"{fx}/norm2")
  out += embed("txt_position_embed.position_embeddings", "txt_position_embed/position_embeddings")
  out += norm("txt_position_embed.LayerNorm", "txt_position_embed/LayerNorm")
  out += embed("token_type_embeddings", "token_type_embeddings")
  for head in ("span_embed", "class_embed"):
    for j in range(3):
      out += [
        Rule(f"{head}.layers.{j}.weight", f"{head}/layers/{j}/kernel", CONV1D),
        Rule(f"{head}.layers.{j}.bias", f"{head}/layers/{j}/bias"),
      ]
  for proj in ("input_txt_proj", "input_vid_proj"):
    for j in range(config.n_input_proj):
      out += norm(f"{proj}.{j}.LayerNorm", f"{proj}/{j}/LayerNorm")
      # The official block is Sequential(Dropout, Linear): the Linear is `net.1`.
      out += linear(f"{proj}.{j}.net.1", f"{proj}/{j}/linear")
  out.append(Rule("weightedpool.weight", "weightedpool/weight"))
  return out


def _read(path: str, trust_pickle: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  import torch  # Local import: torch is only needed to read/write the official format.

  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such UniVTG checkpoint file")
  try:
    if trust_pickle:
      ckpt = torch.load(path, map_location="cpu", weights_only=False)
    else:
      # The official file pickles its argparse options; allow exactly that class.
      with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt / foreign files
    raise CheckpointError(
      f"{path}: cannot be read as a torch checkpoint "
      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
      "if you trust the file, pass trust_pickle=True"
    ) from None
  if not isinstance(ckpt, Mapping):
    raise CheckpointError(
      f"{path}: expected a dict (state dict or {{'model': ...}}), got {type(ckpt).__name__}"
    )
  state = ckpt.get("model", ckpt)
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{path}: 'model' is a {type(state).__name__}, not a state dict")
  opt = ckpt.get("opt")
  opt = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt or {})
  tensors = {}
  for k, v in state.items():
    if not hasattr(v, "detach"):
      raise CheckpointError(f"{path}: state entry {k!r} is a {type(v).__name__}, not a tensor")
    tensors[k.replace("module.", "", 1) if k.startswith("module.") else k] = (
      v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
    )
  return tensors, opt


def config_from_checkpoint(
  tensors: Mapping[str, np.ndarray], opt: Mapping[str, Any], path: str, **overrides
) -> UniVTGConfig:
  """A `UniVTGConfig` from the saved options and tensor shapes (shapes win on widths)."""

  def shape(name):
    if name not in tensors:
      raise CheckpointError(f"{path}: missing tensor {name} (is this a UniVTG checkpoint?)")
    return tensors[name].shape

  layer_re = re.compile(r"transformer\.encoder\.layers\.(\d+)\.")
  layers = {int(m[1]) for k in tensors if (m := layer_re.match(k))}
  n_proj = {int(m[1]) for k in tensors if (m := re.match(r"input_vid_proj\.(\d+)\.", k))}
  v_feat_dim = shape("input_vid_proj.0.net.1.weight")[1]
  use_tef = bool(opt.get("use_tef", "tef" in str(opt.get("ctx_mode", "video_tef"))))
  types = [t for t in FEATURE_DIMS if t in str(opt.get("v_feat_types", ""))]
  # Official order of concatenation is the order of the if-blocks in the scripts.
  dims = tuple(opt.get("v_feat_dims") or (FEATURE_DIMS[t] for t in types))
  if sum(dims) + 2 * use_tef != v_feat_dim:
    dims = (v_feat_dim - 2 * use_tef,)
  kw = {k: opt[k] for k in _OPT_FIELDS if k in opt and opt[k] is not None}
  kw.update(
    v_feat_dims=dims,
    use_tef=use_tef,
    t_feat_dim=shape("input_txt_proj.0.net.1.weight")[1],
    hidden_dim=shape("token_type_embeddings.weight")[1],
    enc_layers=len(layers),
    dim_feedforward=shape("transformer.encoder.layers.0.linear1.weight")[0],
    n_input_proj=len(n_proj),
    max_q_l=shape("txt_position_embed.position_embeddings.weight")[0],
  )
  kw.setdefault("nheads", 8)
  kw.update(overrides)
  fields = {f.name for f in dataclasses.fields(UniVTGConfig)}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ValueError(f"unknown UniVTGConfig field(s) {bad}")
  kw = {k: v for k, v in kw.items() if k in fields}
  kw["v_feat_dims"] = tuple(kw["v_feat_dims"])
  return UniVTGConfig(**kw)


def load_univtg(
  path: str | os.PathLike,
  *,
  dtype=jnp.float32,
  trust_pickle: bool = False,
  seed: int = 0,
  **config_overrides,
) -> UniVTG:
  """Builds `UniVTG` from an official checkpoint (`model_best.ckpt` or a bare state dict).

  Every tensor must map onto a parameter with the right shape; a missing, unexpected or
  mis-shaped tensor raises `CheckpointError` naming the file and the tensor.
  `config_overrides` set config fields the file does not carry (e.g. `nheads=8`); `seed`
  seeds the dropout streams used after `model.train()`.
  """
  path = os.fspath(path)
  tensors, opt = _read(path, trust_pickle)
  name = jnp.dtype(dtype).name
  config = config_from_checkpoint(tensors, opt, path, **config_overrides)
  options = ComputeOptions(dtype=name, param_dtype=name)
  model = abstract_model(lambda rngs: UniVTG(config, options=options, rngs=rngs))
  model = import_params(model, rules(config), tensors, {}, source=path, dtype=dtype)
  _materialize_rng_state(model, seed)
  model.eval()
  return model


def _materialize_rng_state(model: nnx.Module, seed: int) -> None:
  """Gives the dropout RNG streams (abstract after `eval_shape`) concrete values."""
  for _, var in nnx.to_flat_state(nnx.state(model)):
    value = var.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):
      if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        var.set_value(jax.random.key(seed))
      else:
        var.set_value(jnp.zeros(value.shape, value.dtype))


def state_dict(model: UniVTG) -> dict[str, np.ndarray]:
  """The official state dict (numpy) of `model`."""
  return export_params(model, rules(model.config))


def save_univtg(model: UniVTG, path: str | os.PathLike, *, epoch: int = 0) -> None:
  """Writes `{"model": state_dict, "opt": Namespace, "epoch"}` as the official code saves it."""
  import torch

  cfg = model.config
  types = [t for d in cfg.v_feat_dims for t, w in FEATURE_DIMS.items() if w == d]
  opt = {k: getattr(cfg, k) for k in _OPT_FIELDS}
  opt.update(
    v_feat_dim=cfg.v_feat_dim,
    v_feat_dims=list(cfg.v_feat_dims),
    use_tef=cfg.use_tef,
    ctx_mode="video_tef" if cfg.use_tef else "video",
    v_feat_types="_".join(types) if len(types) == len(cfg.v_feat_dims) else "custom",
    model_id="univtg",
    span_loss_type="l1",
  )
  sd = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict(model).items()}
  torch.save({"model": sd, "opt": argparse.Namespace(**opt), "epoch": epoch}, os.fspath(path))
