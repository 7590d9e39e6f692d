r"""Host time per decode call of the local Flax LLM's `DecodeEngine`, at a 7B model's structure.

The engine runs one jitted decode call per `steps_per_call` tokens and waits for it; whatever
its worker thread does around the call (flattening the weights for jit, sending the rows'
state, copying the new tokens back, the rows' bookkeeping) leaves an accelerator idle. That
host work depends on the model's structure (how many weight arrays jit flattens), not on its
widths, so the model here is Llama-2-7B's structure (32 layers, 291 weight arrays, as
DeepSeek-Coder-6.7B, the program writer) at tiny widths (hidden `--hidden`): its device time
is small, its host work is a 7B's.

Per decode call (the engine's `_decode`: its host work, the jitted call, the copy back; `--calls`
calls at 8 rows, after a warm-up run of the same length that compiles each window): median
and best wall time. On this CPU the XLA program runs in the calling thread, so the host work
is not split from it here: compare trees (`--tree`), the same program runs in both, so the
difference is host work. Also the flatten alone (`jax.tree.flatten`) of the real-size 7B
weights (abstract: built by `nnx.eval_shape`) as an `nnx.State` and as a `FlatState`.

  python benchmarks/engine_host.py
  python benchmarks/engine_host.py --tree=../old_checkout   # the engine of another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median(xs: list[float]) -> float:
  xs = sorted(xs)
  return xs[len(xs) // 2]


def _flatten_us(state, repeats: int = 5, calls: int = 500) -> float:
  import jax

  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      jax.tree.flatten(state)
    best = min(best, (time.perf_counter() - t0) / calls)
  return round(best * 1e6, 1)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--layers", type=int, default=32)
  ap.add_argument("--hidden", type=int, default=32)
  ap.add_argument("--slots", type=int, default=8)
  ap.add_argument("--calls", type=int, default=200, help="timed decode calls")
  ap.add_argument("--steps_per_call", type=int, nargs="+", default=[1, 16])
  ap.add_argument("--tree", default="", help="import aotd_jax from this checkout instead")
  ap.add_argument("--out", default="", help="also write the JSON result here")
  args = ap.parse_args(argv)
  if args.tree:
    sys.path.insert(0, os.path.abspath(args.tree))

  import jax
  from flax import nnx

  from aotd_jax.models import engine as engine_lib
  from aotd_jax.models.generate import flat_state
  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

  cfg = LlamaConfig(
    vocab_size=512,
    hidden_size=args.hidden,
    intermediate_size=args.hidden * 2,
    num_hidden_layers=args.layers,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=8192,
  )
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  result: dict = {
    "model": {
      "layers": args.layers,
      "hidden": args.hidden,
      "weights": len(jax.tree.leaves(nnx.state(model))),
    },
    "slots": args.slots,
  }
  prompts = [[3 + (7 * i + j) % 500 for j in range(12)] for i in range(args.slots)]
  for steps in args.steps_per_call:
    engine = engine_lib.DecodeEngine(
      model, slots=args.slots, max_len=8192, eos_token_id=None, pad_token_id=0,
      steps_per_call=steps,
    )  # fmt: skip
    walls: list[float] = []
    inner = engine._decode

    def wall_decode(inner=inner, walls=walls):
      t0 = time.perf_counter()
      inner()
      walls.append(time.perf_counter() - t0)

    engine._decode = wall_decode
    new = args.calls * steps + 1
    engine.generate(prompts, max_new_tokens=new)  # compiles each window the timed run uses
    walls.clear()
    engine.generate(prompts, max_new_tokens=new)
    engine.close()
    result[f"steps_per_call_{steps}"] = {
      "calls": len(walls),
      "wall_us_median": round(_median(walls) * 1e6, 1),
      "wall_us_best": round(min(walls) * 1e6, 1),
    }
  # the flatten alone at the real 7B size (Llama-2-7B's config: LlamaConfig's defaults)
  state = nnx.state(nnx.eval_shape(lambda: LlamaForCausalLM(LlamaConfig(), rngs=nnx.Rngs(0))))
  result["flatten_7b_us"] = {
    "weights": len(jax.tree.leaves(state)),
    "state": _flatten_us(state),
    "flat_state": _flatten_us(flat_state(state)),
  }
  result["engine_file"] = engine_lib.__file__
  result["load_average"] = [round(v, 1) for v in os.getloadavg()]
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
