"""Which option a generated multiple-choice reply picks, under each protocol `launch.evaluate`
offers (`--parse`):

- `official`: the official release's NExT-QA evaluation (`evaluation/eval_nextqa.py`,
  `transfer_answer`): the reply's first character when it is a letter A-E; else the first of
  A, B, C, D, E (in that order) found anywhere in the reply; else an option drawn at random.
  The draw here is seeded by the question id, so a run re-scores to the same number.
- `mvbench`: the official MVBench evaluation (`evaluation/eval_mvbench.py`, `check_ans`): the
  reply's first word, lower-cased and without dots, must be part of the answer's "(b)" or
  contain it. An empty reply passes that test, as it does in the release.
- `ours`: `aotd_jax.eval.metrics.parse_choice` (a letter, or the one option whose text the
  reply contains); an unparsable reply is wrong.

`choice(...)` returns the picked option index (`None`: wrong, nothing picked) and whether it
was drawn at random.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from aotd_jax.eval import metrics

PARSES = ("official", "mvbench", "ours")
_OFFICIAL_LETTERS = "ABCDE"


def official_choice(output: str, num_choices: int, qid: str, seed: int = 0) -> tuple[int, bool]:
  """(option index, drawn at random) under `eval_nextqa.py`'s parse.

  The index may be >= `num_choices` (a reply "E" to four options), which scores as wrong, as
  it does in the release. The random draw is uniform over the options and a pure function of
  (`seed`, `qid`).
  """
  if num_choices < 1:
    raise ValueError(f"question {qid}: official parse needs choices, got {num_choices}")
  text = str(output)
  letters = _OFFICIAL_LETTERS + metrics.LETTERS[len(_OFFICIAL_LETTERS) : num_choices]
  if text[:1] and text[:1] in letters:
    return letters.index(text[:1]), False
  for k, letter in enumerate(letters):
    if letter in text:
      return k, False
  rng = np.random.default_rng([seed, zlib.crc32(str(qid).encode("utf-8"))])
  return int(rng.integers(num_choices)), True


def mvbench_correct(output: str, answer_index: int) -> bool:
  """Whether `eval_mvbench.py`'s `check_ans` accepts `output` for the option `answer_index`."""
  gt = f"({metrics.LETTERS[answer_index]})".lower()
  words = str(output).lower().split(" ")
  pred = words[0]
  return pred.replace(".", "") in gt or gt in pred


def choice(
  parse: str, output: str, choices: Sequence[str], answer_index: int, qid: str, seed: int = 0
) -> tuple[int | None, bool]:
  """(picked option index or None, drawn at random) of one reply under `parse`."""
  if parse == "official":
    return official_choice(output, len(choices), qid, seed)
  if parse == "mvbench":
    # check_ans compares with the answer only: a reply it accepts picks the answer
    return (answer_index if mvbench_correct(output, answer_index) else None), False
  if parse == "ours":
    return metrics.parse_choice(output, choices), False
  raise ValueError(f"parse {parse!r}: expected one of {PARSES}")
