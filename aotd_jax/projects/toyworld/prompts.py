"""The toy world's prompts: its few-shot programs (`examples/toyworld.txt`, package data of
this project) and the compact program prompt its tiny program generator reads."""

from __future__ import annotations

import pathlib
from typing import Sequence

from aotd_jax.agent import programs

# The folder `programs.load_examples("toyworld", PROMPTS_DIR)` reads `examples/toyworld.txt`
# from: this package's own folder, in a checkout and in an installed wheel alike.
PROMPTS_DIR = pathlib.Path(__file__).resolve().parent
# The CoT configs name the same folder by package (`c.examples_package`).
PACKAGE = __package__


def few_shot_examples() -> str:
  """The toy world's few-shot programs (Python text of `def execute_command(...)` functions)."""
  return programs.load_examples("toyworld", PROMPTS_DIR)


def program_prompt(question: str, choices: Sequence[str] = ()) -> str:
  """The compact program-generation prompt the tiny program generator is trained on.

  The full prompt of `programs.build_program_prompt` (API docstrings, guidelines, few-shots,
  choices) runs to thousands of tokens, too long for a tiny model trained in a minute. The
  compact form keeps the question and primes the reply with the signature, so the reply is
  the function body: parse it with
  `programs.parse_program(reply, prefix=programs.PROGRAM_SIGNATURE + "\\n")`. The choices
  are left out: programs receive them as `possible_answers` at run time, and no toy-world
  program depends on their text (they would double the prompt for nothing).
  """
  del choices  # kept in the signature: callers pass (question, choices) as for the full prompt
  return f"Question: {question}\n{programs.PROGRAM_SIGNATURE}\n"
