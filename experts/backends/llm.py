"""`AnswerSelector` on any text LLM (the agent's `LLM` protocol: `complete(prompts, ...)`).

The LLM sees the question, the evidence the program collected and lettered options, and is
asked for a letter; `experts.tools.snap_to_choice` maps its reply (a letter, an option's text
or anything close) back to one option. `prompt="official"` sends the official release's
prompt structure (`prompts/select_answer.prompt`: an intro, one worked example, the question,
the evidence as "- key: value" lines, "- Possible answers:", "- Selected answer:"), in our
words (`data/prompts/select_answer_official.txt`); `"ours"` the shorter `SELECT_PROMPT`.
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


PROMPTS = ("ours", "official")
OFFICIAL_PROMPT_FILE = "select_answer_official.txt"


def select_prompt(question: str, choices: Sequence[str], info: str, prompt: str = "ours") -> str:
  """The prompt the selector sends (options lettered (A), (B), ...) in the `prompt` style."""
  options = "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
  if prompt == "official":
    from aotd_jax.agent.programs import read_prompt_file

    return read_prompt_file(OFFICIAL_PROMPT_FILE).format(
      question=question, info=info or "", options=options
    )
  if prompt != "ours":
    raise ValueError(f"selector prompt {prompt!r}: expected one of {PROMPTS}")
  return SELECT_PROMPT.format(question=question, info=info or "(none)", options=options)


class LLMSelector:
  """Picks an option with an LLM; `llm` has `complete(prompts, *, max_new_tokens, ...)`."""

  def __init__(
    self,
    llm,
    *,
    name: str = "llm",
    max_new_tokens: int = 8,
    chat: bool = True,
    prompt: str = "ours",
  ):
    if prompt not in PROMPTS:
      raise ValueError(f"experts config: selector.prompt={prompt!r} is not one of {PROMPTS}")
    self.llm, self.name, self.max_new_tokens, self.chat = llm, name, max_new_tokens, chat
    self.prompt = prompt

  def select(self, question: str, choices: Sequence[str], info: str) -> str:
    text = select_prompt(question, choices, info, self.prompt)
    prompt = [{"role": "user", "content": text}] if self.chat else text
    return self.llm.complete([prompt], max_new_tokens=self.max_new_tokens, temperature=0.0)[0]
