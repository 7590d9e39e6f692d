"""LLaVA-OneVision's conversation format with AoTD's two suffixes (QA and CoT modes)."""

import numpy as np
import pytest

from aotd_jax.data import conversation as conv
from aotd_jax.data import tokenize
from aotd_jax.data.toy_tokenizer import train_tokenizer

ONEVISION = "LlavaOnevisionForConditionalGeneration"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  tok = train_tokenizer(
    ["what is the person holding? the book the cup answer rationale"] * 4,
    tmp_path_factory.mktemp("tok"),
    vocab_size=300,
  )
  tok.add_special_tokens(
    {
      "additional_special_tokens": ["<video>", "<image>", "<|im_start|>", "<|im_end|>"],
      "eos_token": "<|im_end|>",
    }
  )
  return conv.use_student_chat_template(tok, ONEVISION)


def test_prompts_in_both_modes(tokenizer):
  assert tokenizer.chat_template == conv.ONEVISION_CHAT_TEMPLATE
  q, choices = "What is the person holding?", ["the cup", "the book"]
  qa = conv.build_prompt(tokenizer, conv.qa_user_text(q, choices))
  assert qa == (
    "<|im_start|>user <video>\nWhat is the person holding?\n(A) the cup\n(B) the book\n"
    f"{conv.ANSWER_SUFFIX}<|im_end|><|im_start|>assistant\n"
  )
  cot = conv.build_prompt(tokenizer, conv.cot_user_text(q, choices))
  assert cot.endswith(f"(B) the book\n{conv.RATIONALE_SUFFIX}<|im_end|><|im_start|>assistant\n")
  image = conv.build_prompt(tokenizer, "Describe.", media="image", assistant_text="A cup.")
  assert (
    image == "<|im_start|>user <image>\nDescribe.<|im_end|><|im_start|>assistant\nA cup.<|im_end|>"
  )


def test_training_sample_continues_the_generation_prompt(tokenizer):
  q, choices = "What is the person holding?", ["the cup", "the book"]
  target = conv.answer_target(choices, "the book", 1)
  prompt, response = tokenize.split_prompt(
    tokenizer, conv.qa_user_text(q, choices), target, "video"
  )
  assert prompt.endswith("<|im_start|>assistant\n") and response == "(B) the book<|im_end|>"
  sample = tokenize.tokenize_sample(
    tokenizer,
    conv.qa_user_text(q, choices),
    target,
    "qa",
    tokenize.TokenizeOptions(num_video_tokens=5),
  )
  ids = sample["input_ids"]
  video = tokenizer.convert_tokens_to_ids("<video>")
  assert int((ids == video).sum()) == 5
  assert ids[-1] == tokenizer.eos_token_id and int((ids == tokenizer.eos_token_id).sum()) == 2
  labelled = ids[np.asarray(sample["label_mask"]) > 0]
  assert tokenizer.decode(labelled) == "(B) the book<|im_end|>"


def test_other_students_keep_their_template(tokenizer):
  class Tok:
    chat_template = None

  assert (
    conv.use_student_chat_template(Tok(), "LlavaNextVideoForConditionalGeneration").chat_template
    is None
  )
  assert (
    conv.use_student_chat_template(Tok(), ONEVISION).chat_template == conv.ONEVISION_CHAT_TEMPLATE
  )


def test_square_video_resize_matches_the_onevision_processor():
  """OneVision resizes frames straight to S x S (no crop): bit-exact with transformers' PIL
  processor's base tile; LLaVA-NeXT-Video's shortest-edge crop differs on non-square frames."""
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
  )
  from aotd_jax.data import video_processing as vp
  from aotd_jax.models import llava_next_video, llava_onevision

  assert llava_onevision.LlavaOnevisionConfig().video_resize == "square"
  assert llava_next_video.LlavaNextVideoConfig().video_resize == "shortest_edge"
  frames = np.random.default_rng(0).integers(0, 256, (2, 90, 160, 3), dtype=np.uint8)
  proc = LlavaOnevisionImageProcessorPil(
    size={"height": 48, "width": 48}, image_grid_pinpoints=[[48, 48]]
  )
  want = np.stack([proc(images=[f], return_tensors="np")["pixel_values"][0][0] for f in frames])
  got = vp.preprocess_video(frames, crop_size=48, resize="square")
  np.testing.assert_array_equal(got, want)
  cropped = vp.preprocess_video(frames, shortest_edge=48, crop_size=48)
  assert np.abs(cropped - want).mean() > 0.1
  with pytest.raises(ValueError, match="resize='crop' is not one of"):
    vp.preprocess_video(frames, resize="crop")


def test_image_tiles_match_the_onevision_processor():
  """`preprocess_images` at shortest_edge = crop_size = the tile size is LLaVA-OneVision's PIL
  image processor bit for bit (square base tile, letterboxed grid tiles), incl. a 2x2 grid."""
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
  )
  from aotd_jax.data import video_processing as vp

  pins = [[35, 70], [70, 35], [70, 70]]
  proc = LlavaOnevisionImageProcessorPil(
    size={"height": 35, "width": 35}, image_grid_pinpoints=pins
  )
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in ((40, 70), (80, 75), (100, 33))]
  want = proc(images=images, return_tensors="np")
  got = vp.preprocess_images(images, shortest_edge=35, crop_size=35, image_grid_pinpoints=pins)
  np.testing.assert_array_equal(got["image_sizes"], want["image_sizes"])
  np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
