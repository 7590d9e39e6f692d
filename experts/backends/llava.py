"""`VideoQA` and `ActionRecognizer` on our Flax LLaVA-NeXT-Video.

A clip becomes `num_frames` uniformly sampled frames (repeating frames of short clips, as
transformers' sampling does), so every call has the same video shape: generation compiles
once per prompt-length bucket, whatever the clip length. The prompt is the student's own
(`aotd_jax.data.conversation.build_prompt`, the tokenizer's chat template when it has one),
with the `<video>` placeholder expanded to the model's number of video tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SUMMARY_PROMPT = "Describe briefly what happens in the video."
ACTIONS_PROMPT = "What actions happen in the video?"
OBJECT_ACTIONS_PROMPT = "What happens with the {object} in the video?"


def load(path: str):
  """(model, tokenizer) of a HF LLaVA-NeXT-Video directory."""
  from aotd_jax import hf
  return hf.from_pretrained(path), hf.load_tokenizer(path)


class LlavaVideoQA:
  """The `VideoQA` and `ActionRecognizer` protocols on `LlavaNextVideoForConditionalGeneration`.

  Args:
    model: the Flax LLaVA-NeXT-Video model.
    tokenizer: its transformers tokenizer (with a single token for `video_token`).
    name: name for cache keys and traces.
    num_frames: frames sampled per clip.
    max_new_tokens: generation length of answers and summaries.
    video_token: the placeholder token of the prompt.
  """

  def __init__(self, model, tokenizer, *, name: str = "llava", num_frames: int = 8,
               max_new_tokens: int = 32, video_token: str = "<video>"):
    self.model, self.tokenizer, self.name = model, tokenizer, name
    self.num_frames, self.max_new_tokens = int(num_frames), int(max_new_tokens)
    self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
    if self.video_token_id is None or self.video_token_id == tokenizer.unk_token_id:
      raise ValueError(f"the tokenizer has no single token for {video_token!r}")
    if self.video_token_id != model.config.video_token_index:
      raise ValueError(f"tokenizer id {self.video_token_id} of {video_token!r} != the model's "
                       f"video_token_index {model.config.video_token_index}")

  def inputs(self, clip, user_text: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids (1, L), pixel_values_videos (1, T, 3, S, S)) for one question about a clip."""
    from aotd_jax.data.conversation import build_prompt
    from aotd_jax.data.video_processing import preprocess_video, sample_frame_indices
    idx = sample_frame_indices(len(clip), self.num_frames)
    size = self.model.config.vision_config.image_size
    pixels = preprocess_video(clip.frames[idx], shortest_edge=size, crop_size=size)[None]
    prompt = build_prompt(self.tokenizer, user_text, media="video")
    ids = []
    per_video = self.num_frames * self.model.config.video_tokens_per_frame()
    for t in self.tokenizer(prompt, add_special_tokens=True)["input_ids"]:
      ids.extend([t] * per_video if t == self.video_token_id else [t])
    return np.asarray([ids], np.int32), pixels

  def generate_text(self, clip, user_text: str, max_new_tokens: int | None = None) -> str:
    """Greedy reply of the model to `user_text` about the clip."""
    from aotd_jax.models.llava_next_video import generate
    ids, pixels = self.inputs(clip, user_text)
    out = generate(self.model, ids, np.ones_like(ids), pixel_values_videos=pixels,
                   max_new_tokens=max_new_tokens or self.max_new_tokens,
                   eos_token_id=self.tokenizer.eos_token_id)
    n = int(np.asarray(out.lengths)[0])
    return self.tokenizer.decode(np.asarray(out.sequences)[0, :n].tolist(),
                                 skip_special_tokens=True).strip()

  def answer(self, clip, question: str, choices: Sequence[str] | None = None) -> str:
    from aotd_jax.data.conversation import (ANSWER_SUFFIX, OPEN_ENDED_SUFFIX, format_question)
    if choices:
      return self.generate_text(clip, format_question(question, choices) + "\n" + ANSWER_SUFFIX)
    return self.generate_text(clip, question + "\n" + OPEN_ENDED_SUFFIX)

  def summarize(self, clip, query: str | None = None) -> str:
    text = SUMMARY_PROMPT if not query else f"{SUMMARY_PROMPT} Focus on: {query}"
    return self.generate_text(clip, text)

  def recognize(self, clip, object_name: str | None = None,
                candidates: Sequence[str] | None = None) -> list[str]:
    question = (OBJECT_ACTIONS_PROMPT.format(object=object_name) if object_name
                else ACTIONS_PROMPT)
    reply = self.answer(clip, question, candidates)
    if reply and candidates:  # the protocol: labels drawn from the candidates ("(B) x" -> x)
      from experts.tools import snap_to_choice
      reply = snap_to_choice(reply, list(candidates))
    return [reply] if reply else []
