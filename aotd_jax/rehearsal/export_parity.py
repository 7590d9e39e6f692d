"""Loads an exported student with transformers and compares its logits with ours.

  python -m aotd_jax.rehearsal.export_parity --hf_dir=EXPORT --orbax_dir=TRAIN/checkpoints \
      [--init_dir=HF_DIR_BEFORE_TRAINING] [--out=parity.json]

transformers' `LlavaNextVideoForConditionalGeneration.from_pretrained(EXPORT)` must load every
tensor (no missing or unexpected keys); its logits on a random video batch must match those of
the trained model restored from Orbax (max |diff| <= --tol, float32). With `--init_dir`, the
exported weights must also differ from the initial ones (training changed them).
Exit status 0 when all hold, 1 otherwise; the figures are printed as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def video_batch(config, rng, frames: int = 2, batch: int = 2):
  """(ids, mask, videos): a prompt with one video's placeholder tokens, left-padded row 2."""
  n = frames * config.video_tokens_per_frame()
  vocab = config.text_config.vocab_size
  ids = np.concatenate([rng.integers(10, vocab - 10, (batch, 5)),
                        np.full((batch, n), config.video_token_index),
                        rng.integers(10, vocab - 10, (batch, 4))], 1)
  ids = np.where(ids == config.image_token_index, 11, ids)
  mask = np.ones_like(ids)
  mask[-1, :2] = 0
  size = config.vision_config.image_size
  videos = rng.standard_normal((batch, frames, 3, size, size)).astype(np.float32)
  return ids, mask, videos


def compare(hf_dir: str, orbax_dir: str, init_dir: str = "") -> dict:
  import jax.numpy as jnp
  import torch
  import transformers
  from aotd_jax.hf import orbax_io
  model = orbax_io.restore_model(orbax_dir)
  loaded, info = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(
      hf_dir, output_loading_info=True, torch_dtype=torch.float32)
  ids, mask, videos = video_batch(model.config, np.random.default_rng(0))
  positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, 1)
  with torch.no_grad():
    want = loaded.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         position_ids=torch.tensor(positions),
                         pixel_values_videos=torch.tensor(videos)).logits.float().numpy()
  got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask),
                         pixel_values_videos=jnp.asarray(videos)).logits, np.float32)
  out = {"missing_keys": list(info["missing_keys"]),
         "unexpected_keys": list(info["unexpected_keys"]),
         "max_abs_diff": float(np.abs(got - want)[mask > 0].max()),
         "logit_scale": float(np.abs(want).max())}
  if init_dir:
    init = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(init_dir)
    before = dict(init.named_parameters())
    changed = [k for k, v in loaded.named_parameters()
               if k in before and not torch.equal(v.detach(), before[k].detach())]
    out["tensors_changed_by_training"] = len(changed)
    out["vision_tower_changed"] = sorted(k for k in changed if "vision_tower" in k)[:5]
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
  ok = (not out["missing_keys"] and not out["unexpected_keys"]
        and out["max_abs_diff"] <= a.tol * max(1.0, out["logit_scale"]))
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
