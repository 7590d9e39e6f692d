"""The trainer's data: the Grain dual-mode pipeline, or synthetic batches for smoke runs."""

from __future__ import annotations

import os

from absl import logging
from flax import nnx

from aotd_jax.train.config_check import ConfigError
from aotd_jax.train.synthetic import SyntheticBatches

# What the pipeline uses when `config.data` leaves a key out (older configs, the toy world's):
# STAR's question window and our frame sampling; the real configs set the official release's
# (`configs/common.py`'s `distill_config`; docs/fidelity.md, "which frames").
DATA_DEFAULTS = {"window": "question", "frame_sampling": "ours"}
# `launch.export` writes the inputs a student was trained on beside its weights, so that
# `launch.evaluate` on the export decodes and prompts as the run did (`trained_inputs`).
TRAINED_INPUTS_FILE = "aotd_training.json"
TRAINED_INPUT_KEYS = ("num_frames", "prompt_format", "answer_style", "window", "frame_sampling")


def trained_inputs(data) -> dict:
  """The `config.data` settings that decide what a student sees and answers (frames, prompt,
  QA target), as the trainer used them: a key the config leaves out has its `DATA_DEFAULTS`
  value, or is left out (the evaluation's flag default is the trainer's)."""
  out = {}
  for key in TRAINED_INPUT_KEYS:
    value = data.get(key, DATA_DEFAULTS.get(key))
    if value is not None and value != "":
      out[key] = value
  return out


def _video_tokens(config, num_frames: int) -> int:
  """Visual tokens of a clip (after pooling; LLaVA-OneVision adds a newline), as transformers counts."""
  return config.video_tokens(num_frames)


def sources_from_datasets(d) -> tuple[list[dict], list[dict]]:
  """`config.data.datasets` ({name: {format, annotations, video_root, cots, weight}}) as the
  `qa` and `cot` source lists (a dataset with `cots=""` has no CoT source)."""
  qa, cot = [], []
  for name, ds in (d.get("datasets", None) or {}).items():
    for key in ("format", "annotations", "video_root"):
      if key not in ds:
        raise ValueError(f"config.data.datasets.{name}.{key} is missing")
    qa.append(
      dict(
        format=ds["format"],
        path=ds["annotations"],
        video_root=ds["video_root"],
        weight=float(ds.get("weight", 1.0)),
        max_examples=int(ds.get("max_examples", 0) or 0),
        name=name,
      )
    )
    if ds.get("cots", ""):
      cot.append(
        dict(
          path=ds["cots"],
          video_root=ds["video_root"],
          weight=float(ds.get("weight", 1.0)),
          name=name,
        )
      )
  return qa, cot


def subsample_indices(n: int, max_examples: int, *, seed: int, name: str):
  """Which of a source's `n` records to keep: at most `max_examples` (all when 0 or no more
  than that), picked at random without replacement, as sorted indices (file order); None keeps
  all. The pick depends only on `seed`, `name` and `n`, so every host of a run keeps the same
  questions, and a rerun the same ones."""
  import zlib

  import numpy as np

  if max_examples < 0:
    raise ValueError(f"max_examples={max_examples}: must be >= 0 (0: all)")
  if not max_examples or n <= max_examples:
    return None
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  return np.sort(rng.choice(n, max_examples, replace=False))


def _qa_sources(d) -> list[tuple[str, str, dict]]:
  """(the `--config.` prefix that sets it, its path key, the source) of each QA source of
  `config.data` (its `qa` list, then its `datasets`), in pipeline order."""
  listed = [(f"--config.data.qa[{i}]", "path", qa) for i, qa in enumerate(d.get("qa", ()))]
  named = [
    (f"--config.data.datasets.{qa['name']}", "annotations", qa)
    for qa in sources_from_datasets(d)[0]
  ]
  return listed + named


def check_paths(cfg) -> None:
  """`ConfigError` naming each QA source's annotation file or video folder that does not exist,
  by its flag, or a `data.cache_dir` that cannot be one; run before the student is built (a 7B
  load takes minutes)."""
  if cfg.data.get("kind", "synthetic") != "pipeline":
    return
  from aotd_jax.data import files

  data_cache_dir(cfg.data, "")  # a bucket as cache_dir: named now, not after the student's load
  errors = []
  for flag, key, qa in _qa_sources(cfg.data):
    if not files.exists(qa["path"]):
      errors.append(f"{flag}.{key}={qa['path']}: no such file")
    root = qa.get("video_root", "")
    if root and not files.isdir(root):
      errors.append(f"{flag}.video_root={root}: no such directory")
  if errors:
    raise ConfigError("training data not found:\n  " + "\n  ".join(errors))


def check_videos(name: str, flag: str, ds, root: str) -> None:
  """ConfigError when none of the first `video.VIDEOS_CHECKED` distinct videos of source `ds`
  exists (the path layout differs from the one its reader expects); a warning naming the
  missing ones when only some do not."""
  from aotd_jax.data import pipeline, video

  def example_paths():
    for i in range(len(ds)):
      example = ds[i]
      yield None if pipeline.SKIP in example else example.get("video_path")

  paths, missing = video.first_videos(example_paths())
  if paths and len(missing) == len(paths):
    raise ConfigError(
      f"{flag}.video_root={root}: none of the first {len(paths)} videos of {name} exists "
      f"(e.g. {missing[0]}); point video_root at the folder holding them in the layout "
      "docs/data.md gives for its format"
    )
  if missing:
    logging.warning(
      "%s: %d of its first %d videos do not exist (e.g. %s); the pipeline skips and counts them",
      name,
      len(missing),
      len(paths),
      missing[0],
    )


def describe_mix(named: list, mixing: str, drawn: int) -> None:
  """Logs each source's examples and share of the mix; under `concat_epoch` (shares are sizes)
  warns when the run draws (`drawn` = batch size x total steps) under half an epoch: a source
  read whole (AGQA's millions of questions) would then make most of what it trains on."""
  sizes = [len(ds) for _, ds in named]
  total = sum(sizes)
  logging.info(
    "data mix (%s): %s",
    mixing,
    "; ".join(f"{name} {n} ({100 * n / total:.1f} %)" for (name, _), n in zip(named, sizes)),
  )
  if mixing == "concat_epoch" and 0 < drawn < total / 2:
    big = max(range(len(named)), key=sizes.__getitem__)
    logging.warning(
      "concat_epoch: the run draws %d examples (batch_size x total_steps), %.1f %% of one "
      "epoch of %d; %s is %.1f %% of it (config.data.datasets.<name>.max_examples caps a "
      "source; docs/training.md, 'AGQA in the mix')",
      drawn,
      100 * drawn / total,
      total,
      named[big][0],
      100 * sizes[big] / total,
    )


def _qa_source(cfg, name: str, flag: str, key: str, qa: dict, read_kwargs: dict, cache_dir: str):
  """(the `MapDataset` of QA source `qa`, the read's report): its records parsed into memory
  when `cache_dir` is "", else served from the file `record_cache` keeps there."""
  from aotd_jax.data import annotations, pipeline, record_cache

  example_kw = dict(
    video_root=qa.get("video_root", ""),
    video_ext=qa.get("video_ext", ".mp4"),
    answer_style=cfg.data.get("answer_style", "letter_text"),
    prompt_format=cfg.data.get("prompt_format", "plain"),
  )
  cap = int(qa.get("max_examples", 0) or 0)
  try:
    if cache_dir:
      records = record_cache.cached_records(  # the parse's peak is a child's, not the trainer's
        qa["format"], qa["path"], cache_dir, parse_in_subprocess=True, **read_kwargs
      )
      report = records.report()
    else:
      records = annotations.read(qa["format"], qa["path"], **read_kwargs)
      report = records.report
  except annotations.AnnotationError as e:
    raise ConfigError(f"{flag}.{key} (format {qa['format']!r}): {e}") from None
  try:  # AGQA's millions of questions would otherwise make most of a concat_epoch mix
    keep = subsample_indices(len(records), cap, seed=cfg.seed, name=qa.get("name", qa["path"]))
  except ValueError as e:
    raise ConfigError(f"{flag}.max_examples: {e}") from None
  if keep is not None:
    logging.info("%s: %d of its %d questions kept (max_examples)", name, len(keep), len(records))
  if cache_dir:
    source = record_cache.qa_source(records, keep, fmt=qa["format"], **example_kw)
    return source, report
  kept = list(records) if keep is None else [records[int(i)] for i in keep]
  if qa["format"] == "activitynet_qa":  # its videos in whichever container they came in
    from aotd_jax.data import annotations_formats

    annotations_formats.locate_activitynet_videos(kept, example_kw["video_root"])
  return pipeline.qa_source(kept, **example_kw), report


def make_pipeline_data(cfg, student: nnx.Module, tokenizer=None, *, cache_dir: str = ""):
  """The Grain pipeline over `cfg.data.qa` (annotation files) and `cfg.data.cot` (CoT JSONL /
  ArrayRecord from `launch/generate_cots.py`), mixed per `cfg.data.mixing`.

  With a `cache_dir`, each annotation file is parsed once into a record file there
  (`aotd_jax.data.record_cache`) that the pipeline and its worker processes read lazily;
  without, the records are parsed into memory (and copied into every worker).

  Before it returns, one sample of each source is tokenised and must fit `seq_len`
  (`aotd_jax.data.fit_check`; `cfg.data.fit_check=False` skips that), and each source is
  tagged so that one that skips most of its samples stops the run by name.
  """
  from aotd_jax import hf
  from aotd_jax.data import conversation, fit_check, pipeline
  from aotd_jax.hf import processor_files
  from aotd_jax.data.tokenize import TokenizeOptions

  d = cfg.data
  tokenizer = tokenizer if tokenizer is not None else hf.load_tokenizer(d.tokenizer)
  conversation.use_student_chat_template(tokenizer, getattr(type(student), "hf_architecture", None))
  named, weights = [], []
  prompt_format = d.get("prompt_format", "plain")
  qa_list = _qa_sources(d)
  cot_list = list(d.get("cot", ())) + sources_from_datasets(d)[1]
  for i, (flag, key, qa) in enumerate(qa_list):
    read_kwargs = {
      "window": d.get("window", DATA_DEFAULTS["window"]),
      **dict(qa.get("read_kwargs", {}) or {}),
    }
    name = f"qa[{i}] ({qa.get('name', qa['format'])}: {qa['path']})"
    source, report = _qa_source(cfg, name, flag, key, qa, read_kwargs, cache_dir)
    if len(source) == 0:
      why = f" (first: {report.messages[0]})" if report.messages else ""
      raise ConfigError(
        f"{flag}: no question to train on in {qa['path']}: {report.summary()}{why}; "
        "a test split without answers, or another format than "
        f"format={qa['format']!r}?"
      )
    check_videos(name, flag, source, qa.get("video_root", ""))
    named.append((name, source))
    weights.append(float(qa.get("weight", 1.0)))
  for i, cot in enumerate(cot_list):
    name = f"cot[{i}] ({cot.get('name') + ': ' if cot.get('name') else ''}{cot['path']})"
    source = pipeline.cot_source(
      cot["path"],
      video_root=cot.get("video_root", ""),
      prompt_format=prompt_format,
      allow_unfiltered=d.get("allow_unfiltered_cots", False),
      cache_dir=cache_dir,  # a JSONL file read once into a lazily read file, as annotations
    )
    if len(source) == 0:
      files = pipeline.cot_files(cot["path"])
      raise ValueError(
        f"{name}: no CoT in its {len(files)} file(s) ({', '.join(files[:4])}"
        f"{', ...' if len(files) > 4 else ''}): did the CoT job keep any?"
      )
    flag = f"--config.data.datasets.{cot['name']}" if cot.get("name") else f"--config.data.cot[{i}]"
    check_videos(name, flag, source, cot.get("video_root", ""))
    named.append((name, source))
    weights.append(float(cot.get("weight", 1.0)))
  if not named:
    raise ValueError(
      "config.data.kind='pipeline' needs config.data.datasets, config.data.qa or config.data.cot"
    )
  describe_mix(named, d.get("mixing", "weighted"), cfg.batch_size * cfg.get("total_steps", 0))
  mc = student.config
  buckets = tuple(d.get("buckets", ())) or (d.seq_len,)
  # The student checkpoint's own processor files say how its frames are normalised (the real
  # path always has them); a fresh student gets its released processor's values.
  hf_dir = (cfg.get("student", None) or {}).get("hf_dir", "")
  image_mean, image_std = processor_files.pixel_normalization(mc, hf_dir)
  pc = pipeline.PipelineConfig(
    batch_size=cfg.batch_size,
    num_frames=d.num_frames,
    frame_sampling=d.get("frame_sampling", DATA_DEFAULTS["frame_sampling"]),
    image_size=mc.vision_config.image_size,
    video_resize=getattr(mc, "video_resize", "shortest_edge"),
    image_mean=image_mean,
    image_std=image_std,
    decode_size=d.get("decode_size", None),
    buckets=buckets,
    train_on_prompt=d.get("train_on_prompt", False),
    num_video_tokens=_video_tokens(mc, d.num_frames),
    seed=cfg.seed,
    video_token=getattr(mc, "video_token", "<video>"),
    num_workers=d.get("num_workers", 0),
    answer_style=d.get("answer_style", "letter_text"),
    mixing=d.get("mixing", "weighted"),
    max_skip_fraction=d.get("max_skip_fraction", 0.5),
    skip_check_after=d.get("skip_check_after", 50),
  )
  if d.get("fit_check", True):
    options = TokenizeOptions(
      max_length=max(buckets),
      train_on_prompt=pc.train_on_prompt,
      video_token=pc.video_token,
      num_video_tokens=pc.num_video_tokens,
    )
    try:
      fit_check.check_sources_fit(tokenizer, named, options, max(buckets))
    except ValueError as e:  # one line naming the numbers and the flags, not a traceback
      raise ConfigError(str(e)) from None
  sources = [ds.map(pipeline.TagSource(name)) for name, ds in named]
  return pipeline.make_pipeline(tokenizer, sources, pc, weights=weights)


CACHE_OFF = "off"
CACHE_FOLDER = "data_cache"


def data_cache_dir(data, workdir: str) -> str:
  """Where the run's parsed annotation files live (`record_cache`), from
  `config.data.cache_dir`: a folder as given; "" (the default) `workdir/data_cache` (hosts
  sharing a mounted workdir share it), or the host's temporary folder when the workdir is a
  bucket (the file is memory-mapped); "off" returns "": records parsed into memory in every
  process, as before the cache.

  Raises:
    ConfigError: a `cache_dir` that is a bucket URL.
  """
  from aotd_jax.data import files

  value = data.get("cache_dir", "") or ""
  if value == CACHE_OFF:
    return ""
  if value:
    if files.is_url(value):
      raise ConfigError(
        f"--config.data.cache_dir={value}: must be a local or mounted folder (its files are "
        "memory-mapped); leave it empty for the workdir's (or this host's temporary folder)"
      )
    return value
  if not workdir:
    return ""
  if files.is_url(workdir):
    import tempfile

    return os.path.join(tempfile.gettempdir(), "aotd_jax_" + CACHE_FOLDER)
  return os.path.join(workdir, CACHE_FOLDER)


def make_train_data(cfg, student: nnx.Module, *, workdir: str = ""):
  """Batches for `cfg` (host-local numpy; the trainer shards them on the mesh); the pipeline's
  annotation cache is `data_cache_dir(cfg.data, workdir)`."""
  kind = cfg.data.get("kind", "synthetic")
  if kind == "pipeline":
    return make_pipeline_data(cfg, student, cache_dir=data_cache_dir(cfg.data, workdir))
  if kind == "synthetic":
    mc = student.config
    text = getattr(mc, "text_config", mc)
    vision = getattr(mc, "vision_config", None)
    frames = cfg.data.get("num_frames", 0) if vision is not None else 0
    return SyntheticBatches(
      batch_size=cfg.batch_size,
      seq_len=cfg.data.seq_len,
      vocab_size=text.vocab_size,
      seed=cfg.seed,
      num_frames=frames,
      image_size=vision.image_size if vision is not None else 0,
      video_token_id=mc.video_token_index if vision is not None else None,
      num_video_tokens=_video_tokens(mc, frames) if vision is not None else 0,
    )
  raise ValueError(f"config.data.kind={kind!r}: expected 'synthetic' or 'pipeline'")
