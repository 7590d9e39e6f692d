"""Prompts (both AoTD modes, with and without a chat template) and token-level loss masks."""

import numpy as np
import pytest

from aotd_jax.data import conversation as C
from aotd_jax.data import tokenize as T
from fixtures.tiny_tokenizer import PARTS_TEMPLATE, PLAIN_TEMPLATE, make_tokenizer

Q, CHOICES = "what is red", ["the book", "the cup"]
TEXTS = [Q, *CHOICES, "the cup is red because it shines"]


def test_suffixes_and_question_format():
  assert C.ANSWER_SUFFIX == (
    "Answer with the option's letter from the given choices directly and only give the best option."
  )
  assert C.RATIONALE_SUFFIX == "Explain the rationale to answer the question."
  assert C.format_question(" what is red ", CHOICES) == "what is red\n(A) the book\n(B) the cup"
  assert C.format_question(Q, []) == Q
  assert C.qa_user_text(Q, CHOICES).endswith("(B) the cup\n" + C.ANSWER_SUFFIX)
  assert C.qa_user_text(Q, []) == f"{Q}\n{C.OPEN_ENDED_SUFFIX}"
  assert C.cot_user_text(Q, CHOICES).endswith("\n" + C.RATIONALE_SUFFIX)
  assert C.answer_target(CHOICES, "the cup", 1) == "(B) the cup"
  assert C.answer_target(CHOICES, "the cup", 1, style="letter") == "B"
  assert C.answer_target([], "red", None) == "red"


def test_answer_target_errors():
  with pytest.raises(ValueError, match="'the cup' has no answer_index"):
    C.answer_target(CHOICES, "the cup", None)
  with pytest.raises(ValueError, match="answer style 'word'"):
    C.answer_target(CHOICES, "the cup", 1, style="word")
  with pytest.raises(ValueError, match="option index 26 out of range"):
    C.option_letter(26)


def test_build_prompt_without_template():
  tok = make_tokenizer(TEXTS)
  assert C.build_prompt(tok, "hi") == "USER: <video>\nhi ASSISTANT:"
  assert C.build_prompt(tok, "hi", assistant_text="(A) x") == "USER: <video>\nhi ASSISTANT: (A) x"
  assert C.build_prompt(None, "hi", media="image") == "USER: <image>\nhi ASSISTANT:"
  assert C.build_prompt(None, "hi", media=None) == "USER: hi ASSISTANT:"
  with pytest.raises(ValueError, match="media 'audio'"):
    C.build_prompt(None, "hi", media="audio")


def test_build_prompt_with_templates():
  plain = make_tokenizer(TEXTS, chat_template=PLAIN_TEMPLATE)
  assert C.build_prompt(plain, "hi") == "USER: <video>\nhi ASSISTANT:"
  assert C.build_prompt(plain, "hi", assistant_text="ok") == "USER: <video>\nhi ASSISTANT: ok</s>"
  parts = make_tokenizer(TEXTS, chat_template=PARTS_TEMPLATE)
  assert C.build_prompt(parts, "hi") == "USER: <video>\nhi ASSISTANT:"
  assert C.build_prompt(parts, "hi", assistant_text="ok") == "USER: <video>\nhi ASSISTANT: ok "
  assert C.build_prompt(parts, "hi", media=None) == "USER: hi ASSISTANT:"


def test_conversation_turns():
  conv = [{"from": "human", "value": "<video>\nwhat is red"}, {"from": "gpt", "value": "because"}]
  assert C.conversation_turns(conv) == ("what is red", "because")
  assert C.conversation_turns(
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
  ) == ("a", "b")
  with pytest.raises(
    ValueError, match=r"one human turn then one gpt turn, got roles \['gpt', 'human'\]"
  ):
    C.conversation_turns(conv[::-1])
  with pytest.raises(ValueError, match="must be text"):
    C.conversation_turns([{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}])


PROMPT_TOKENS = [
  "<s>",
  "USER",
  ":",
  "<video>",
  "what",
  "is",
  "red",
  "(",
  "A",
  ")",
  "the",
  "book",
  "(",
  "B",
  ")",
  "the",
  "cup",
]


@pytest.mark.parametrize("template", [None, PLAIN_TEMPLATE, PARTS_TEMPLATE])
def test_qa_masks_token_by_token(template):
  tok = make_tokenizer(TEXTS, chat_template=template)
  out = T.tokenize_sample(tok, C.qa_user_text(Q, CHOICES), "(B) the cup", "qa")
  tokens = tok.convert_ids_to_tokens(out["input_ids"].tolist())
  suffix = T._ids(tok, C.ANSWER_SUFFIX, False)
  prompt = PROMPT_TOKENS + tok.convert_ids_to_tokens(suffix) + ["ASSISTANT", ":"]
  response = ["(", "B", ")", "the", "cup", "</s>"]
  assert tokens == prompt + response
  np.testing.assert_array_equal(out["label_mask"], [0] * len(prompt) + [1] * len(response))
  assert not out["rationale_mask"].any()
  assert out["prompt_length"] == len(prompt) and out["truncated"] == 0


def test_cot_masks_and_train_on_prompt():
  tok = make_tokenizer(TEXTS)
  user = C.cot_user_text(Q, CHOICES)
  out = T.tokenize_sample(tok, user, "the cup is red", "cot")
  tokens = tok.convert_ids_to_tokens(out["input_ids"].tolist())
  n = int(out["prompt_length"])
  assert tokens[n:] == ["the", "cup", "is", "red", "</s>"]
  assert tokens[n - 2 : n] == ["ASSISTANT", ":"]
  np.testing.assert_array_equal(out["rationale_mask"], [0] * n + [1] * 5)
  assert not out["label_mask"].any()
  # train_on_prompt: every prompt token but the video placeholder becomes a target too
  full = T.tokenize_sample(
    tok, user, "the cup is red", "cot", T.TokenizeOptions(train_on_prompt=True)
  )
  expect = [0 if t == "<video>" else 1 for t in tokens]
  np.testing.assert_array_equal(full["rationale_mask"], expect)


def test_video_token_expansion_and_truncation():
  tok = make_tokenizer(TEXTS)
  user = C.qa_user_text(Q, CHOICES)
  out = T.tokenize_sample(
    tok, user, "(B) the cup", "qa", T.TokenizeOptions(num_video_tokens=4, train_on_prompt=True)
  )
  tokens = tok.convert_ids_to_tokens(out["input_ids"].tolist())
  assert tokens[:8] == ["<s>", "USER", ":"] + ["<video>"] * 4 + ["what"]
  assert out["label_mask"][3:7].tolist() == [0, 0, 0, 0] and out["label_mask"][7] == 1
  n = int(out["prompt_length"]) - 3  # without the expansion
  cut = T.tokenize_sample(tok, user, "(B) the cup", "qa", T.TokenizeOptions(max_length=n + 2))
  assert len(cut["input_ids"]) == n + 2 and cut["truncated"] == 1
  assert cut["label_mask"].tolist() == [0] * n + [1, 1]
  with pytest.raises(ValueError, match=f"prompt of {n} tokens does not fit max_length={n}"):
    T.tokenize_sample(tok, user, "(B) the cup", "qa", T.TokenizeOptions(max_length=n))


def test_tokenize_errors():
  tok = make_tokenizer(TEXTS)
  with pytest.raises(ValueError, match="sample mode 'dpo'"):
    T.tokenize_sample(tok, "hi", "x", "dpo")
  with pytest.raises(ValueError, match="no single token for '<clip>'"):
    T.tokenize_sample(tok, "hi", "x", "qa", T.TokenizeOptions(video_token="<clip>"))
  unstable = make_tokenizer(
    TEXTS,
    chat_template=(
      "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
      "{% if add_generation_prompt %}bot:{% endif %}"
    ),
  )
  with pytest.raises(ValueError, match="not render the prompt as a prefix"):
    T.tokenize_sample(unstable, "hi", "x", "qa")
