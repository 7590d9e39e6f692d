"""The toy world's compact program prompt (what its tiny program generator reads)."""
from __future__ import annotations

from typing import Sequence

from aotd_jax.agent import programs


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
