"""UniVTG forward on CPU at the released model's size: our jitted Flax port vs a PyTorch reference.

Both run the same weights (the torch reference's state dict, written in the official
checkpoint layout and read back with `load_univtg`). Prints ms per call and the ratio.

  python benchmarks/univtg_cpu.py [--batch 1] [--clips 75] [--tokens 20] [--iters 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _reference_module():
  """The torch reference of tests/test_univtg.py (one definition for tests and benchmark)."""
  spec = importlib.util.spec_from_file_location("_univtg_ref", ROOT / "tests" / "test_univtg.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _time(fn, iters: int) -> float:
  fn()  # warm-up (compilation for jax)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--clips", type=int, default=75)
  ap.add_argument("--tokens", type=int, default=20)
  ap.add_argument("--iters", type=int, default=20)
  args = ap.parse_args()

  import torch
  from flax import nnx

  from aotd_jax.hf.univtg import load_univtg
  from aotd_jax.models import univtg_postprocess as pp

  ref_mod = _reference_module()
  # The released SlowFast+CLIP models: hidden 1024, 4 layers, 8 heads, FFN 1024.
  size = dict(
    v_feat_dims=(2304, 512),
    t_feat_dim=512,
    hidden_dim=1024,
    nheads=8,
    enc_layers=4,
    dim_feedforward=1024,
    max_q_l=75,
  )
  torch.manual_seed(0)
  ref = ref_mod._TorchUniVTG(size).eval()
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "model_best.ckpt"
    torch.save(
      {
        "model": ref.state_dict(),
        "opt": argparse.Namespace(nheads=8, v_feat_types="slowfast_clip"),
      },
      path,
    )
    model = load_univtg(path)
  rng = np.random.default_rng(0)
  inp = pp.batch_inputs(
    [
      [rng.normal(size=(args.clips, 2304)), rng.normal(size=(args.clips, 512))]
      for _ in range(args.batch)
    ],
    [rng.normal(size=(args.tokens, 512)) for _ in range(args.batch)],
  )
  forward = nnx.jit(lambda m, x: m(**x))
  flax_ms = _time(lambda: forward(model, inp).pred_spans.block_until_ready(), args.iters)
  t_inp = {k: torch.from_numpy(v) for k, v in inp.items()}
  with torch.no_grad():
    torch_ms = _time(
      lambda: ref(t_inp["src_txt"], t_inp["src_txt_mask"], t_inp["src_vid"], t_inp["src_vid_mask"]),
      args.iters,
    )
    out = forward(model, inp)
    logits = ref(t_inp["src_txt"], t_inp["src_txt_mask"], t_inp["src_vid"], t_inp["src_vid_mask"])[
      0
    ].numpy()
  err = float(np.abs(np.asarray(out.pred_logits) - logits).max())
  print(
    f"batch {args.batch}, {args.clips} clips, {args.tokens} tokens, released size "
    f"(hidden 1024, 4 layers); max |pred_logits diff| {err:.1e}"
  )
  print(f"flax jit  : {flax_ms:8.2f} ms/call")
  print(f"torch eager: {torch_ms:8.2f} ms/call")
  print(f"ratio (torch / flax): {torch_ms / flax_ms:.2f}x")


if __name__ == "__main__":
  main()
