"""Tiny synthetic distillation data for smoke runs: no files, deterministic, resumable.

Each sample is a token sequence `[prompt | target]` with a short "video" tensor. Half of the
samples are QA samples (the target is an answer: `label_mask`), half CoT samples (the target
is a rationale followed by the answer: `rationale_mask` + `label_mask`), mirroring the
dual-mode batches of `aotd_jax.data.pipeline`. The answer is a function of the prompt, so the
loss can fall. Used by `configs/toyworld/distill.py` when no data is configured.
"""

from __future__ import annotations

import numpy as np


class SyntheticBatches:
  """An infinite iterator of batches with Grain-style `get_state` / `set_state`.

  `batch_size` is global: each of `process_count` hosts yields its own `batch_size /
  process_count` rows, and its state names the host it belongs to.
  """

  def __init__(
    self,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    seed: int = 0,
    num_frames: int = 0,
    image_size: int = 0,
    video_token_id: int | None = None,
    num_video_tokens: int = 0,
    cot_fraction: float = 0.5,
    reserved: int = 6,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    import jax

    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    if batch_size % self.process_count:
      raise ValueError(f"batch_size {batch_size} does not divide over {self.process_count} hosts")
    self.batch_size, self.seq_len, self.vocab_size = batch_size, seq_len, vocab_size
    self.seed, self.num_frames, self.image_size = seed, num_frames, image_size
    self.video_token_id, self.num_video_tokens = video_token_id, num_video_tokens
    self.cot_fraction, self.reserved = cot_fraction, reserved
    self._index = 0

  def __iter__(self):
    return self

  def get_state(self) -> dict:
    return {"index": self._index, "shard": self.process_index, "shards": self.process_count}

  def set_state(self, state: dict) -> None:
    shard = (int(state.get("shard", 0)), int(state.get("shards", 1)))
    if shard != (self.process_index, self.process_count):
      raise ValueError(
        f"data state of host {shard[0]} of {shard[1]} restored on host {self.process_index} of "
        f"{self.process_count}: each host must resume from its own position"
      )
    self._index = int(state["index"])

  def _sample(self, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, i])
    L = self.seq_len
    lo = self.reserved  # ids below `reserved` are specials (pad/bos/eos/video)
    ids = np.zeros(L, np.int32)
    label = np.zeros(L, np.int32)
    rationale = np.zeros(L, np.int32)
    pos = 0
    if self.video_token_id is not None and self.num_video_tokens:
      ids[: self.num_video_tokens] = self.video_token_id
      pos = self.num_video_tokens
    prompt_len = max(2, (L - pos) // 2)
    prompt = rng.integers(lo, self.vocab_size, prompt_len)
    ids[pos : pos + prompt_len] = prompt
    pos += prompt_len
    answer = lo + int(prompt.sum() % (self.vocab_size - lo))
    if rng.random() < self.cot_fraction:
      # a "rationale" that restates the prompt's tokens in order, then the answer
      n = min(L - pos - 1, prompt_len)
      ids[pos : pos + n] = prompt[:n]
      rationale[pos : pos + n] = 1
      pos += n
    if pos < L:
      ids[pos] = answer
      label[pos] = 1
      pos += 1
    attention = (np.arange(L) < pos).astype(np.int32)
    out = {
      "input_ids": ids,
      "attention_mask": attention,
      "label_mask": label,
      "rationale_mask": rationale,
    }
    if self.num_frames:
      out["pixel_values_videos"] = rng.standard_normal(
        (self.num_frames, 3, self.image_size, self.image_size)
      ).astype(np.float32)
    return out

  def __next__(self) -> dict[str, np.ndarray]:
    """This host's rows of the global batch (global sample ids: the same global batch on any
    number of hosts)."""
    local = self.batch_size // self.process_count
    first = self._index * self.batch_size + self.process_index * local
    samples = [self._sample(first + j) for j in range(local)]
    self._index += 1
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}
