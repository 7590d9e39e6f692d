"""`AnswerSelector` on any text LLM (the agent's `LLM` protocol: `complete(prompts, ...)`).

The LLM sees the question, the evidence the program collected and lettered options, and is
asked for a letter; `experts.tools.snap_to_choice` maps its reply (a letter, an option's text
or anything close) back to one option.
"""
from __future__ import annotations

from typing import Sequence

SELECT_PROMPT = """We want to answer a question about a video from information that tools \
extracted from it. Choose the option most likely to be correct.
- Question: {question}
- Information:
{info}
- Options:
{options}
Reply with the letter of the best option only.
- Selected answer:"""


def select_prompt(question: str, choices: Sequence[str], info: str) -> str:
  """The prompt the selector sends (options lettered (A), (B), ...)."""
  options = "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
  return SELECT_PROMPT.format(question=question, info=info or "(none)", options=options)


class LLMSelector:
  """Picks an option with an LLM; `llm` has `complete(prompts, *, max_new_tokens, ...)`."""

  def __init__(self, llm, *, name: str = "llm", max_new_tokens: int = 8, chat: bool = True):
    self.llm, self.name, self.max_new_tokens, self.chat = llm, name, max_new_tokens, chat

  def select(self, question: str, choices: Sequence[str], info: str) -> str:
    text = select_prompt(question, choices, info)
    prompt = [{"role": "user", "content": text}] if self.chat else text
    return self.llm.complete([prompt], max_new_tokens=self.max_new_tokens, temperature=0.0)[0]
