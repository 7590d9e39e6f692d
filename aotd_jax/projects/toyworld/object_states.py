"""Per-frame object states read from a CLIP vision tower's patch tokens (a video feature).

    reader = load_object_states(encoder_dir)   # the toy world's frame encoder + its head
    feats = reader(pixel_values)               # (frames, len(names) * (4 + len(actions)))

A linear head on the last layer's patch tokens says, per patch, which named object covers
it (softmax over `names` + background) and what that object is doing (one sigmoid per
action). `ObjectStates` pools that into one vector per frame: for every name, in the order
of `names`, a block of

    [presence (max over patches of p(name)), mass (mean over patches of p(name)),
     centre x, centre y (p(name)-weighted patch centres, 0-1), action_1 ... action_A
     (p(name)-weighted mean of the action probabilities)]

Because each name has its own block, the vector keeps *which* object does what (a pooled
CLS feature loses it), and renaming objects is a permutation of blocks
(`permute_name_blocks`), which is how the toy grounder learns to ground (object, action)
combinations it never saw (`aotd_jax.projects.toyworld.vision_experts.train_grounder`).

On disk: a Hugging Face `CLIPVisionModel` directory (the tower; any LLaVA or CLIP loader
reads it) plus `object_head.safetensors` (`kernel` (hidden, names + 1 + actions), `bias`)
and `object_states.json` (`names`, `actions`).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

HEAD_FILE = "object_head.safetensors"
META_FILE = "object_states.json"
STATE_FIELDS = ("presence", "mass", "centre_x", "centre_y")


class ObjectStates(nnx.Module):
  """A CLIP vision tower + per-patch (object, action) head, pooled to per-name states.

  Args:
    tower: `aotd_jax.models.clip.CLIPVisionModel`.
    names: object names, one block each, in this order.
    actions: action names, the last `len(actions)` entries of each block.
    rngs: for the head's initialisation.
  """

  def __init__(self, tower, names: Sequence[str], actions: Sequence[str], *, rngs: nnx.Rngs):
    if not names or not actions:
      raise ValueError(
        f"ObjectStates: names ({len(names)}) and actions ({len(actions)}) must both be non-empty"
      )
    self.tower = tower
    self.names, self.actions = tuple(names), tuple(actions)
    self.head = nnx.Linear(tower.config.hidden_size, len(names) + 1 + len(actions), rngs=rngs)

  @property
  def image_size(self) -> int:
    return int(self.tower.config.image_size)

  @property
  def block_size(self) -> int:
    """Features per name: `STATE_FIELDS` then one per action."""
    return len(STATE_FIELDS) + len(self.actions)

  @property
  def feature_dim(self) -> int:
    return len(self.names) * self.block_size

  def patch_logits(self, pixel_values: jax.Array) -> jax.Array:
    """(B, 3, S, S) -> (B, patches, names + 1 + actions) head logits on the last layer."""
    return self.head(self.tower(pixel_values).last_hidden_state[:, 1:])

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    """(B, 3, S, S) -> (B, len(names) * block_size) per-name states (module docstring)."""
    out = self.patch_logits(pixel_values)
    n, grid = len(self.names), self.image_size // self.tower.config.patch_size
    p = jax.nn.softmax(out[..., : n + 1], -1)[..., :n]  # (B, P, N)
    act = jax.nn.sigmoid(out[..., n + 1 :])  # (B, P, A)
    centres = (jnp.arange(grid, dtype=p.dtype) + 0.5) / grid
    xy = jnp.stack(jnp.meshgrid(centres, centres), -1).reshape(-1, 2)  # (P, 2) as (x, y)
    mass = p.sum(1) + 1e-6  # (B, N)
    centre = jnp.einsum("bpn,pc->bnc", p, xy) / mass[..., None]
    doing = jnp.einsum("bpn,bpa->bna", p, act) / mass[..., None]
    block = jnp.concatenate(
      [p.max(1)[..., None], (mass / p.shape[1])[..., None], centre, doing], -1
    )  # (B, N, block)
    return block.reshape(block.shape[0], -1)


def permute_name_blocks(features: np.ndarray, perm: Sequence[int], num_names: int) -> np.ndarray:
  """`ObjectStates` features (..., num_names * block) with name i's block moved to perm[i]
  (the features of the same frames had object i been called name perm[i])."""
  features = np.asarray(features)
  block = features.shape[-1] // num_names
  if block * num_names != features.shape[-1] or sorted(perm) != list(range(num_names)):
    raise ValueError(
      f"permute_name_blocks: features of width {features.shape[-1]} and a "
      f"permutation of {len(perm)} do not split into {num_names} name blocks"
    )
  blocks = features.reshape(*features.shape[:-1], num_names, block)
  out = np.empty_like(blocks)
  out[..., np.asarray(perm), :] = blocks
  return out.reshape(features.shape)


def save_object_states(model: ObjectStates, out_dir: str | os.PathLike) -> str:
  """Writes the tower (HF `CLIPVisionModel`), the head and the names / actions."""
  from safetensors.numpy import save_file

  from aotd_jax import hf

  out_dir = str(out_dir)
  hf.save_pretrained(model.tower, out_dir)
  save_file(
    {"kernel": np.asarray(model.head.kernel.value), "bias": np.asarray(model.head.bias.value)},
    os.path.join(out_dir, HEAD_FILE),
  )
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(
      {
        "names": list(model.names),
        "actions": list(model.actions),
        "block": list(STATE_FIELDS) + list(model.actions),
      },
      f,
      indent=1,
    )
  return out_dir


def has_object_states(path: str | os.PathLike) -> bool:
  """Whether `path` holds a saved `ObjectStates` (tower, head and names)."""
  return os.path.isfile(os.path.join(str(path), META_FILE))


def load_object_states(path: str | os.PathLike) -> ObjectStates:
  """Reads what `save_object_states` wrote; a missing or mis-shaped part names its file."""
  from safetensors.numpy import load_file

  from aotd_jax import hf

  path = str(path)
  meta_path, head_path = os.path.join(path, META_FILE), os.path.join(path, HEAD_FILE)
  for p in (meta_path, head_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(
        f"{p}: missing; {path} is not a saved ObjectStates "
        "(a frame encoder trained before the head was kept?)"
      )
  with open(meta_path) as f:
    meta = json.load(f)
  if not isinstance(meta.get("names"), list) or not isinstance(meta.get("actions"), list):
    raise ValueError(f"{meta_path}: expected lists 'names' and 'actions'")
  tower = hf.from_pretrained(path)
  model = ObjectStates(tower, meta["names"], meta["actions"], rngs=nnx.Rngs(0))
  weights = load_file(head_path)
  for key in ("kernel", "bias"):
    want = getattr(model.head, key).value.shape
    got = weights.get(key)
    if got is None or got.shape != want:
      raise ValueError(
        f"{head_path}: tensor '{key}' is "
        f"{'missing' if got is None else tuple(got.shape)}, expected {want}"
      )
    getattr(model.head, key).value = jnp.asarray(got)
  return model
