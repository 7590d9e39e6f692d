r"""Two versions of the AMX matmul kernel in one process: a git revision against the working tree.

  OMP_NUM_THREADS=2 python benchmarks/kernel_ab.py --base=HEAD~1 --passes=6

Builds `aotd_jax/kernels/amx_matmul.cc` as of `--base` under renamed symbols next to the working
tree's, checks that both give the same outputs on the Llama bench's train-step shapes (x @ W,
g @ W^T, x^T @ g), then times them interleaved, call by call, so that load from other processes
hits both alike. Prints GFLOP/s per shape and the total speed ratio (> 1: the working tree is
faster). A noisy box moves both sides; separate runs do not compare. `benchmarks/RESULTS.md` has
the figures this produced.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SOURCE = "aotd_jax/kernels/amx_matmul.cc"


def base_target(rev: str, out_dir: str) -> str:
  """Builds the kernel source at git revision `rev` with renamed symbols, registers it as an XLA
  FFI target on the CPU, and returns the target's name."""
  import jax

  from aotd_jax.kernels import build

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = subprocess.run(
    ["git", "show", f"{rev}:{_SOURCE}"], cwd=root, check=True, capture_output=True, text=True
  ).stdout
  src = src.replace("AotdAmxMatmul", "AotdAmxMatmulBase").replace(
    "AotdAmxSupported", "AotdAmxSupportedBase"
  )
  path = os.path.join(out_dir, "amx_matmul_base.cc")
  with open(path, "w") as f:
    f.write(src)
  lib = ctypes.cdll.LoadLibrary(build.build_library(path, out_dir=out_dir))
  jax.ffi.register_ffi_target(
    "aotd_amx_matmul_base", jax.ffi.pycapsule(lib.AotdAmxMatmulBase), platform="cpu"
  )
  return "aotd_amx_matmul_base"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--base", default="HEAD", help="git revision of the base version")
  parser.add_argument("--passes", type=int, default=6, choices=[3, 6])
  parser.add_argument("--reps", type=int, default=12)
  args = parser.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np

  from aotd_jax.kernels import amx_matmul
  from benchmarks.matmul_cpu import train_matmul_shapes
  from configs.llama_tiny import get_config

  if not amx_matmul.available():
    sys.exit("kernel_ab: this CPU has no AMX-BF16 (or no C++ compiler)")
  with tempfile.TemporaryDirectory() as tmp:
    targets = {"base": base_target(args.base, tmp), "tree": amx_matmul.TARGET}

    def call(target, a, b, ta, tb):
      m = a.shape[1] if ta else a.shape[0]
      n = b.shape[0] if tb else b.shape[1]
      return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((m, n), jnp.float32))(
        a, b, transpose_a=ta, transpose_b=tb, passes=np.int32(args.passes)
      )

    m = get_config("bench").model
    kv = m.hidden_size // m.num_attention_heads * m.num_key_value_heads
    shapes = train_matmul_shapes(8 * 256, m.hidden_size, kv, m.intermediate_size, m.vocab_size)
    rng = np.random.default_rng(0)
    total = {"base": 0.0, "tree": 0.0}
    print(f"base {args.base} vs the working tree, bf16x{args.passes}, jax {jax.__version__}")
    for mm, k, n in shapes[:5]:  # forward shapes; each also as dx (g W^T) and dW (x^T g)
      for rows, inner, cols, ta, tb in (
        (mm, k, n, False, False),
        (mm, n, k, False, True),
        (k, mm, n, True, False),
      ):
        a = jnp.asarray(rng.standard_normal((inner, rows) if ta else (rows, inner), np.float32))
        b = jnp.asarray(rng.standard_normal((cols, inner) if tb else (inner, cols), np.float32))
        fns = {key: jax.jit(lambda x, y, t=t: call(t, x, y, ta, tb)) for key, t in targets.items()}
        diff = float(jnp.abs(fns["base"](a, b) - fns["tree"](a, b)).max())
        times = {key: [] for key in fns}
        for _ in range(args.reps):
          for key, fn in fns.items():
            t0 = time.perf_counter()
            fn(a, b).block_until_ready()
            times[key].append(time.perf_counter() - t0)
        med = {key: float(np.median(t)) for key, t in times.items()}
        for key in total:
          total[key] += med[key]
        gf = 2.0 * rows * inner * cols / 1e9
        print(
          f"{rows:5d} x {inner:5d} x {cols:5d} ta={ta:d} tb={tb:d}: base "
          f"{gf / med['base']:6.1f}  tree {gf / med['tree']:6.1f} GFLOP/s  speed "
          f"{med['base'] / med['tree']:.3f}x  max |diff| {diff:.1e}"
        )
    print(
      f"total: base {total['base'] * 1e3:.1f} ms, tree {total['tree'] * 1e3:.1f} ms, "
      f"speed {total['base'] / total['tree']:.3f}x"
    )


if __name__ == "__main__":
  main()
