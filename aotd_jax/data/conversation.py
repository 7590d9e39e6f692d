"""Conversation prompts for the student Video-LLM in AoTD's two modes.

QA mode asks for the option letter (`ANSWER_SUFFIX`); CoT mode asks for the rationale
(`RATIONALE_SUFFIX`). `build_prompt` renders one user turn (and optionally the assistant's
reply) with the tokenizer's chat template when it has one, else in LLaVA-NeXT-Video's plain
form `USER: <video>\\n{text} ASSISTANT:`.

Answer targets for multiple choice are `"(B) the book"` (letter and text) by default: the
letter is what the suffix asks for and what evaluation parses first, and the text keeps the
target informative for the language model; `style="letter"` gives just `"B"`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

ANSWER_SUFFIX = (
  "Answer with the option's letter from the given choices directly and only give the best option."
)
RATIONALE_SUFFIX = "Explain the rationale to answer the question."
# Open-ended questions (ActivityNet-QA, AGQA): LLaVA's short-answer instruction.
OPEN_ENDED_SUFFIX = "Answer the question using a single word or phrase."

MEDIA_TOKENS = {"video": "<video>", "image": "<image>"}

# The plain format `build_prompt` falls back to without a template (`USER: <video>\n{text}
# ASSISTANT: {reply}`), as a chat template: what an export of a student trained that way
# carries, so its tokenizer renders the training prompt.
PLAIN_CHAT_TEMPLATE = (
  "{% for message in messages %}"
  "{% if message['role'] == 'assistant' %}{{ ' ' }}"
  "{% else %}{% if not loop.first %}{{ ' ' }}{% endif %}{{ 'USER: ' }}{% endif %}"
  "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
  "{% for part in message['content'] if part['type'] in ('image', 'video') %}"
  "{{ '<' + part['type'] + '>\n' }}{% endfor %}"
  "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
  "{% endif %}{% if message['role'] != 'assistant' %}{{ ' ASSISTANT:' }}{% endif %}"
  "{% endfor %}"
)

# LLaVA-OneVision's conversation format (llava-hf's processor): `<|im_start|>user <video>\n{text}
# <|im_end|><|im_start|>assistant\n{reply}<|im_end|>`, media first, no system turn. Written so
# that a rendered reply continues the generation prompt exactly (`tokenize.split_prompt`).
ONEVISION_CHAT_TEMPLATE = (
  "{% for message in messages %}"
  "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
  "{% else %}{{ '<|im_start|>' + message['role'] + ' ' }}{% endif %}"
  "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
  "{% for part in message['content'] if part['type'] in ('image', 'video') %}"
  "{{ '<' + part['type'] + '>' }}{% endfor %}"
  "{% for part in message['content'] if part['type'] == 'text' %}"
  "{% if message['role'] != 'assistant' %}{{ '\n' }}{% endif %}{{ part['text'] }}{% endfor %}"
  "{% endif %}{{ '<|im_end|>' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2-VL's conversation format (its processor's template): a default system turn, then
# `<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{text}<|im_end|>\n`, and the
# reply after `<|im_start|>assistant\n`, closed by `<|im_end|>\n`.
QWEN2_VL_CHAT_TEMPLATE = (
  "{% for message in messages %}"
  "{% if loop.first and message['role'] != 'system' %}"
  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
  "{{ '<|im_start|>' + message['role'] + '\n' }}"
  "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
  "{% for part in message['content'] %}"
  "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
  "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
  "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
  "{{ '<|im_end|>\n' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Students whose prompts follow their processor's template rather than the tokenizer's own
# (the OneVision tokenizer carries Qwen2's text template, with a default system turn).
STUDENT_CHAT_TEMPLATES = {
  "LlavaOnevisionForConditionalGeneration": ONEVISION_CHAT_TEMPLATE,
  "Qwen2VLForConditionalGeneration": QWEN2_VL_CHAT_TEMPLATE,
}


def use_student_chat_template(tokenizer, architecture: str | None):
  """Sets `tokenizer.chat_template` to the student's conversation format when the student
  (`architecture`, a HF architecture name) has one in `STUDENT_CHAT_TEMPLATES`; returns the
  tokenizer. Other students keep the tokenizer's own template (or the plain USER/ASSISTANT form)."""
  template = STUDENT_CHAT_TEMPLATES.get(architecture or "")
  if template is not None and tokenizer is not None:
    tokenizer.chat_template = template
  return tokenizer


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_letter(index: int) -> str:
  """0 -> "A", 1 -> "B", ..."""
  if not 0 <= index < len(LETTERS):
    raise ValueError(f"option index {index} out of range for letters A-Z")
  return LETTERS[index]


PROMPT_FORMATS = ("plain", "official")


def format_question(question: str, choices: Sequence[str], prompt_format: str = "plain") -> str:
  """The question and one `(A) ...` line per choice (just the question if none).

  `prompt_format="plain"` (ours) writes the question and the option lines; `"official"` writes
  them as the official AoTD release does, `Question: ...` then `Options:` before the lines.
  """
  if prompt_format not in PROMPT_FORMATS:
    raise ValueError(f"prompt_format {prompt_format!r}: expected one of {PROMPT_FORMATS}")
  options = [f"({option_letter(i)}) {c}" for i, c in enumerate(choices)]
  if prompt_format == "official":
    return "\n".join(
      [f"Question: {question.strip()}"] + (["Options:"] + options if options else [])
    )
  return "\n".join([question.strip()] + options)


def answer_target(
  choices: Sequence[str], answer: str, answer_index: int | None, *, style: str = "letter_text"
) -> str:
  """The assistant's target for a QA sample: `"(B) text"` / `"B"` for MC, the answer if open."""
  if not choices:
    return answer
  if answer_index is None:
    raise ValueError(f"multiple-choice answer {answer!r} has no answer_index")
  letter = option_letter(answer_index)
  if style == "letter_text":
    return f"({letter}) {choices[answer_index]}"
  if style == "letter":
    return letter
  raise ValueError(f"answer style {style!r}: expected 'letter_text' or 'letter'")


def qa_user_text(question: str, choices: Sequence[str], prompt_format: str = "plain") -> str:
  """User text of a QA-mode sample (the answer suffix, or the short-answer one if open-ended)."""
  suffix = ANSWER_SUFFIX if choices else OPEN_ENDED_SUFFIX
  return f"{format_question(question, choices, prompt_format)}\n{suffix}"


def cot_user_text(question: str, choices: Sequence[str], prompt_format: str = "plain") -> str:
  """User text of a CoT-mode sample (the rationale suffix)."""
  return f"{format_question(question, choices, prompt_format)}\n{RATIONALE_SUFFIX}"


def strip_media(text: str) -> str:
  """Drops a leading `<video>` / `<image>` placeholder (LLaVA-format data puts it in the text)."""
  for token in MEDIA_TOKENS.values():
    if text.lstrip().startswith(token):
      return text.lstrip()[len(token) :].lstrip("\n ")
  return text


def conversation_turns(conversation: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
  """(user text, assistant text) of a one-exchange LLaVA/AoTD conversation.

  The AoTD format is `[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]`
  (`"role"`/`"content"` and `"user"`/`"assistant"` are accepted too). A leading `<video>`
  placeholder is removed: `build_prompt` places the media itself.
  """

  def who(turn):
    role = turn.get("from", turn.get("role"))
    return {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(role)

  def text(turn):
    value = turn.get("value", turn.get("content"))
    if not isinstance(value, str):
      raise ValueError(f"conversation turn value must be text, got {type(value).__name__}")
    return value

  turns = list(conversation)
  if len(turns) != 2 or who(turns[0]) != "user" or who(turns[1]) != "assistant":
    roles = [
      t.get("from", t.get("role")) if isinstance(t, Mapping) else type(t).__name__ for t in turns
    ]
    raise ValueError(f"conversation must be one human turn then one gpt turn, got roles {roles}")
  return strip_media(text(turns[0])), text(turns[1])


def _template_takes_parts(template: str) -> bool:
  """True for multimodal templates that read `content` as a list of typed parts."""
  return "'type'" in template or '"type"' in template or ".type" in template


def _chat_template(tokenizer) -> str | None:
  template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
  if isinstance(template, dict):  # named templates: use the default one
    template = template.get("default")
  return template or None


def build_prompt(
  tokenizer, user_text: str, *, assistant_text: str | None = None, media: str | None = "video"
) -> str:
  """Renders a user turn (and the assistant's reply, when given) as the student's prompt text.

  Args:
    tokenizer: a transformers tokenizer (its `chat_template` is used when set) or None.
    user_text: the question text (e.g. `qa_user_text(...)`).
    assistant_text: the reply; None renders the prompt up to the generation point.
    media: "video", "image" or None (text only); placed before the text as LLaVA does.

  Returns:
    The text; with a template, `apply_chat_template(..., add_generation_prompt=assistant_text
    is None)`; otherwise `USER: <video>\\n{user_text} ASSISTANT:` (+ `" " + assistant_text`).
  """
  if media is not None and media not in MEDIA_TOKENS:
    raise ValueError(f"media {media!r}: expected one of {sorted(MEDIA_TOKENS)} or None")
  placeholder = f"{MEDIA_TOKENS[media]}\n" if media else ""
  template = _chat_template(tokenizer)
  if template is None:
    text = f"USER: {placeholder}{user_text} ASSISTANT:"
    return text if assistant_text is None else f"{text} {assistant_text}"
  if _template_takes_parts(template):
    parts = ([{"type": media}] if media else []) + [{"type": "text", "text": user_text}]
    messages = [{"role": "user", "content": parts}]
    if assistant_text is not None:
      messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant_text}]})
  else:
    messages = [{"role": "user", "content": placeholder + user_text}]
    if assistant_text is not None:
      messages.append({"role": "assistant", "content": assistant_text})
  return tokenizer.apply_chat_template(
    messages, tokenize=False, add_generation_prompt=assistant_text is None
  )
