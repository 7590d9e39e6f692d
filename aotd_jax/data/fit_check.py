"""Fail fast on data that cannot train: before step 1, one sample of each source is measured
against the sequence length (video tokens + prompt + target).

A sample whose video tokens and prompt alone do not fit is skipped by the pipeline, so a run
whose clips outgrow `seq_len` (LLaVA-NeXT-Video at 32 frames: 4,608 video tokens against
4,096) would skip every sample and repeat the data forever without a step: that stops the run
here, naming the numbers. A sample whose target runs past `seq_len` still trains (its end is
cut and counted as truncated): that is logged as a warning with the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain

from absl import logging

from aotd_jax.data import pipeline
from aotd_jax.data.tokenize import TokenizeOptions, tokenize_sample

NO_LIMIT = 1 << 30


@dataclasses.dataclass(frozen=True)
class SampleFit:
  """The token budget of one sample: `video + prompt + target` against `seq_len`."""

  source: str
  qid: str
  video_tokens: int
  prompt_tokens: int
  target_tokens: int
  seq_len: int

  @property
  def total(self) -> int:
    return self.video_tokens + self.prompt_tokens + self.target_tokens

  @property
  def prompt_fits(self) -> bool:
    """Video + prompt leave room for at least one target token (else the sample is skipped)."""
    return self.video_tokens + self.prompt_tokens < self.seq_len

  def describe(self) -> str:
    return (
      f"{self.source}: sample {self.qid!r} needs {self.total} tokens "
      f"({self.video_tokens} video + {self.prompt_tokens} prompt + {self.target_tokens} "
      f"target) but seq_len is {self.seq_len}"
    )


def measure(
  tokenizer, example: dict, options: TokenizeOptions, source: str, seq_len: int
) -> SampleFit:
  """Tokenises `example` without a length limit and splits its length into parts."""
  unlimited = dataclasses.replace(options, max_length=NO_LIMIT)
  tok = tokenize_sample(
    tokenizer, example["user_text"], example["assistant_text"], example["mode"], unlimited
  )
  n_prompt = int(tok["prompt_length"])
  video = int(options.num_video_tokens or 0) if options.media == "video" else 0
  return SampleFit(
    source,
    str(example.get("qid", "?")),
    video,
    n_prompt - video,
    len(tok["input_ids"]) - n_prompt,
    seq_len,
  )


def first_example(ds: grain.MapDataset, limit: int = 16) -> dict | None:
  """The first well-formed example of a source (malformed records are skip markers)."""
  for i in range(min(len(ds), limit)):
    ex = ds[i]
    if pipeline.SKIP not in ex:
      return ex
  return None


def check_sources_fit(
  tokenizer, sources: Sequence[tuple[str, grain.MapDataset]], options: TokenizeOptions, seq_len: int
) -> list[SampleFit]:
  """Measures one sample per source; ValueError naming the numbers when a sample's video and
  prompt alone do not fit (every sample of that source would be skipped); a warning when only
  its target is cut.

  Empty sources are skipped here (the mixer reports them). Returns the measurements.
  """
  fits, bad = [], []
  for name, ds in sources:
    if len(ds) == 0:
      continue
    ex = first_example(ds)
    if ex is None:
      raise ValueError(f"{name}: none of its first records is well-formed")
    fit = measure(tokenizer, ex, options, name, seq_len)
    fits.append(fit)
    if not fit.prompt_fits:
      bad.append(fit)
    elif fit.total > seq_len:
      logging.warning(
        "%s; its target is cut by %d tokens (counted as truncated)",
        fit.describe(),
        fit.total - seq_len,
      )
  if bad:
    raise ValueError(
      "training data does not fit the sequence length (the video and prompt "
      "alone leave no room for the target, so every sample would be skipped); "
      "raise config.data.seq_len or lower config.data.num_frames:\n  "
      + "\n  ".join(f.describe() for f in bad)
    )
  return fits
