"""Grain pipelines for dual-mode distillation: QA samples + CoT samples -> padded batches.

    sources (MapDataset: QA records, CoT JSONL / ArrayRecord)
      -> shuffle, repeat (per source)  -> mix by weights  -> per-host shard
      -> decode video + tokenise  (in `num_workers` worker processes, `mp_prefetch`)
      -> drop and count bad samples -> batch, pad to a length bucket
      -> host numpy batch, or global `jax.Array`s on a mesh

Batch keys: `input_ids`, `attention_mask`, `label_mask`, `rationale_mask` (B, L) int32,
`pixel_values_videos` (B, T, 3, S, S) float32 and, host-side only, `qid` (object array). The
masks follow `aotd_jax.data.tokenize`. The iterator's `get_state()` is a JSON-able dict
(the trainer saves it per process in each checkpoint); `set_state` on a
pipeline built with the same arguments resumes on the exact next batch.
"""

from __future__ import annotations

import collections
import dataclasses
import glob as globlib
import json
import os
import sys
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aotd_jax.data import annotations_formats, conversation, files, video
from aotd_jax.data.annotations import ReadReport, VideoQA
from aotd_jax.data.tokenize import TokenizeOptions, tokenize_sample
from aotd_jax.models.pixel_norms import CLIP_MEAN, CLIP_STD

SKIP = "_skip"  # key of the marker a worker returns for a sample it could not prepare


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Pipeline options (all hosts use the same values).

  Attributes:
    batch_size: global batch size, split evenly over `jax.process_count()` hosts.
    num_frames: frames per clip (T).
    frame_sampling: which frames of a clip's window, "ours" (both ends taken) or "official"
      (the AoTD release's `linspace(0, vlen, T, endpoint=False)`; `video.sample_indices`).
    image_size: shortest edge and centre crop of `preprocess_video` (S).
    video_resize: `preprocess_video`'s resize: "shortest_edge" (LLaVA-NeXT-Video: resize the
      shortest edge, centre crop) or "square" (LLaVA-OneVision: straight to S x S); the
      trainer takes the student config's `video_resize`.
    image_mean, image_std: per-channel normalisation after the 1/255 rescale; the trainer
      takes the student checkpoint's processor files' (or the released processor's:
      `aotd_jax.hf.processor_files.pixel_normalization`).
    decode_size: size frames are decoded at (int or (H, W)); None keeps the video's size,
      which matches transformers' processor exactly, a small value is much faster.
    buckets: allowed padded lengths; a batch pads to the smallest that fits its longest
      sample; the largest is the maximum length (longer responses are cut and counted).
    train_on_prompt, num_video_tokens, video_token: see `aotd_jax.data.tokenize`.
    answer_style: QA targets, "letter_text" -> "(B) text" or "letter" -> "B".
    seed, shuffle, num_epochs: shuffling per source, reshuffled every epoch; None repeats
      forever.
    mixing: "weighted" (each source shuffled and repeated on its own, then mixed by the
      weights: small sets are oversampled) or "concat_epoch" (the official release: every
      source concatenated and shuffled as one set, so each example appears once an epoch and
      the weights are not used). See `mix_sources`.
    max_skip_fraction, skip_check_after: a source (tagged by `TagSource`) that skips more
      than this share of its first `skip_check_after` or more samples stops the run.
    num_workers: decoding processes (0: in the calling process).
    worker_buffer_size: prepared samples buffered per worker.
    pad_token_id: None uses the tokenizer's pad, else its EOS, else 0.
    frame_cache_items: per-worker `FrameCache` size (0: no cache).
  """

  batch_size: int
  num_frames: int = 8
  frame_sampling: str = "ours"
  image_size: int = 224
  video_resize: str = "shortest_edge"
  image_mean: tuple[float, ...] = CLIP_MEAN
  image_std: tuple[float, ...] = CLIP_STD
  decode_size: int | tuple[int, int] | None = None
  buckets: tuple[int, ...] = (256, 512, 1024, 2048)
  train_on_prompt: bool = False
  num_video_tokens: int | None = None
  video_token: str = "<video>"
  answer_style: str = "letter_text"
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  mixing: str = "weighted"
  max_skip_fraction: float = 0.5
  skip_check_after: int = 50
  num_workers: int = 0
  worker_buffer_size: int = 2
  pad_token_id: int | None = None
  frame_cache_items: int = 0


# ------------------------------------------------------------------------------- sources


def _video_path(root: str, path: str) -> str:
  return files.join(root, path)


def qa_example(
  r: VideoQA,
  *,
  video_root: str = "",
  video_ext: str = ".mp4",
  answer_style: str = "letter_text",
  prompt_format: str = "plain",
) -> dict:
  """The QA-mode example (a plain dict) of one record that has an answer to train on.

  The video is `annotations_formats.video_file`'s (the file evaluation reads too):
  `meta["video_path"]` when set (NExT-QA, ActivityNet-QA's container), else
  `{video_id}{video_ext}` (`{video_file_stem}{video_ext}` for ActivityNet-QA), both under
  `video_root`. `prompt_format`: see `conversation.format_question`.
  """
  return {
    "mode": "qa",
    "qid": r.qid,
    "video_path": annotations_formats.video_file(r, video_root, video_ext),
    "start": r.start,
    "end": r.end,
    "user_text": conversation.qa_user_text(r.question, r.choices, prompt_format),
    "assistant_text": conversation.answer_target(
      r.choices, r.answer, r.answer_index, style=answer_style
    ),
  }


def has_no_answer(r: VideoQA) -> bool:
  """A multiple-choice record without one correct option: no letter to train on."""
  return bool(r.choices) and r.answer_index is None


def warn_no_answer(no_answer: Sequence[str], num_left_out: int, num_multiple_choice: int) -> None:
  """Logs the multiple-choice records `qa_examples` leaves out (`no_answer`: the first qids)."""
  if num_left_out:
    logging.warning(
      "qa: %d of %d multiple-choice records have no single correct option (CLEVRER's "
      "questions with several correct choices, or unlabelled records) and are left out: %s%s",
      num_left_out,
      num_multiple_choice,
      ", ".join(no_answer[:5]),
      ", ..." if num_left_out > 5 else "",
    )


def qa_examples(records: Sequence[VideoQA], **kw) -> list[dict]:
  """QA-mode examples (plain dicts) from annotation records (options: `qa_example`).

  A multiple-choice record without one correct option (CLEVRER's questions with several
  correct choices, an unlabelled split) has no letter to train on: it is left out, and the
  count with the first question ids is logged as a warning.
  """
  out, no_answer = [], []
  for r in records:
    if has_no_answer(r):
      no_answer.append(r.qid)
      continue
    out.append(qa_example(r, **kw))
  warn_no_answer(no_answer, len(no_answer), sum(bool(r.choices) for r in records))
  return out


def qa_source(records: Sequence[VideoQA], **kw) -> grain.MapDataset:
  """A `MapDataset` of QA-mode examples (see `qa_examples` for the options)."""
  return grain.MapDataset.source(qa_examples(records, **kw))


UNFILTERED_HINT = (
  "that is the CoT job's record log (every question, kept or not), not its kept "
  "dataset: train on the job's cot-*.array_record shards, or set "
  "config.data.allow_unfiltered_cots=True to train on unfiltered CoTs"
)


def cot_example(
  rec: Any,
  *,
  video_root: str = "",
  prompt_format: str | None = None,
  allow_unfiltered: bool = False,
) -> dict:
  """A CoT-mode example from one AoTD conversation record; ValueError / KeyError if malformed.

  Record: `{"video_path", "conversation": [{"from": "human", ...}, {"from": "gpt", ...}],
  "qid", optional "start" / "end" (seconds), "question" / "choices", "video"}`. The video is
  `video` (the CoT job's path under its video folder) under `video_root` when both are given,
  else `video_path` (under `video_root` when relative). With a `prompt_format`
  and the record's question and choices, the user text is rebuilt in that format (so CoTs
  train in the same format as the QA samples); otherwise the human turn is used as written,
  with the rationale suffix appended when it is not already there.

  A record of the CoT job's log that the filter did not keep (`"kept": false`; its
  conversation is a QA reply) is refused, unless `allow_unfiltered`: then its `rationale`
  is the CoT (a record without one is refused).
  """
  if not isinstance(rec, Mapping):
    raise ValueError(f"record is a {type(rec).__name__}, not an object")
  if rec.get("kept") is False:
    if not allow_unfiltered:
      raise ValueError(
        f"record {rec.get('qid')!r} is not a kept CoT (kept=false); " + UNFILTERED_HINT
      )
    if not isinstance(rec.get("rationale"), str) or not rec["rationale"].strip():
      raise ValueError(
        f"unfiltered record {rec.get('qid')!r} has no rationale (its program "
        "failed or its answer was wrong before a rationale was written)"
      )
    user = conversation.cot_user_text(
      str(rec.get("question", "")),
      [str(c) for c in rec.get("choices") or []],
      prompt_format or "plain",
    )
    rationale = rec["rationale"]
  else:
    user, rationale = conversation.conversation_turns(rec["conversation"])
    if (
      prompt_format is not None
      and isinstance(rec.get("question"), str)
      and isinstance(rec.get("choices"), list)
    ):
      user = conversation.cot_user_text(
        rec["question"], [str(c) for c in rec["choices"]], prompt_format
      )
  if conversation.RATIONALE_SUFFIX not in user:
    user = f"{user.rstrip()}\n{conversation.RATIONALE_SUFFIX}"
  if not isinstance(rec["video_path"], str) or not rec["video_path"]:
    raise ValueError("video_path must be a non-empty string")
  # the CoT job's `video` (the path under its video folder) under this run's `video_root`: the
  # job's absolute `video_path` names its own machine's folder
  video = rec.get("video")
  path = video if video_root and isinstance(video, str) and video else rec["video_path"]
  return {
    "mode": "cot",
    "qid": str(rec["qid"]),
    "video_path": _video_path(video_root, path),
    "start": rec.get("start"),
    "end": rec.get("end"),
    "user_text": user,
    "assistant_text": rationale,
  }


def _cot_error(e: Exception) -> str:
  return f"missing field {e}" if isinstance(e, KeyError) else str(e)


def iter_cot_jsonl(
  path: str,
  report: ReadReport,
  *,
  video_root: str = "",
  prompt_format: str | None = None,
  allow_unfiltered: bool = False,
) -> Iterator[tuple[str, dict]]:
  """(line, CoT example) of each good record of a JSONL file, read line by line; malformed
  lines are reported in `report` (file:line), counted and skipped. Options: `cot_example`.

  Raises:
    ValueError: after the last line, when the file is the CoT job's record log (records the
      filter did not keep) and `allow_unfiltered` is not set.
  """
  unkept, total = 0, 0
  with files.open_lines(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      total += 1
      try:
        rec = json.loads(line)
        unkept += isinstance(rec, Mapping) and rec.get("kept") is False
        if unkept and not allow_unfiltered:
          continue
        yield (
          line,
          cot_example(
            rec,
            video_root=video_root,
            prompt_format=prompt_format,
            allow_unfiltered=allow_unfiltered,
          ),
        )
        report.num_records += 1
      except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        report.skip(f"{path}:{lineno}", _cot_error(e))
  if unkept and not allow_unfiltered:
    raise ValueError(
      f"{path}: {unkept} of its {total} records are not kept CoTs (kept=false); " + UNFILTERED_HINT
    )


def read_cot_jsonl(
  path: str,
  *,
  video_root: str = "",
  prompt_format: str | None = None,
  allow_unfiltered: bool = False,
) -> tuple[list[dict], ReadReport]:
  """CoT examples from a JSONL file; malformed lines are reported (file:line), counted, skipped.

  Raises:
    ValueError: the file is the CoT job's record log (records the filter did not keep) and
      `allow_unfiltered` is not set.
  """
  report = ReadReport(fmt="cot", path=path)
  out = [
    example
    for _, example in iter_cot_jsonl(
      path,
      report,
      video_root=video_root,
      prompt_format=prompt_format,
      allow_unfiltered=allow_unfiltered,
    )
  ]
  logging.log(logging.WARNING if report.num_skipped else logging.INFO, "cot: %s", report.summary())
  return out, report


class _ParseCotRecord:
  """ArrayRecord bytes -> CoT example, or a skip marker naming the file and index."""

  def __init__(
    self,
    path: str,
    video_root: str,
    prompt_format: str | None = None,
    allow_unfiltered: bool = False,
  ):
    self.path, self.video_root, self.prompt_format = path, video_root, prompt_format
    self.allow_unfiltered = allow_unfiltered

  def __call__(self, index: int, data: bytes) -> dict:
    try:
      return cot_example(
        json.loads(data),
        video_root=self.video_root,
        prompt_format=self.prompt_format,
        allow_unfiltered=self.allow_unfiltered,
      )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError, TypeError) as e:
      return {
        SKIP: f"{self.path}[{index}]: malformed CoT record: {_cot_error(e)}",
        "kind": "record",
      }


def cot_files(pattern: str | os.PathLike | Sequence[str]) -> list[str]:
  """The files a CoT source names: a path, a glob (`W/cot-*.array_record`) or a list of them.

  Raises:
    FileNotFoundError: a path that does not exist or a glob that matches nothing (named).
  """
  items = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
  found = []
  for item in items:
    item = os.fspath(item)
    if any(ch in item for ch in "*?["):
      if files.is_url(item):  # gs://, or any fsspec filesystem: a glob in the file name
        parent, _, name = item.rpartition("/")
        matched = files.glob(parent, name)
      else:
        matched = sorted(globlib.glob(item))
      if not matched:
        raise FileNotFoundError(f"CoT glob matches no file: {item}")
      found += matched
    elif not files.exists(item):
      raise FileNotFoundError(f"CoT file not found: {item}")
    else:
      found.append(item)
  for f in found:
    if not f.endswith((".array_record", ".arrayrecord", ".jsonl", ".json")):
      raise ValueError(f"{f}: CoT files must be .jsonl or .array_record")
  return found


def cot_source(
  path: str | os.PathLike | Sequence[str],
  *,
  video_root: str = "",
  prompt_format: str | None = None,
  allow_unfiltered: bool = False,
  cache_dir: str = "",
) -> grain.MapDataset:
  """A `MapDataset` of CoT-mode examples from `*.jsonl` or `*.array_record` (JSON per record).

  `path` may be a glob or a list (the CoT job's shards: an empty shard adds nothing).
  ArrayRecord is parsed lazily and bad records are counted by the pipeline. JSONL is read up
  front (bad lines are logged and in `.report` of `read_cot_jsonl`): into memory without a
  `cache_dir` (and so copied into every Grain worker), else once into an ArrayRecord file
  there (`cot_cache`) that is read lazily like the CoT job's. `prompt_format` and
  `allow_unfiltered`: see `cot_example`.
  """
  parts = []
  for f in cot_files(path):
    label = f
    if f.endswith((".jsonl", ".json")) and cache_dir:
      from aotd_jax.data import cot_cache  # pylint: disable=g-import-not-at-top

      f = cot_cache.cached_cot_jsonl(
        f,
        cache_dir,
        video_root=video_root,
        prompt_format=prompt_format,
        allow_unfiltered=allow_unfiltered,
      )
      label = f"{label} (cached as {f})"
    if f.endswith((".array_record", ".arrayrecord")):
      source = grain.sources.ArrayRecordDataSource([f])
      if len(source):
        parts.append(
          grain.MapDataset.source(source).map_with_index(
            _ParseCotRecord(label, video_root, prompt_format, allow_unfiltered)
          )
        )
    else:
      examples = read_cot_jsonl(
        f, video_root=video_root, prompt_format=prompt_format, allow_unfiltered=allow_unfiltered
      )[0]
      if examples:
        parts.append(grain.MapDataset.source(examples))
  if not parts:
    return grain.MapDataset.source([])
  return parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)


def write_cot_array_record(path: str | os.PathLike, records: Sequence[Mapping]) -> None:
  """Writes CoT records (one JSON each) as an ArrayRecord file (the CoT job's shard format)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
  for rec in records:
    writer.write(json.dumps(rec).encode())
  writer.close()


class EpochShuffle(grain.MapDataset):
  """Repeats a source `num_epochs` times (None: forever), a fresh permutation each epoch.

  Index-addressable and stateless like Grain's `shuffle().repeat()`, but one numpy
  permutation per epoch (cached) instead of a Feistel evaluation per element, which costs
  ~1 ms per element on a busy CPU. The permutation is made under a lock and kept as int32:
  a Grain worker reads with 16 threads, each of which made its own (16 x 2 x 8 B a question
  at once: ~+490 MB per worker for 4M questions) before the first one was cached.
  """

  def __init__(
    self, parent: grain.MapDataset, *, seed: int, num_epochs: int | None, shuffle: bool = True
  ):
    super().__init__(parent)
    self._n = len(parent)
    self._seed, self._shuffle = seed, shuffle
    self._length = sys.maxsize if num_epochs is None else self._n * num_epochs
    self._perm: tuple[int, np.ndarray] | None = None
    self._lock = threading.Lock()

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_perm")}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _perm=None, _lock=threading.Lock())

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed}, shuffle={self._shuffle})"

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perm
    if perm is None or perm[0] != epoch:
      with self._lock:
        perm = self._perm
        if perm is None or perm[0] != epoch:
          order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
          dtype = np.int32 if self._n <= np.iinfo(np.int32).max else np.int64
          perm = self._perm = (epoch, order.astype(dtype))
    return perm[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index >= self._length:
      raise IndexError(index)
    epoch, i = divmod(index, self._n)
    if self._shuffle:
      i = int(self._permutation(epoch)[i])
    return self._parent[i]


MIXINGS = ("weighted", "concat_epoch")


def mix_sources(
  sources: Sequence[grain.MapDataset],
  weights: Sequence[float] | None = None,
  *,
  seed: int = 0,
  shuffle: bool = True,
  num_epochs: int | None = None,
  mixing: str = "weighted",
) -> grain.MapDataset:
  """Combines the sources into one index-addressable stream of examples.

  `mixing="weighted"` shuffles (reshuffled per epoch) and repeats each source, then mixes them
  by `weights`. `mixing="concat_epoch"` is the official AoTD recipe: all sources concatenated
  and shuffled together, each example once per epoch (weights must be None or all equal).
  """
  if mixing not in MIXINGS:
    raise ValueError(f"mix_sources: mixing={mixing!r} not in {MIXINGS}")
  if not sources:
    raise ValueError("mix_sources: no sources")
  if weights is not None:
    if len(weights) != len(sources):
      raise ValueError(f"mix_sources: {len(weights)} weights for {len(sources)} sources")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
      raise ValueError(
        f"mix_sources: weights must be >= 0 with a positive sum, got {list(weights)}"
      )
  for i, ds in enumerate(sources):
    if len(ds) == 0:
      raise ValueError(f"mix_sources: source {i} is empty")
  if mixing == "concat_epoch":
    if weights is not None and len(set(weights)) > 1:
      raise ValueError(
        f"mix_sources: mixing='concat_epoch' uses every example once per epoch; "
        f"it takes no weights, got {list(weights)}"
      )
    whole = sources[0] if len(sources) == 1 else grain.MapDataset.concatenate(list(sources))
    return EpochShuffle(whole, seed=seed, num_epochs=num_epochs, shuffle=shuffle)
  out, kept = [], []
  for i, ds in enumerate(sources):
    if weights is not None and weights[i] == 0:
      continue  # Grain's mix refuses zero proportions: a weight of 0 means "not used"
    out.append(EpochShuffle(ds, seed=seed + i, num_epochs=num_epochs, shuffle=shuffle))
    kept.append(1.0 if weights is None else float(weights[i]))
  return out[0] if len(out) == 1 else grain.MapDataset.mix(out, kept)


# ------------------------------------------------------------------------ sample -> arrays


class PrepareSample:
  """Example dict -> arrays (runs in the worker processes): decode the clip, tokenise."""

  def __init__(
    self,
    tokenizer,
    config: PipelineConfig,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
  ):
    self.tokenizer = tokenizer
    self.config = config
    self.preprocess = preprocess
    self.options = TokenizeOptions(
      max_length=max(config.buckets),
      train_on_prompt=config.train_on_prompt,
      video_token=config.video_token,
      num_video_tokens=config.num_video_tokens,
    )
    self._cache = None

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_cache"} | {"_cache": None}

  def _pixels(self, frames: np.ndarray) -> np.ndarray:
    if self.preprocess is not None:
      return self.preprocess(frames)
    from aotd_jax.data import video_processing  # pylint: disable=g-import-not-at-top

    size = self.config.image_size
    return video_processing.preprocess_video(
      frames,
      shortest_edge=size,
      crop_size=size,
      resize=self.config.video_resize,
      image_mean=self.config.image_mean,
      image_std=self.config.image_std,
    )

  def __call__(self, ex: dict) -> dict:
    if SKIP in ex:
      return ex
    cfg = self.config
    if self._cache is None and cfg.frame_cache_items:
      self._cache = video.FrameCache(cfg.frame_cache_items)
    try:
      frames = video.read_frames(
        ex["video_path"],
        cfg.num_frames,
        start=ex["start"],
        end=ex["end"],
        size=cfg.decode_size,
        cache=self._cache,
        sampling=cfg.frame_sampling,
      )
    except video.VideoDecodeError as e:
      return {SKIP: f"qid {ex['qid']}: {e}", "kind": "video"}
    try:
      tok = tokenize_sample(
        self.tokenizer, ex["user_text"], ex["assistant_text"], ex["mode"], self.options
      )
    except ValueError as e:
      return {SKIP: f"qid {ex['qid']}: {e}", "kind": "tokenize"}
    tok["pixel_values_videos"] = np.asarray(self._pixels(frames), np.float32)
    tok["qid"] = ex["qid"]
    return tok


class TagSource:
  """Adds the name of the source an example (or a skip marker) came from."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, ex: dict) -> dict:
    return {**ex, "source": self.name}


class SkipCounter:
  """Filter predicate (main process): drops skip markers, counting and logging them.

  Counts are kept per source too (examples tagged by `TagSource`): once a source has
  produced `min_samples` elements and more than `max_skip_fraction` of them were skipped, the
  run stops with a RuntimeError that names the source, the counts and the last reasons.
  """

  def __init__(
    self, max_messages: int = 100, *, max_skip_fraction: float = 0.5, min_samples: int = 50
  ):
    self.counts: collections.Counter = collections.Counter()
    self.messages: collections.deque = collections.deque(maxlen=max_messages)
    self.truncated = 0
    self.max_skip_fraction, self.min_samples = max_skip_fraction, min_samples
    self.seen: collections.Counter = collections.Counter()
    self.skipped: collections.Counter = collections.Counter()
    self.reasons: dict[str, collections.deque] = {}

  def __call__(self, element: dict) -> bool:
    source = element.get("source", "data")
    self.seen[source] += 1
    if SKIP in element:
      self.counts[element.get("kind", "other")] += 1
      self.messages.append(element[SKIP])
      self.skipped[source] += 1
      self.reasons.setdefault(source, collections.deque(maxlen=3)).append(element[SKIP])
      logging.warning("pipeline: skipped sample: %s", element[SKIP])
      self._check(source)
      return False
    self.truncated += int(element["truncated"])
    return True

  def _check(self, source: str) -> None:
    seen, skipped = self.seen[source], self.skipped[source]
    if seen >= self.min_samples and skipped > self.max_skip_fraction * seen:
      raise RuntimeError(
        f"data source {source}: {skipped} of its first {seen} samples were skipped "
        f"(more than {self.max_skip_fraction:.0%}); last reasons: "
        + " | ".join(self.reasons[source])
      )


class Collate:
  """List of samples -> one batch padded (right) to the smallest bucket that fits."""

  def __init__(self, buckets: Sequence[int], pad_token_id: int):
    self.buckets = tuple(sorted(buckets))
    self.pad_token_id = pad_token_id

  def length(self, longest: int) -> int:
    return next(b for b in self.buckets if b >= longest)

  def __call__(self, samples: Sequence[dict]) -> dict[str, np.ndarray]:
    L = self.length(max(len(s["input_ids"]) for s in samples))
    B = len(samples)
    out = {
      "input_ids": np.full((B, L), self.pad_token_id, np.int32),
      "attention_mask": np.zeros((B, L), np.int32),
      "label_mask": np.zeros((B, L), np.int32),
      "rationale_mask": np.zeros((B, L), np.int32),
    }
    for i, s in enumerate(samples):
      n = len(s["input_ids"])
      out["input_ids"][i, :n] = s["input_ids"]
      out["attention_mask"][i, :n] = 1
      out["label_mask"][i, :n] = s["label_mask"]
      out["rationale_mask"][i, :n] = s["rationale_mask"]
    out["pixel_values_videos"] = np.stack([s["pixel_values_videos"] for s in samples])
    out["qid"] = np.array([s["qid"] for s in samples], dtype=object)
    return out


# ------------------------------------------------------------------------------ iterator


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Host-local numpy batch -> global `jax.Array`s, batch axis over (data, fsdp).

  Non-numeric entries (`qid`) stay host-side numpy.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.dtype == object:
      out[k] = v
      continue
    sharding = NamedSharding(mesh, P(("data", "fsdp"), *([None] * (v.ndim - 1))))
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


class DistillPipeline:
  """The batch iterator: numpy batches (or global arrays with `mesh`), Grain state."""

  def __init__(self, dataset: grain.IterDataset, skips: SkipCounter, mesh: Mesh | None = None):
    self._iter = iter(dataset)
    self.skips = skips
    self.mesh = mesh

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    batch = next(self._iter)
    return batch if self.mesh is None else global_batch(batch, self.mesh)

  def get_state(self) -> dict:
    """The data-iterator state (JSON-serialisable) for Orbax checkpoints."""
    return self._iter.get_state()

  def set_state(self, state: Mapping) -> None:
    """Resumes at the batch after the one `state` was taken at."""
    self._iter.set_state(dict(state))

  def stats(self) -> dict:
    return {"skipped": dict(self.skips.counts), "truncated": self.skips.truncated}

  def close(self) -> None:
    close = getattr(self._iter, "close", None)
    if close is not None:
      close()


def make_pipeline(
  tokenizer,
  sources: Sequence[grain.MapDataset],
  config: PipelineConfig,
  *,
  weights: Sequence[float] | None = None,
  mesh: Mesh | None = None,
  preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> DistillPipeline:
  """Builds the dual-mode batch iterator.

  Args:
    tokenizer: the student's tokenizer (its chat template is used when it has one).
    sources: `MapDataset`s of examples (`qa_source`, `cot_source`).
    config: `PipelineConfig`.
    weights: mixing weights, one per source (None: uniform).
    mesh: when given, batches are global `jax.Array`s on it.
    preprocess: frames (T, H, W, 3) uint8 -> (T, 3, S, S) float32 (default:
      `video_processing.preprocess_video` at `config.image_size`).
    process_index, process_count: host sharding (default: `jax.process_index/count()`).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if config.batch_size % count:
    raise ValueError(f"batch_size {config.batch_size} does not divide over {count} hosts")
  if not config.buckets or min(config.buckets) <= 0:
    raise ValueError(f"buckets must be positive lengths, got {config.buckets}")
  pad = config.pad_token_id
  if pad is None:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  ds = mix_sources(
    sources,
    weights,
    seed=config.seed,
    shuffle=config.shuffle,
    num_epochs=config.num_epochs,
    mixing=config.mixing,
  )
  if count > 1:
    ds = ds[index::count]
  ds = ds.map(PrepareSample(tokenizer, config, preprocess)).to_iter_dataset()
  if config.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's worker pool reads its absl flags; outside an absl app (tests, notebooks)
      # they keep their defaults. Launch scripts have parsed flags before this point.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=config.num_workers, per_worker_buffer_size=config.worker_buffer_size
      )
    )
  skips = SkipCounter(
    max_skip_fraction=config.max_skip_fraction, min_samples=config.skip_check_after
  )
  ds = ds.filter(skips).batch(
    config.batch_size // count, drop_remainder=True, batch_fn=Collate(config.buckets, pad or 0)
  )
  return DistillPipeline(ds, skips, mesh)
