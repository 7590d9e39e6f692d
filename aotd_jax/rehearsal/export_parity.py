"""Loads an exported student with transformers and compares its logits with ours.

  python -m aotd_jax.rehearsal.export_parity --hf_dir=EXPORT --orbax_dir=TRAIN/checkpoints \
      [--init_dir=HF_DIR_BEFORE_TRAINING] [--out=parity.json]

The student is the export's `architectures[0]` (LLaVA-NeXT-Video, LLaVA-OneVision or Qwen2-VL).
transformers' `<Architecture>.from_pretrained(EXPORT)` must load every tensor (no missing or
unexpected keys); its logits on a random video batch must match those of the trained model
restored from Orbax (max |diff| <= --tol, float32). With `--init_dir`, the exported weights must
also differ from the initial ones (training changed them) while the frozen vision tower did not.
Exit status 0 when all hold, 1 otherwise; the figures are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

# architecture -> the prefixes of its vision tower's parameter names in transformers
VISION_TOWERS = {
  "LlavaNextVideoForConditionalGeneration": ("vision_tower",),
  "LlavaOnevisionForConditionalGeneration": ("vision_tower",),
  "Qwen2VLForConditionalGeneration": ("visual",),
}


def video_batch(config, rng, frames: int = 2, batch: int = 2):
  """(ids, mask, videos): text, one clip's video tokens (between Qwen2-VL's vision start / end
  markers for Qwen2-VL), text; the last row left-padded by 2. Videos are (B, T, 3, S, S)."""
  n = config.video_tokens(frames)
  vocab = config.text_config.vocab_size
  video = np.full((batch, n), config.video_token_index)
  start = getattr(config, "vision_start_token_id", None)
  if start is not None:
    video = np.concatenate(
      [np.full((batch, 1), start), video, np.full((batch, 1), config.vision_end_token_id)], 1
    )
  ids = np.concatenate(
    [rng.integers(10, vocab - 10, (batch, 5)), video, rng.integers(10, vocab - 10, (batch, 4))], 1
  )
  media = {
    getattr(config, "image_token_index", None),
    getattr(config, "image_token_id", None),
    start,
    getattr(config, "vision_end_token_id", None),
  } - {None}
  text = np.zeros_like(ids, bool)
  text[:, :5] = text[:, -4:] = True
  ids = np.where(text & np.isin(ids, list(media | {config.video_token_index})), 11, ids)
  mask = np.ones_like(ids)
  mask[-1, :2] = 0
  size = config.vision_config.image_size
  videos = rng.standard_normal((batch, frames, 3, size, size)).astype(np.float32)
  return ids, mask, videos


def torch_inputs(model, ids, mask, videos) -> dict:
  """transformers' forward arguments for the same batch: Qwen2-VL takes its processor's
  flattened patches with `video_grid_thw` and computes M-RoPE positions itself; the LLaVA
  students take the frames and the mask's positions."""
  import jax.numpy as jnp
  import torch
  from aotd_jax.models import qwen2_vl

  args = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
  if isinstance(model, qwen2_vl.Qwen2VLForConditionalGeneration):
    patches, grid = qwen2_vl.patchify_frames(model.config, jnp.asarray(videos))
    kinds = np.where(ids == model.config.video_token_id, 2, 0)
    return dict(
      args,
      pixel_values_videos=torch.tensor(np.asarray(patches)),
      video_grid_thw=torch.tensor([list(grid)] * len(ids)),
      mm_token_type_ids=torch.tensor(kinds),
    )
  positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, 1)
  return dict(args, position_ids=torch.tensor(positions), pixel_values_videos=torch.tensor(videos))


def compare(hf_dir: str, orbax_dir: str, init_dir: str = "") -> dict:
  import jax.numpy as jnp
  import torch
  import transformers
  from flax import nnx

  from aotd_jax.hf import io, orbax_io

  architecture = (io.read_config(hf_dir).get("architectures") or [""])[0]
  if architecture not in VISION_TOWERS:
    raise ValueError(
      f"{hf_dir}/config.json: architectures[0]={architecture!r} is not a student "
      f"this check knows ({sorted(VISION_TOWERS)})"
    )
  cls = getattr(transformers, architecture)
  model = orbax_io.restore_model(orbax_dir)
  loaded, info = cls.from_pretrained(hf_dir, output_loading_info=True, dtype=torch.float32)
  ids, mask, videos = video_batch(model.config, np.random.default_rng(0))
  with torch.no_grad():
    want = loaded.eval()(**torch_inputs(model, ids, mask, videos)).logits.float().numpy()
  # jitted: one XLA program for the forward, not ~145 programs compiled op by op
  forward = nnx.jit(lambda m, i, a, v: m(i, a, pixel_values_videos=v).logits)
  got = np.asarray(
    forward(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(videos)), np.float32
  )
  out = {
    "architecture": architecture,
    "missing_keys": list(info["missing_keys"]),
    "unexpected_keys": list(info["unexpected_keys"]),
    "max_abs_diff": float(np.abs(got - want)[mask > 0].max()),
    "logit_scale": float(np.abs(want).max()),
  }
  if init_dir:
    init = cls.from_pretrained(init_dir, dtype=torch.float32)
    before = dict(init.named_parameters())
    changed = [
      k
      for k, v in loaded.named_parameters()
      if k in before and not torch.equal(v.detach(), before[k].detach())
    ]
    out["tensors_compared"] = sum(k in before for k, _ in loaded.named_parameters())
    out["tensors_changed_by_training"] = len(changed)
    towers = VISION_TOWERS[architecture]
    out["vision_tower_changed"] = sorted(
      k for k in changed if any(t in k.split(".") for t in towers)
    )[:5]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aotd_jax.rehearsal.export_parity")
  p.add_argument("--hf_dir", required=True)
  p.add_argument("--orbax_dir", required=True)
  p.add_argument("--init_dir", default="")
  p.add_argument("--tol", type=float, default=1e-4)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  out = compare(a.hf_dir, a.orbax_dir, a.init_dir)
  ok = (
    not out["missing_keys"]
    and not out["unexpected_keys"]
    and out["max_abs_diff"] <= a.tol * max(1.0, out["logit_scale"])
  )
  if a.init_dir:
    ok = ok and out["tensors_changed_by_training"] > 0 and not out["vision_tower_changed"]
  out["ok"] = ok
  print(json.dumps(out))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(out, f)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
