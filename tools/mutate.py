"""Mutation check: flips critical lines one at a time and runs the tests that should catch each.

Each mutation names a file, an exact source line pattern (a regular expression that must match
exactly one line, so the list survives edits elsewhere in the file), the mutated line, and the
tests that must fail on it. A mutation is applied to a private copy of the tracked tree (the
working tree is never touched), and the tests run there:

  killed    the tests failed (pytest exit 1): the mutation was caught
  survived  the tests passed: no test guards this line (a gap to fix)
  error     anything else (collection error, timeout): fix the mutation, it proves nothing

    python tools/mutate.py              # every mutation; exit 1 unless all are killed
    python tools/mutate.py --list       # the list, no tests run
    python tools/mutate.py rope_sign    # some of them, by name
    python tools/mutate.py --baseline   # also run each selection unmutated (must pass)

`tests/test_mutate.py` checks (fast) that every pattern still matches exactly one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # relative to the repository root
  pattern: str  # regex; must match exactly one line of `path`
  replace: str  # the mutated line's code (indentation is kept from the original)
  tests: tuple[str, ...]  # pytest arguments (files / node ids / -k) that must fail
  why: str


MUTATIONS: tuple[Mutation, ...] = (
  Mutation(
    "rationale_mask",
    "aotd_jax/data/tokenize.py",
    r'^\s*"rationale_mask": target if mode == "cot" else zeros,$',
    '"rationale_mask": zeros,',
    ("tests/test_conversation.py::test_cot_masks_and_train_on_prompt",),
    "CoT samples lose their rationale targets: the student never learns the rationales",
  ),
  Mutation(
    "lambda_weight",
    "aotd_jax/train/losses.py",
    r"^\s*loss = label_loss \+ rationale_weight \* rationale_loss$",
    "loss = label_loss + rationale_loss",
    ("tests/test_loss_normalization.py",),
    "λ (rationale_weight) ignored in the per-part loss",
  ),
  Mutation(
    "rope_sign",
    "aotd_jax/layers/rope.py",
    r"^\s*rotated = jnp\.concatenate\(\[-x\[\.\.\., half:\], x\[\.\.\., :half\]\], axis=-1\)$",
    "rotated = jnp.concatenate([x[..., half:], -x[..., :half]], axis=-1)",
    ("tests/test_llama.py::test_logits_and_hidden_states_match_transformers",),
    "RoPE rotates the wrong way (a transposed rotation: positions read mirrored)",
  ),
  Mutation(
    "filter_answer_match",
    "aotd_jax/agent/filters.py",
    r"^\s*got == gold,$",
    "got is not None,",
    ("tests/test_filters.py",),
    "the CoT filter keeps any program that names a choice, right or wrong",
  ),
  Mutation(
    "sandbox_policy_hook",
    "aotd_jax/agent/sandbox.py",
    r"^\s*tree = sandbox_policy\.validate\(source, entry_point=entry_point\)$",
    "tree = __import__('ast').parse(source)  # mutated: no policy check",
    ("tests/test_sandbox.py", "tests/test_sandbox_hostile.py"),
    "generated programs run without the allow-list check",
  ),
  Mutation(
    "checkpoint_restore",
    "aotd_jax/train/loop.py",
    r'^\s*trainer\.load\(restored\["model"\], restored\["opt_state"\], restored\["step"\]\)$',
    "pass  # mutated: restored state dropped",
    ("tests/test_train.py::test_sigkill_after_checkpoint_then_resume_is_exact",),
    "a resumed run restarts from scratch instead of the checkpoint",
  ),
)


def find_line(text: str, m: Mutation) -> int:
  """The 0-based index of the one line of `text` that `m.pattern` matches (ValueError else)."""
  rx = re.compile(m.pattern)
  hits = [i for i, line in enumerate(text.splitlines()) if rx.search(line)]
  if len(hits) != 1:
    raise ValueError(
      f"mutation {m.name}: pattern {m.pattern!r} matches {len(hits)} lines of "
      f"{m.path} (expected exactly 1): update tools/mutate.py"
    )
  return hits[0]


def mutated_source(text: str, m: Mutation) -> str:
  lines = text.splitlines(keepends=True)
  i = find_line(text, m)
  indent = re.match(r"\s*", lines[i]).group(0)
  lines[i] = indent + m.replace + "\n"
  return "".join(lines)


def _tracked_copy(dest: str) -> None:
  files = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=ROOT,
    check=True,
    capture_output=True,
  ).stdout.split(b"\0")
  for f in filter(None, (x.decode() for x in files)):
    src = os.path.join(ROOT, f)
    if not os.path.isfile(src):
      continue
    os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
    shutil.copy2(src, os.path.join(dest, f))


def _pytest(tree: str, tests, timeout_s: float) -> tuple[int, str]:
  env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
  cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
  try:
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return -1, "timed out"
  tail = (r.stdout + r.stderr).strip().splitlines()
  return r.returncode, tail[-1] if tail else ""


def run(mutations, *, baseline: bool = False, timeout_s: float = 900.0, log=print) -> dict:
  results = {}
  with tempfile.TemporaryDirectory(prefix="aotd_mutate_") as tree:
    _tracked_copy(tree)
    for m in mutations:
      path = os.path.join(tree, m.path)
      original = open(path).read()
      if baseline:
        rc, tail = _pytest(tree, m.tests, timeout_s)
        if rc != 0:
          results[m.name] = ("error", f"unmutated tests do not pass: {tail}")
          log(f"{m.name:22s} error     (baseline) {tail}")
          continue
      t0 = time.perf_counter()
      with open(path, "w") as f:
        f.write(mutated_source(original, m))
      try:
        rc, tail = _pytest(tree, m.tests, timeout_s)
      finally:
        with open(path, "w") as f:
          f.write(original)
      verdict = {1: "killed", 0: "survived"}.get(rc, "error")
      results[m.name] = (verdict, tail)
      log(f"{m.name:22s} {verdict:9s} {time.perf_counter() - t0:5.0f} s  {tail}")
  return results


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("names", nargs="*", help="mutations to run (default: all)")
  p.add_argument("--list", action="store_true", help="print the list and exit")
  p.add_argument("--baseline", action="store_true", help="first run each selection unmutated")
  p.add_argument("--timeout_s", type=float, default=900.0)
  a = p.parse_args(argv)
  known = {m.name: m for m in MUTATIONS}
  unknown = [n for n in a.names if n not in known]
  if unknown:
    p.error(f"unknown mutation(s) {unknown}; known: {sorted(known)}")
  chosen = [known[n] for n in a.names] or list(MUTATIONS)
  for m in chosen:  # every pattern must still match before anything runs
    find_line(open(os.path.join(ROOT, m.path)).read(), m)
  if a.list:
    for m in chosen:
      print(f"{m.name:22s} {m.path}: {m.why}\n{'':22s} tests: {' '.join(m.tests)}")
    return 0
  results = run(chosen, baseline=a.baseline, timeout_s=a.timeout_s)
  bad = [n for n, (v, _) in results.items() if v != "killed"]
  print(
    f"{len(results) - len(bad)}/{len(results)} mutations killed"
    + (f"; not killed: {bad}" if bad else "")
  )
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
