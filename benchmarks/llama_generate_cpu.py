r"""Wall time of one `generate` of the local Flax LLM's random Llama, across checkouts.

The model is benchmarks/cot_pipeline.py's and llm_engine.py's local Llama (hidden 256, 4
layers, 8 query / 4 kv heads, vocab 4096, random weights); the call is one static `generate`
of `--rows` rows of `--prompt`-token prompts and `--new` greedy tokens (no EOS: every row
runs to the end), the shape of a local-LLM batch in the CoT job. A process imports one
`aotd_jax`, so each checkout runs in its own process (`--trees`: paths of checkouts, e.g. made
by `git worktree add --detach ../at_abc123 abc123`); the rounds interleave the checkouts so
that load from other processes hits them alike. Per checkout: the best call over rounds (each
process compiles, then times `--calls` calls), the prefill alone (`--new 1`), and the decode
step's share ((best - prefill) / (new - 1)); the ratio of each checkout's best to the first's.

  python benchmarks/llama_generate_cpu.py                     # this checkout
  python benchmarks/llama_generate_cpu.py --trees . ../at_7c5c320 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_generate(rows: int, prompt: int, new: int, calls: int) -> dict:
  """Times `calls` calls of `generate` (after one that compiles) and one prefill-only call.

  Imports `aotd_jax` from whatever `sys.path` finds first (the checkout under test).
  """
  import numpy as np
  from flax import nnx

  from aotd_jax.models import generate as generate_lib
  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

  cfg = LlamaConfig(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=256 * 8 // 3,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=4096,
  )
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  ids = np.random.RandomState(0).randint(3, cfg.vocab_size, (rows, prompt)).astype(np.int32)

  def call(max_new_tokens: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = generate_lib.generate(
      model, ids, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0
    )
    tokens = np.asarray(out.sequences)  # waits for the device
    return time.perf_counter() - t0, tokens

  call(1)  # compiles the prefill-only program
  prefill = min(call(1)[0] for _ in range(calls))
  _, tokens = call(new)  # compiles
  seconds = [call(new)[0] for _ in range(calls)]
  return {
    "seconds": [round(s, 4) for s in seconds],
    "prefill_s": round(prefill, 4),
    "tokens_sum": int(tokens.astype(np.int64).sum()),  # the same greedy tokens across trees
    "aotd_jax": os.path.dirname(os.path.dirname(generate_lib.__file__)),
  }


def _run_round(args) -> dict:
  """One round: each checkout timed in a fresh interpreter that imports that checkout."""
  cmd = [
    sys.executable, os.path.abspath(__file__), "--child", "--rows", str(args.rows),
    "--prompt", str(args.prompt), "--new", str(args.new), "--calls", str(args.calls),
  ]  # fmt: skip
  results = {}
  for tree in args.trees:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
      raise SystemExit(f"--trees {tree}: the timing process failed:\n{done.stderr[-3000:]}")
    results[tree] = json.loads(done.stdout.strip().splitlines()[-1])
  return results


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--trees", nargs="+", default=[_HERE], help="checkouts to compare (first: ref)")
  ap.add_argument("--rounds", type=int, default=3, help="processes per checkout, interleaved")
  ap.add_argument("--calls", type=int, default=3, help="timed calls per process")
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=128)
  ap.add_argument("--new", type=int, default=256)
  ap.add_argument("--out", default="", help="also write the JSON result here")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.new < 2:
    ap.error("--new: at least 2 (one decode step past the prefill's token)")
  if args.child:
    result = time_generate(args.rows, args.prompt, args.new, args.calls)
    print(json.dumps(result))
    return result

  for tree in args.trees:  # before any timing: a typo found after minutes of runs costs them
    if not os.path.isdir(os.path.join(tree, "aotd_jax")):
      raise SystemExit(f"--trees: {tree!r} has no aotd_jax/ (not a checkout of this project)")
  load_before = [round(v, 2) for v in os.getloadavg()]
  runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
  for _ in range(args.rounds):
    for tree, res in _run_round(args).items():
      runs[tree].append(res)
  ref_best = None
  result: dict = {
    "shape": {"rows": args.rows, "prompt": args.prompt, "new": args.new},
    "load_before": load_before,
    "trees": {},
  }
  for tree, rs in runs.items():
    best = min(min(r["seconds"]) for r in rs)
    prefill = min(r["prefill_s"] for r in rs)
    ref_best = ref_best or best
    result["trees"][tree] = {
      "best_s": best,
      "per_round_best_s": [min(r["seconds"]) for r in rs],
      "prefill_s": prefill,
      "decode_step_ms": round((best - prefill) / (args.new - 1) * 1e3, 3),
      "ratio_to_first": round(best / ref_best, 3),
      "tokens_sum": rs[0]["tokens_sum"],
      "aotd_jax": rs[0]["aotd_jax"],
    }
  sums = {t["tokens_sum"] for t in result["trees"].values()}
  result["same_tokens"] = len(sums) == 1
  result["load_after"] = [round(v, 2) for v in os.getloadavg()]
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
