"""Evaluating the distilled student the way the paper does: greedy answers to multiple-choice
questions (option parsed from the output) or the closed-set choice among the option letters'
logits (`choose_letters`, standard for MC video QA), open-ended answers, and rationales whose
boxes and frame windows are scored against ground truth. Time and peak memory are measured too."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from aotd_jax.data import annotations_formats, conversation, video, video_processing
from aotd_jax.data.annotations import VideoQA
from aotd_jax.eval import efficiency, mc_parse, metrics

MODES = ("answer", "rationale")


@dataclasses.dataclass
class StudentRun:
  """Greedy replies. `seconds[i]`: question i's share of its batch's wall time (decoding its
  video, prefill and generation; the batch's seconds split equally over its questions);
  `new_tokens[i]`: the tokens generated for it, EOS included."""

  outputs: list[str]
  efficiency: efficiency.Efficiency
  seconds: list[float] = dataclasses.field(default_factory=list)
  new_tokens: list[int] = dataclasses.field(default_factory=list)


def video_file(record: VideoQA, video_root: str, video_ext: str = ".mp4") -> str:
  """The video of a record, the file training reads (`annotations_formats.video_file`)."""
  return annotations_formats.video_file(record, video_root, video_ext)


def prompt_ids(
  tokenizer,
  record: VideoQA,
  mode: str,
  num_video_tokens: int,
  prompt_format: str = "plain",
  video_token: str = "<video>",
) -> list[int]:
  """Token ids of the evaluation prompt (answer suffix, or rationale suffix in `rationale` mode),
  in the `prompt_format` the student was trained with (`conversation.format_question`);
  `video_token` is the student's placeholder (`config.video_token`, Qwen2-VL's `<|video_pad|>`)."""
  if mode not in MODES:
    raise ValueError(f"mode {mode!r}: expected one of {MODES}")
  user = (conversation.qa_user_text if mode == "answer" else conversation.cot_user_text)(
    record.question, record.choices, prompt_format
  )
  text = conversation.build_prompt(tokenizer, user, media="video")
  text = video_processing.expand_media_tokens(
    text, video_tokens=[num_video_tokens], video_token=video_token
  )
  return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _pixels(
  chunk: Sequence[VideoQA],
  size: int,
  *,
  video_root: str,
  video_ext: str,
  num_frames: int,
  decode_size: int | None,
  frames_fn: Callable[[VideoQA], np.ndarray] | None,
  resize: str = "shortest_edge",
  normalization: tuple | None = None,
  frame_sampling: str = "ours",
) -> np.ndarray:
  """(B, T, 3, size, size) preprocessed frames of each record's window (the whole video when it
  has none), picked by `frame_sampling` (`video.sample_indices`), normalised by
  `normalization` = (image_mean, image_std) (default: CLIP's)."""
  mean, std = normalization or (video_processing.CLIP_MEAN, video_processing.CLIP_STD)
  pixels = []
  for r in chunk:
    frames = (
      frames_fn(r)
      if frames_fn is not None
      else video.read_frames(
        video_file(r, video_root, video_ext),
        num_frames,
        start=r.start,
        end=r.end,
        size=decode_size,
        sampling=frame_sampling,
        folder_fps=r.meta.get("frame_folder_fps"),  # MVBench's clips stored as frames
      )
    )
    pixels.append(
      video_processing.preprocess_video(
        frames, shortest_edge=size, crop_size=size, resize=resize, image_mean=mean, image_std=std
      )
    )
  return np.stack(pixels)


def run_student(
  model,
  tokenizer,
  records: Sequence[VideoQA],
  *,
  mode: str = "answer",
  video_root: str = "",
  video_ext: str = ".mp4",
  num_frames: int = 8,
  decode_size: int | None = None,
  batch_size: int = 8,
  max_new_tokens: int = 16,
  frames_fn: Callable[[VideoQA], np.ndarray] | None = None,
  prompt_format: str = "plain",
  normalization: tuple | None = None,
  frame_sampling: str = "ours",
) -> StudentRun:
  """Greedy outputs of the LLaVA-NeXT-Video `model` for `records` (batched, left-padded).

  `frames_fn(record) -> (T, H, W, 3) uint8` overrides video decoding (tests, cached frames).
  `prompt_format`: the one the student was trained with (`config.data.prompt_format`).
  `normalization`: (image_mean, image_std) of its frames (default: the model config's
  `pixel_normalization`; `launch/evaluate.py` reads the checkpoint's processor files).
  `frame_sampling`: which frames, "ours" or "official", as the student was trained
  (`config.data.frame_sampling`; `aotd_jax.data.video.sample_indices`).
  """
  import importlib
  from aotd_jax.models import llava_next_video  # the student; imported lazily (heavy)

  cfg = model.config
  # Each student's module has its `generate` (LLaVA's merges then decodes; Qwen2-VL's adds M-RoPE).
  generate = getattr(
    importlib.import_module(type(model).__module__), "generate", llava_next_video.generate
  )
  video_token = getattr(cfg, "video_token", "<video>")
  conversation.use_student_chat_template(tokenizer, getattr(type(model), "hf_architecture", None))
  n_tokens = cfg.video_tokens(num_frames)
  size = cfg.vision_config.image_size
  pad = cfg.text_config.pad_token_id or 0
  outputs: list[str] = []
  seconds: list[float] = []
  new_tokens: list[int] = []
  with efficiency.measure(len(records)) as eff:
    for i in range(0, len(records), batch_size):
      t0 = time.perf_counter()
      chunk = records[i : i + batch_size]
      ids = [prompt_ids(tokenizer, r, mode, n_tokens, prompt_format, video_token) for r in chunk]
      width = max(len(x) for x in ids)
      input_ids = np.full((len(chunk), width), pad, np.int32)
      mask = np.zeros((len(chunk), width), np.int32)
      for j, x in enumerate(ids):  # left padding
        input_ids[j, width - len(x) :] = x
        mask[j, width - len(x) :] = 1
      pixels = _pixels(
        chunk,
        size,
        video_root=video_root,
        video_ext=video_ext,
        num_frames=num_frames,
        decode_size=decode_size,
        frames_fn=frames_fn,
        resize=getattr(cfg, "video_resize", "shortest_edge"),
        normalization=normalization or getattr(cfg, "pixel_normalization", None),
        frame_sampling=frame_sampling,
      )
      out = generate(
        model,
        input_ids,
        mask,
        pixel_values_videos=pixels,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
      )
      seqs, lengths = np.asarray(out.sequences), np.asarray(out.lengths)
      for j in range(len(chunk)):
        outputs.append(
          tokenizer.decode(seqs[j, : int(lengths[j])], skip_special_tokens=True).strip()
        )
        new_tokens.append(int(lengths[j]))
      seconds += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
  return StudentRun(outputs, eff, seconds, new_tokens)


@dataclasses.dataclass
class ChoiceRun:
  """Closed-set answers: `predictions[i]` is the option index picked for record i,
  `logprobs[i]` the log-softmax over its option letters, `outputs[i]` the letter as "(B)";
  `seconds[i]` its share of its batch's wall time (as `StudentRun.seconds`)."""

  predictions: list[int]
  logprobs: list[list[float]]
  outputs: list[str]
  efficiency: efficiency.Efficiency
  seconds: list[float] = dataclasses.field(default_factory=list)


def letter_token_ids(
  tokenizer, prompt: str, num_choices: int, answer_style: str = "letter_text"
) -> tuple[list[int], list[int]]:
  """(shared prefix ids, one id per option letter) of the replies "(A)", "(B)", ... to `prompt`
  ("A", "B", ... for a student trained with `answer_style="letter"`).

  The prefix is the prompt plus whatever the replies share (" (" here); each letter must then
  be one token of its own, else the closed-set choice is ill-defined and this raises.
  """
  from aotd_jax.data import conversation

  form = "{} {}" if answer_style == "letter" else "{} ({})"
  seqs = [
    list(
      tokenizer(form.format(prompt, conversation.option_letter(i)), add_special_tokens=True)[
        "input_ids"
      ]
    )
    for i in range(num_choices)
  ]
  n = 0
  while all(n < len(x) for x in seqs) and len({x[n] for x in seqs}) == 1:
    n += 1
  letters = [x[n] if n < len(x) else None for x in seqs]
  if None in letters or len(set(letters)) != num_choices:
    raise ValueError(
      f"option letters of {num_choices} choices do not tokenize to distinct single "
      f"tokens after a shared prefix (got {letters}); use scoring='generate'"
    )
  return seqs[0][:n], letters


@functools.cache
def _log_probs_jit():
  """The jitted forward of closed-set scoring, made once: `launch.evaluate` calls the scorers
  batch by batch, and a jit made per call would compile again at every batch."""
  import jax
  from flax import nnx

  return nnx.jit(
    lambda m, ids, mask, px: jax.nn.log_softmax(
      m(input_ids=ids, attention_mask=mask, pixel_values_videos=px).logits, axis=-1
    )
  )


def _closed_set(
  model,
  tokenizer,
  records: Sequence[VideoQA],
  rows_fn,
  *,
  video_root: str,
  video_ext: str,
  num_frames: int,
  decode_size: int | None,
  batch_size: int,
  frames_fn,
  prompt_format: str = "plain",
  normalization: tuple | None = None,
  frame_sampling: str = "ours",
) -> ChoiceRun:
  """Runs the forward passes of a closed-set scorer. `rows_fn(record, prompt text)` gives the
  record's rows: (token ids, score(log-probs (L, vocab)) -> option scores); a record's option
  scores are its rows' scores concatenated, the highest wins. Rows are right-padded to a
  32-token bucket and batched with their record's frames."""
  cfg = model.config
  conversation.use_student_chat_template(tokenizer, getattr(type(model), "hf_architecture", None))
  n_tokens = cfg.video_tokens(num_frames)
  size = cfg.vision_config.image_size
  pad = cfg.text_config.pad_token_id or 0
  forward = _log_probs_jit()
  preds: list[int] = []
  scores: list[list[float]] = []
  seconds: list[float] = []
  with efficiency.measure(len(records)) as eff:
    for i in range(0, len(records), batch_size):
      t0 = time.perf_counter()
      chunk = records[i : i + batch_size]
      rows, owner = [], []
      for j, r in enumerate(chunk):
        if not r.choices:
          raise ValueError(f"question {r.qid}: closed-set scoring needs choices (open-ended)")
        user = conversation.qa_user_text(r.question, r.choices, prompt_format)
        prompt = video_processing.expand_media_tokens(
          conversation.build_prompt(tokenizer, user, media="video"),
          video_tokens=[n_tokens],
          video_token=getattr(cfg, "video_token", "<video>"),
        )
        for row in rows_fn(r, prompt):
          rows.append(row)
          owner.append(j)
      width = -(-max(len(x) for x, _ in rows) // 32) * 32  # one program per 32-token bucket
      input_ids = np.full((len(rows), width), pad, np.int32)
      mask = np.zeros((len(rows), width), np.int32)
      for j, (x, _) in enumerate(rows):
        input_ids[j, : len(x)] = x
        mask[j, : len(x)] = 1
      pixels = _pixels(
        chunk,
        size,
        video_root=video_root,
        video_ext=video_ext,
        num_frames=num_frames,
        decode_size=decode_size,
        frames_fn=frames_fn,
        resize=getattr(cfg, "video_resize", "shortest_edge"),
        normalization=normalization or getattr(cfg, "pixel_normalization", None),
        frame_sampling=frame_sampling,
      )
      out = np.asarray(forward(model, input_ids, mask, pixels[np.asarray(owner)]))
      per: list[list[float]] = [[] for _ in chunk]
      for j, (_, score_fn) in enumerate(rows):
        per[owner[j]] += [float(v) for v in score_fn(out[j])]
      for option_scores in per:
        preds.append(int(np.argmax(option_scores)))
        scores.append(option_scores)
      seconds += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
  outputs = [f"({conversation.option_letter(k)})" for k in preds]
  return ChoiceRun(preds, scores, outputs, eff, seconds)


def choose_letters(
  model,
  tokenizer,
  records: Sequence[VideoQA],
  *,
  video_root: str = "",
  video_ext: str = ".mp4",
  num_frames: int = 8,
  decode_size: int | None = None,
  batch_size: int = 8,
  frames_fn: Callable[[VideoQA], np.ndarray] | None = None,
  prompt_format: str = "plain",
  answer_style: str = "letter_text",
  normalization: tuple | None = None,
  frame_sampling: str = "ours",
) -> ChoiceRun:
  """Closed-set multiple-choice answers: one forward pass over prompt + " (" and the option
  whose letter token has the highest logit (`logprobs`: log-softmax over the letters).
  `prompt_format` / `answer_style` / `frame_sampling`: as the student was trained
  (`config.data.*`)."""

  def rows(record, prompt):
    head, letters = letter_token_ids(tokenizer, prompt, len(record.choices), answer_style)

    def score(logp):
      lp = logp[len(head) - 1, letters]
      return lp - np.logaddexp.reduce(lp)

    return [(head, score)]

  return _closed_set(
    model,
    tokenizer,
    records,
    rows,
    video_root=video_root,
    video_ext=video_ext,
    num_frames=num_frames,
    decode_size=decode_size,
    batch_size=batch_size,
    frames_fn=frames_fn,
    prompt_format=prompt_format,
    normalization=normalization,
    frame_sampling=frame_sampling,
  )


def choose_by_likelihood(
  model,
  tokenizer,
  records: Sequence[VideoQA],
  *,
  video_root: str = "",
  video_ext: str = ".mp4",
  num_frames: int = 8,
  decode_size: int | None = None,
  batch_size: int = 8,
  text_only: bool = False,
  frames_fn: Callable[[VideoQA], np.ndarray] | None = None,
  prompt_format: str = "plain",
  answer_style: str = "letter_text",
  normalization: tuple | None = None,
  frame_sampling: str = "ours",
) -> ChoiceRun:
  """Closed-set multiple-choice answers by the likelihood of each option's reply, "(B) text"
  as the student was trained to write it: the option with the highest summed token
  log-probability wins (lm-eval-harness style; `logprobs` are those sums, per option).
  text_only: sum over the option's text only (after its "(B)"), leaving out the letter.
  frame_sampling: which frames, as `run_student`'s."""

  def ids_of(text):
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])

  def rows(record, prompt):
    head, out = ids_of(prompt), []
    for k in range(len(record.choices)):
      reply = conversation.answer_target(record.choices, record.choices[k], k, style=answer_style)
      ids = ids_of(f"{prompt} {reply}")
      if ids[: len(head)] != head or len(ids) == len(head):
        raise ValueError(
          f"question {record.qid}: option {k}'s reply {reply!r} does not "
          "tokenize as a continuation of the prompt"
        )
      start = len(ids_of(f"{prompt} ({conversation.option_letter(k)})")) if text_only else len(head)
      # token t is predicted at position t - 1
      out.append(
        (
          ids,
          lambda logp, ids=ids, start=start: [
            sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))
          ],
        )
      )
    return out

  return _closed_set(
    model,
    tokenizer,
    records,
    rows,
    video_root=video_root,
    video_ext=video_ext,
    num_frames=num_frames,
    decode_size=decode_size,
    batch_size=batch_size,
    frames_fn=frames_fn,
    prompt_format=prompt_format,
    normalization=normalization,
    frame_sampling=frame_sampling,
  )


def question_type(record: VideoQA) -> str:
  for key in ("type", "question_type", "category", "task"):
    if record.meta.get(key):
      return str(record.meta[key])
  return record.qid.split("_")[0] if "_" in record.qid else "all"


def score(
  records: Sequence[VideoQA],
  outputs: Sequence[str],
  judge: Callable[[str, str], float] | None = None,
  parse: str = "ours",
  seed: int = 0,
) -> dict:
  """Multiple-choice accuracy (per type) and open-ended score of `outputs` for `records`.

  `parse`: how a reply picks an option (`aotd_jax.eval.mc_parse`: `official`, `mvbench`,
  `ours`); `seed` seeds the official parse's random pick for replies naming no letter
  (`random_picks` counts them).
  """
  mc = [(r, o) for r, o in zip(records, outputs) if r.choices]
  oe = [(r, o) for r, o in zip(records, outputs) if not r.choices]
  result: dict = {}
  if mc:
    picks = [mc_parse.choice(parse, o, r.choices, r.answer_index, r.qid, seed) for r, o in mc]
    result.update(
      metrics.mc_accuracy(
        [p for p, _ in picks], [r.answer_index for r, _ in mc], [question_type(r) for r, _ in mc]
      )
    )
    result["parse"] = parse
    result["random_picks"] = sum(drawn for _, drawn in picks)
  if oe:
    result["open_ended"] = metrics.open_ended_score(
      [o for _, o in oe], [r.answer for r, _ in oe], judge
    )
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
  return {
    "box_iou": float(np.mean(boxes)) if boxes else None,
    "box_rationales": len(boxes),
    "window_iou": float(np.mean(windows)) if windows else None,
    "window_rationales": len(windows),
  }
