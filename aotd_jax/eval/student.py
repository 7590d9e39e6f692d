"""Evaluating the distilled student the way the paper does: greedy answers to multiple-choice
questions (option parsed from the output), open-ended answers, and rationales whose boxes and
frame windows are scored against ground truth. Time and peak memory are measured too."""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from aotd_jax.data import conversation, video, video_processing
from aotd_jax.data.annotations import VideoQA
from aotd_jax.eval import efficiency, metrics

MODES = ("answer", "rationale")


@dataclasses.dataclass
class StudentRun:
  outputs: list[str]
  efficiency: efficiency.Efficiency


def _video_file(record: VideoQA, video_root: str, video_ext: str) -> str:
  import os
  path = record.meta.get("video_path") or f"{record.video_id}{video_ext}"
  return path if os.path.isabs(path) or not video_root else os.path.join(video_root, path)


def prompt_ids(tokenizer, record: VideoQA, mode: str, num_video_tokens: int) -> list[int]:
  """Token ids of the evaluation prompt (answer suffix, or rationale suffix in `rationale` mode)."""
  if mode not in MODES:
    raise ValueError(f"mode {mode!r}: expected one of {MODES}")
  user = (conversation.qa_user_text if mode == "answer" else conversation.cot_user_text)(
      record.question, record.choices)
  text = conversation.build_prompt(tokenizer, user, media="video")
  text = video_processing.expand_media_tokens(text, video_tokens=[num_video_tokens])
  return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def run_student(model, tokenizer, records: Sequence[VideoQA], *, mode: str = "answer",
                video_root: str = "", video_ext: str = ".mp4", num_frames: int = 8,
                decode_size: int | None = None, batch_size: int = 8, max_new_tokens: int = 16,
                frames_fn: Callable[[VideoQA], np.ndarray] | None = None) -> StudentRun:
  """Greedy outputs of the LLaVA-NeXT-Video `model` for `records` (batched, left-padded).

  `frames_fn(record) -> (T, H, W, 3) uint8` overrides video decoding (tests, cached frames).
  """
  from aotd_jax.models import llava_next_video  # the student; imported lazily (heavy)
  cfg = model.config
  n_tokens = num_frames * cfg.video_tokens_per_frame()
  size = cfg.vision_config.image_size
  pad = cfg.text_config.pad_token_id or 0
  outputs: list[str] = []
  with efficiency.measure(len(records)) as eff:
    for i in range(0, len(records), batch_size):
      chunk = records[i:i + batch_size]
      ids = [prompt_ids(tokenizer, r, mode, n_tokens) for r in chunk]
      width = max(len(x) for x in ids)
      input_ids = np.full((len(chunk), width), pad, np.int32)
      mask = np.zeros((len(chunk), width), np.int32)
      for j, x in enumerate(ids):  # left padding
        input_ids[j, width - len(x):] = x
        mask[j, width - len(x):] = 1
      pixels = []
      for r in chunk:
        frames = frames_fn(r) if frames_fn is not None else video.read_frames(
            _video_file(r, video_root, video_ext), num_frames, start=r.start, end=r.end,
            size=decode_size)
        pixels.append(video_processing.preprocess_video(frames, shortest_edge=size, crop_size=size))
      out = llava_next_video.generate(model, input_ids, mask, pixel_values_videos=np.stack(pixels),
                                      max_new_tokens=max_new_tokens, pad_token_id=pad)
      seqs = np.asarray(out.sequences)
      for j in range(len(chunk)):
        outputs.append(tokenizer.decode(seqs[j, :int(out.lengths[j])], skip_special_tokens=True).strip())
  return StudentRun(outputs, eff)


def question_type(record: VideoQA) -> str:
  for key in ("type", "question_type", "category"):
    if record.meta.get(key):
      return str(record.meta[key])
  return record.qid.split("_")[0] if "_" in record.qid else "all"


def score(records: Sequence[VideoQA], outputs: Sequence[str],
          judge: Callable[[str, str], float] | None = None) -> dict:
  """Multiple-choice accuracy (per type) and open-ended score of `outputs` for `records`."""
  mc = [(r, o) for r, o in zip(records, outputs) if r.choices]
  oe = [(r, o) for r, o in zip(records, outputs) if not r.choices]
  result: dict = {}
  if mc:
    preds = [metrics.parse_choice(o, r.choices) for r, o in mc]
    result.update(metrics.mc_accuracy(preds, [r.answer_index for r, _ in mc],
                                      [question_type(r) for r, _ in mc]))
  if oe:
    result["open_ended"] = metrics.open_ended_score([o for _, o in oe], [r.answer for r, _ in oe], judge)
  return result


def grounding(rationales: Sequence[str], truths: Sequence[tuple[Mapping[int, list], list]]) -> dict:
  """Mean box / window IoU of rationales against (boxes by frame, windows) ground truths."""
  boxes, windows = [], []
  for text, (gt_boxes, gt_windows) in zip(rationales, truths):
    g = metrics.rationale_grounding(text, gt_boxes, gt_windows)
    if g["box_iou"] is not None:
      boxes.append(g["box_iou"])
    if g["window_iou"] is not None:
      windows.append(g["window_iou"])
  return {"box_iou": float(np.mean(boxes)) if boxes else None, "box_rationales": len(boxes),
          "window_iou": float(np.mean(windows)) if windows else None, "window_rationales": len(windows)}
