"""CLI: `python -m aotd_jax.hf convert --hf_dir D --orbax_dir O` and `... export --orbax_dir O --hf_dir D`."""

from __future__ import annotations

import argparse
import sys

from aotd_jax.hf import orbax_io
from aotd_jax.hf.io import CheckpointError


def main(argv: list[str] | None = None) -> int:
  """Runs one sub-command; returns the exit status (2 with a one-line message on a bad checkpoint)."""
  parser = argparse.ArgumentParser(
    prog="python -m aotd_jax.hf", description="Convert between Hugging Face and Orbax checkpoints."
  )
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser(
    "convert", help="HF directory -> Orbax CheckpointManager directory (step 0)"
  )
  conv.add_argument("--hf_dir", required=True)
  conv.add_argument("--orbax_dir", required=True)
  conv.add_argument("--dtype", default="float32", help="parameter dtype stored in the checkpoint")
  exp = sub.add_parser("export", help="latest step of an Orbax directory -> HF directory")
  exp.add_argument("--orbax_dir", required=True)
  exp.add_argument("--hf_dir", required=True)
  exp.add_argument("--step", type=int, default=None, help="default: the latest step")
  exp.add_argument("--dtype", default=None, help="tensor dtype to write (default: as stored)")
  exp.add_argument("--max_shard_bytes", type=int, default=5 * 2**30)
  args = parser.parse_args(argv)
  try:
    if args.command == "convert":
      out = orbax_io.convert(args.hf_dir, args.orbax_dir, dtype=args.dtype)
    else:
      out = orbax_io.export(
        args.orbax_dir,
        args.hf_dir,
        step=args.step,
        dtype=args.dtype,
        max_shard_bytes=args.max_shard_bytes,
      )
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
