r"""Host time per jitted expert call spent flattening the model's weights: `nnx.State` vs `FlatState`.

jit flattens its arguments at every call. The experts pass their model's weights to each
jitted part (LLaVA's features / prefix / scoring / generation, OWLv2's image side and class
head, UniVTG's CLIP sides and forward: ~9 calls a question in the CoT benchmark), and an
`nnx.State` flattens in Python node by node; `aotd_jax.models.generate.FlatState` holds the
leaves flattened once. Two measures per model:
  dispatch: seconds per call of a jitted `x + 1` that takes the weights as an argument
    (dispatch only: the function does no work, so the host cost is what is timed), at the
    cpu preset of benchmarks/cot_throughput.py (real arrays);
  flatten: seconds per `jax.tree.flatten` of the weights (what jit does per call before its
    C++ dispatch) at the cpu preset and at the gpu preset's real sizes (abstract: the graph is
    built by `nnx.eval_shape`, no weights allocated).
Best of `--repeats` runs of `--calls` calls each; the two forms alternate.

  python benchmarks/jit_call_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _best(fn, calls: int, repeats: int) -> float:
  """Seconds per call of `fn()`, best of `repeats` runs of `calls` calls."""
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      fn()
    best = min(best, (time.perf_counter() - t0) / calls)
  return best


def _states(preset: dict, abstract: bool) -> dict:
  """{name: nnx.State} of the preset's LLaVA, OWLv2, CLIP and UniVTG (abstract: shapes only)."""
  from flax import nnx

  from experts import random_weights as rw

  def build(make):
    return nnx.state(nnx.eval_shape(make) if abstract else make())

  return {
    "llava": build(lambda: rw.llava(preset["llava"])[0]),
    "owlv2": build(lambda: rw.owlv2(preset["owl"])),
    "univtg": build(lambda: rw.univtg(preset["univtg"], preset["clip"])[0]),
    "clip": build(lambda: rw.univtg(preset["univtg"], preset["clip"])[1]),
  }


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--calls", type=int, default=2000)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default="", help="also write the JSON result here")
  args = ap.parse_args(argv)
  if args.calls < 1 or args.repeats < 1:
    raise SystemExit("--calls and --repeats must be >= 1")

  import jax
  import jax.numpy as jnp

  from aotd_jax.models.generate import flat_state
  from benchmarks.cot_bench.presets import PRESETS

  @jax.jit
  def step(weights, x):
    return x + 1

  x = jnp.ones((), jnp.float32)
  out = {}
  for preset, abstract in (("cpu", False), ("gpu", True)):
    for name, state in _states(PRESETS[preset], abstract).items():
      flat = flat_state(state)
      row = {"leaves": len(flat.leaves)}
      forms = {"state": state, "flat_state": flat}
      if not abstract:
        for form, weights in forms.items():
          step(weights, x).block_until_ready()  # compiled before timing
          row[f"dispatch_us_{form}"] = round(
            _best(lambda w=weights: step(w, x), args.calls, args.repeats) * 1e6, 1
          )
      for form, weights in forms.items():
        row[f"flatten_us_{form}"] = round(
          _best(lambda w=weights: jax.tree.flatten(w), args.calls, args.repeats) * 1e6, 1
        )
      out[f"{preset}/{name}"] = row
  result = {"per_call": out, "load_average": [round(v, 1) for v in os.getloadavg()]}
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
