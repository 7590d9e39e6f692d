r"""Toy-world language experts on this CPU: training time and val scores vs chance, same run.

  python benchmarks/language_experts_cpu.py --program_steps 300 --qa_steps 300

Generates the toy world (seed 0, 60 train / 10 val clips: the demo's `quick` world), builds
the tokenizer, trains the program generator and the action / QA expert at their default
sizes, and prints each one's seconds (wall and process CPU) and val scores next to the chance
references measured in the same run: programs of other questions (shuffled gold programs)
for the program generator, `experts.subtasks.RandomActions` for the QA expert.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Shuffled:
  """Chance program generator: replies with the gold program body of another val question."""

  def __init__(self, world, seed=0):
    import numpy as np

    from aotd_jax.projects.toyworld import language_experts as le

    recs = le.read_split(world, "val")
    bodies = [le.program_body(le.gold_program(r)) for r in recs]
    perm = np.random.default_rng(seed).permutation(len(recs))
    self.table = {
      le.program_prompt(r.question, r.choices): bodies[int(perm[i])] for i, r in enumerate(recs)
    }

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    return [self.table[p] for p in prompts]


def _timed(fn):
  w, c = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--program_steps", type=int, default=300)
  ap.add_argument("--qa_steps", type=int, default=300)
  ap.add_argument("--workdir", default="")
  args = ap.parse_args()
  from aotd_jax.projects.toyworld import world as toyworld
  from aotd_jax.projects.toyworld import language_experts as le
  from aotd_jax.projects.toyworld import program_generator as pg
  from aotd_jax.projects.toyworld import qa_expert as qe
  from experts.subtasks import RandomActions

  work = args.workdir or tempfile.mkdtemp(prefix="lang_bench_")
  world = os.path.join(work, "world")
  toyworld.generate_world(world, seed=0, num_train=60, num_val=10, num_test=20)
  tok, w, c = _timed(lambda: le.build_tokenizer(world, os.path.join(work, "tok")))
  print(f"tokenizer: {w:.1f} s wall, {c:.1f} s CPU, vocab {le.read_done(tok)['vocab_size']}")
  prog, w, c = _timed(
    lambda: pg.train_program_generator(
      world, tok, os.path.join(work, "program"), steps=args.program_steps
    )
  )
  val = le.read_done(prog)["val"]
  ref = pg.score_program_generator(world, _Shuffled(world))
  print(
    f"program generator ({args.program_steps} steps): {w:.1f} s wall, {c:.1f} s CPU "
    f"(train {le.read_done(prog)['train_seconds']:.1f} s)"
  )
  print(
    f"  exact match {val['exact_match']:.3f} vs shuffled {ref['exact_match']:.3f}; answer "
    f"accuracy {val['answer_accuracy']:.3f} vs shuffled {ref['answer_accuracy']:.3f} "
    f"(x{val['answer_accuracy'] / max(ref['answer_accuracy'], 1e-9):.2f}), chance 0.25"
  )
  qa, w, c = _timed(
    lambda: qe.train_qa_expert(world, tok, os.path.join(work, "qa"), steps=args.qa_steps)
  )
  val = le.read_done(qa)["val"]
  ref = qe.score_qa_expert(world, RandomActions(0))
  print(
    f"QA expert ({args.qa_steps} steps): {w:.1f} s wall, {c:.1f} s CPU "
    f"(train {le.read_done(qa)['train_seconds']:.1f} s)"
  )
  print(
    f"  QA accuracy {val['qa_accuracy']:.3f} vs random {ref['qa_accuracy']:.3f}; action "
    f"top-1 {val['action_top1']:.3f} vs random {ref['action_top1']:.3f}; chance 0.25"
  )


if __name__ == "__main__":
  main()
