"""Qwen2-VL's conversation format with AoTD's two suffixes (QA and CoT modes): the default
system turn, the video between its vision markers, and training samples whose reply continues
the generation prompt exactly."""

import numpy as np
import pytest

from aotd_jax.data import conversation as conv
from aotd_jax.data import tokenize
from aotd_jax.data.toy_tokenizer import train_tokenizer

QWEN2_VL = "Qwen2VLForConditionalGeneration"
MARKERS = [
  "<|im_start|>",
  "<|im_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|video_pad|>",
  "<|image_pad|>",
]
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
QUESTION, CHOICES = "What is the person holding?", ["the cup", "the book"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  tok = train_tokenizer(
    ["what is the person holding? the book the cup I see a so answer is"] * 4,
    tmp_path_factory.mktemp("tok"),
    vocab_size=300,
  )
  tok.add_special_tokens({"additional_special_tokens": MARKERS, "eos_token": "<|im_end|>"})
  return conv.use_student_chat_template(tok, QWEN2_VL)


def test_prompts_in_both_modes(tokenizer):
  assert tokenizer.chat_template == conv.QWEN2_VL_CHAT_TEMPLATE
  user = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is the person "
    "holding?\n(A) the cup\n(B) the book\n"
  )
  qa = conv.build_prompt(tokenizer, conv.qa_user_text(QUESTION, CHOICES))
  assert qa == f"{SYSTEM}{user}{conv.ANSWER_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
  cot = conv.build_prompt(tokenizer, conv.cot_user_text(QUESTION, CHOICES))
  assert cot == f"{SYSTEM}{user}{conv.RATIONALE_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
  image = conv.build_prompt(tokenizer, "Describe.", media="image", assistant_text="A cup.")
  assert image == (
    f"{SYSTEM}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe."
    "<|im_end|>\n<|im_start|>assistant\nA cup.<|im_end|>\n"
  )


@pytest.mark.parametrize("mode", ["qa", "cot"])
def test_training_sample_continues_the_generation_prompt(tokenizer, mode):
  """The reply (and only it, closed by <|im_end|>) is labelled; the clip's <|video_pad|> tokens
  sit between the vision markers; the prompt is exactly the generation prompt."""
  if mode == "qa":
    user, reply = conv.qa_user_text(QUESTION, CHOICES), conv.answer_target(CHOICES, "the book", 1)
  else:
    user, reply = conv.cot_user_text(QUESTION, CHOICES), "I see a book. So the answer is (B)."
  prompt, response = tokenize.split_prompt(tokenizer, user, reply, "video")
  assert prompt == conv.build_prompt(tokenizer, user) and response == f"{reply}<|im_end|>\n"
  sample = tokenize.tokenize_sample(
    tokenizer,
    user,
    reply,
    mode,
    tokenize.TokenizeOptions(num_video_tokens=6, video_token="<|video_pad|>"),
  )
  ids = np.asarray(sample["input_ids"])
  pad, start, end = (
    tokenizer.convert_tokens_to_ids(t)
    for t in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
  )
  first = int(np.flatnonzero(ids == pad)[0])
  assert int((ids == pad).sum()) == 6 and ids[first - 1] == start and ids[first + 6] == end
  mask = np.asarray(sample["label_mask" if mode == "qa" else "rationale_mask"])
  labelled = ids[mask > 0]
  # the template's own turn close, once: the tokenizer's eos is <|im_end|>, not appended again
  assert tokenizer.decode(labelled).replace(" ", "") == response.replace(" ", "")
  assert int((labelled == tokenizer.eos_token_id).sum()) == 1
  suffix = conv.ANSWER_SUFFIX if mode == "qa" else conv.RATIONALE_SUFFIX
  unlabelled = tokenizer.decode(ids[mask == 0])
  assert suffix.split()[0] in unlabelled and "assistant" in unlabelled
