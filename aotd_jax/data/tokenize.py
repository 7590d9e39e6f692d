"""Tokenisation of one dual-mode sample with its loss masks.

A sample is a prompt (user turn, rendered by `conversation.build_prompt`) and a response (the
assistant's text). The prompt and the response are tokenised separately (the response
without special tokens, EOS appended) so the boundary between them is exact. Masks are aligned
with `input_ids` — `mask[t] = 1` means token `t` is a target (the loss predicts it from
position `t - 1`):

- QA samples: response tokens -> `label_mask`;
- CoT samples: response tokens -> `rationale_mask`;
- prompt tokens are targets of the sample's mask only with `train_on_prompt=True` (the
  original AoTD code trained on prompts too); video placeholder tokens never are.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aotd_jax.data import conversation

MODES = ("qa", "cot")


@dataclasses.dataclass(frozen=True)
class TokenizeOptions:
  """How samples become tokens.

  Attributes:
    max_length: longest sequence; longer responses are cut at the end (counted as truncated),
      a prompt that alone does not fit is an error.
    train_on_prompt: prompt tokens (except video placeholders) are targets too.
    media: "video", "image" or None, passed to `build_prompt`.
    video_token: the placeholder text of the video in the prompt.
    num_video_tokens: when set, the placeholder token is repeated this many times (the number
      of visual features the student makes), as transformers' processor does.
    add_eos: append the tokenizer's EOS to the response when the template did not close it
      with one.
  """

  max_length: int = 2048
  train_on_prompt: bool = False
  media: str | None = "video"
  video_token: str = "<video>"
  num_video_tokens: int | None = None
  add_eos: bool = True


def split_prompt(
  tokenizer, user_text: str, assistant_text: str, media: str | None
) -> tuple[str, str]:
  """(prompt text up to the generation point, response text) for one exchange."""
  prompt = conversation.build_prompt(tokenizer, user_text, media=media)
  full = conversation.build_prompt(tokenizer, user_text, assistant_text=assistant_text, media=media)
  if not full.startswith(prompt):
    raise ValueError(
      "the chat template does not render the prompt as a prefix of the full "
      f"conversation: prompt {prompt[-60:]!r} vs {full[: len(prompt)][-60:]!r}"
    )
  return prompt, full[len(prompt) :]


def _ids(tokenizer, text: str, special: bool) -> list[int]:
  return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def tokenize_sample(
  tokenizer,
  user_text: str,
  assistant_text: str,
  mode: str,
  options: TokenizeOptions = TokenizeOptions(),
) -> dict[str, np.ndarray]:
  """Token ids and masks of one sample (unpadded int32 arrays, plus `truncated` 0/1).

  Raises:
    ValueError: unknown mode, a template that is not prefix-stable, a missing video token,
      or a prompt longer than `max_length`.
  """
  if mode not in MODES:
    raise ValueError(f"sample mode {mode!r}: expected one of {MODES}")
  prompt, response = split_prompt(tokenizer, user_text, assistant_text, options.media)
  prompt_ids = _ids(tokenizer, prompt, True)
  response_ids = _ids(tokenizer, response, False)
  eos = tokenizer.eos_token_id
  # A template that closes the turn itself (`<|im_end|>`, then Qwen2-VL's newline) has its eos
  # already; another would teach the student to emit it twice.
  if options.add_eos and eos is not None and eos not in response_ids:
    response_ids.append(eos)
  video_positions = np.zeros(len(prompt_ids), bool)
  if options.media == "video":
    video_id = tokenizer.convert_tokens_to_ids(options.video_token)
    if video_id is None or video_id == tokenizer.unk_token_id:
      raise ValueError(
        f"the tokenizer has no single token for {options.video_token!r}; add it as a special token"
      )
    if options.num_video_tokens:
      expanded = []
      for t in prompt_ids:
        expanded.extend([t] * options.num_video_tokens if t == video_id else [t])
      prompt_ids = expanded
    video_positions = np.asarray(prompt_ids) == video_id
  n_prompt = len(prompt_ids)
  if n_prompt >= options.max_length:
    raise ValueError(f"prompt of {n_prompt} tokens does not fit max_length={options.max_length}")
  ids = np.asarray(prompt_ids + response_ids, np.int32)
  target = np.zeros(len(ids), np.int32)
  target[n_prompt:] = 1
  if options.train_on_prompt:
    target[:n_prompt] = ~video_positions
  truncated = len(ids) > options.max_length
  ids, target = ids[: options.max_length], target[: options.max_length]
  zeros = np.zeros_like(target)
  return {
    "input_ids": ids,
    "label_mask": target if mode == "qa" else zeros,
    "rationale_mask": target if mode == "cot" else zeros,
    "prompt_length": np.int32(n_prompt),
    "truncated": np.int32(truncated),
  }
