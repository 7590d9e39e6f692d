r"""Generates filtered CoTs for one shard of a dataset (AoTD steps 2-3); resumable.

  python -m launch.generate_cots --config=configs/toyworld/cot.py \
      --config.out_dir=/tmp/cots --shard_index=0 --num_shards=1

Rerun the same command after a kill: done questions are skipped. `--shard_index/--num_shards`
default to the whole dataset split over the JAX processes (on a pod, `launch.tpu.pod
--module=launch.generate_cots` sets `config.distributed=True`); `python -m launch.merge_cots`
then merges the shards. A resume with other backends or settings than the directory's
`manifest.json` is refused; so is one of a directory whose manifest predates the keys it records
now (frame sampling, window, the grounder's frame preprocessing), naming them and the values runs
used before them: `--accept_old_defaults` resumes it when this run asks for those values.

Each worker (shard x host) writes `records-*.jsonl` (every question, AoTD conversation format
plus trace and verdicts), `cot-*.array_record` (kept CoTs, for Grain), `stats-*.json` (pass rate
of each filter step) and `report-*.html` (the trace viewer on sampled questions) into
`config.out_dir` (a local or mounted folder). Config fields are documented in
`configs/toyworld/cot.py`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import os
import pathlib
from typing import Any, Callable, Iterator

from absl import flags, logging
from ml_collections import config_flags

from aotd_jax.agent import job, programs
from aotd_jax.data import annotations, files, video
from aotd_jax.projects.toyworld import oracle as toyworld_oracle
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.train.config_check import ConfigError
from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/cot/<name>.py[:arg]")
_SHARD_INDEX = flags.DEFINE_integer(
  "shard_index",
  None,
  "Which shard of --num_shards this command processes (default: the "
  "whole dataset, split over the JAX processes when config.use_jax_processes).",
)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "How many shards the dataset is split in.")
_ACCEPT_OLD_DEFAULTS = flags.DEFINE_bool(
  "accept_old_defaults",
  False,
  "Resume an out_dir whose manifest.json predates keys the manifest records now (frame "
  "sampling, window, the grounder's frame preprocessing) when this run's config asks for the "
  "values runs used before them; the defaults are then written into the manifest.",
)


# The projects' data kinds the experts config may name (`ground_truth.kind="toyworld"`).
PLUGINS = (toyworld_oracle.PLUGIN,)


def resolve(name: str) -> Callable:
  """`package.module:attr` (or `package.module.attr`) -> the object."""
  module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
  try:
    return getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"cannot resolve {name!r}: {e}") from None


def few_shot_examples(config) -> str:
  """The few-shot programs `config.examples` names ("" for none): `examples/<name>.txt` of the
  package `config.examples_package` (a project's own prompts, e.g. the toy world's), else of
  the shipped `data/prompts`."""
  if not config.examples:
    return ""
  package = config.get("examples_package", "")
  prompts_dir = pathlib.Path(str(importlib.resources.files(package))) if package else None
  return programs.load_examples(config.examples, prompts_dir)


LLM_CLASSES = {"replay": "Replay", "local": "LocalLlama", "openai": "OpenAIChat"}
# The settings each kind takes from a config (`model` is a server's model name, not a local
# model object).
LLM_TAKES = {
  "replay": {"path", "strict", "default"},
  "local": {
    "model_dir",
    "dtype",
    "max_batch",
    "seed",
    "min_bucket",
    "batching",
    "max_len",
    "steps_per_call",
  },
  "openai": {
    "base_url",
    "model",
    "api_key_env",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_backoff_s",
    "concurrency",
    "extra_body",
  },
}


def set_kwargs(section) -> dict:
  """The section's backend settings that are set (unset: None or "")."""
  kwargs = section.get("kwargs", {}) or {}
  kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
  return {k: v for k, v in kwargs.items() if v is not None and v != ""}


def make_llm(section, role: str = "", shared: dict | None = None) -> Any:
  """An LLM backend from a config section: kind none|replay|local|openai|factory.

  Only the kwargs that are set (not "" or None) reach the backend, so a section lists every
  key for the command line (`--config.program_llm.kwargs.model_dir=...`) and each kind takes
  its own. `role` ("program", "cot", "judge") names the section `config.<role>_llm` in errors.
  With `shared` (a dict kept across the roles), local sections with the same settings get one
  `LocalLlama`: one copy of the weights, and one engine whose rows the roles' prompts share.

  Raises:
    ValueError: an unknown kind, or a set setting that kind does not take (naming the flag).
  """
  kind = section.get("kind", "none")
  kwargs = set_kwargs(section)
  if kind == "none":
    return None
  if kind == "factory":
    return resolve(section.factory)(**kwargs)
  if kind not in LLM_CLASSES:
    raise ValueError(f"llm kind {kind!r}: expected none, factory or one of {sorted(LLM_CLASSES)}")
  from aotd_jax.agent import llm

  cls = getattr(llm, LLM_CLASSES[kind])
  extra = sorted(set(kwargs) - LLM_TAKES[kind])
  what = f"{role + ' ' if role else ''}LLM section (kind {kind!r})"
  if extra:
    flags_ = ", ".join(f"--config.{role}_llm.kwargs.{k}" if role else f"kwargs.{k}" for k in extra)
    raise ValueError(
      f"{what} does not take {', '.join(extra)} (set by {flags_}; clear a "
      "setting with an empty value, e.g. --config.program_llm.kwargs.base_url=)"
    )
  key = (kind, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
  if kind == "local" and shared is not None and key in shared:
    return shared[key]
  try:
    backend = cls(**kwargs)
  except TypeError as e:
    raise ValueError(f"{what} has kwargs {sorted(kwargs)}: {e}") from None
  if kind == "local" and shared is not None:
    shared[key] = backend
  return backend


def video_path(config) -> Callable[[annotations.VideoQA], str | None]:
  """qa -> its video file: `meta["video_path"]` or `<video_id><video_ext>`, under video_dir."""

  def path(qa):
    name = qa.meta.get("video_path") or f"{qa.video_id}{config.data.video_ext}"
    return files.join(config.data.video_dir, name)

  return path


def clip_args(config) -> Callable[[annotations.VideoQA], dict]:
  """The default `make_args`: decodes the question's window of its video into a VideoClip."""
  from experts.clip import clip_args as make_clip_args

  return make_clip_args(
    video_path(config),
    config.max_frames,
    config.get("frame_numbers", "source"),
    config.get("frame_sampling", "ours"),
  )


def load_questions(config) -> list[annotations.VideoQA]:
  """The dataset's questions (the toy world is generated first when asked and missing)."""
  data = config.data
  if not files.exists(data.path) and data.get("toyworld_seed", None) is not None:
    world = os.path.dirname(data.path)
    logging.info("generating the toy world in %s", world)
    toyworld.generate_world(world, seed=data.toyworld_seed, num_clips=data.toyworld_clips)
  read_kwargs = {
    k: v for k, v in dict(data.get("read_kwargs", {}) or {}).items() if v is not None and v != ""
  }
  try:
    questions = list(annotations.read(data.format, data.path, **read_kwargs))
  except annotations.AnnotationError as e:
    map_path = read_kwargs.get("map_path")
    if map_path and str(e).startswith(f"{map_path}:"):  # say which key named the file
      raise annotations.AnnotationError(
        f"{e} (NExT-QA's video map: the config's map=, data.read_kwargs.map_path)"
      ) from None
    raise
  return questions[: config.max_questions] if config.max_questions else questions


IDENTITY_KEYS = (
  "examples",
  "program_source",
  "gold_program_key",
  "logic_judge",
  "judge_parse",
  "rewrite_prompt",
  "rewrite_fallback",
  "max_frames",
  "frame_numbers",
  "frame_sampling",
  "max_new_tokens",
  "temperature",
  "timeout_s",
  "tools_factory",
  "make_args",
)


def provenance(config) -> tuple[dict, dict, dict]:
  """(roles, identity, info) for `aotd_jax.agent.manifest`: every backend the run uses, the
  settings that decide what a record says, and those recorded that do not (batching)."""
  from aotd_jax.agent import manifest

  if config.tools_factory == "experts:make_tools":
    from experts import registry

    roles = registry.describe(
      config.experts, full_hash=config.get("manifest_full_hash", False), plugins=PLUGINS
    )
    info = {"batching": registry.batching(config.experts)}
  else:
    roles, info = {"tools_factory": {"kind": config.tools_factory}}, {}
  for role in ("program_llm", "cot_llm", "judge_llm"):
    roles[role] = manifest.llm_role(config.get(role))
  if config.program_source == "gold":
    roles["program_llm"] = {"kind": "gold", "key": config.gold_program_key}
  data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
  identity = {"data": data, **{k: config.get(k) for k in IDENTITY_KEYS}}
  return roles, identity, info


def missing_inputs(config) -> list[str]:
  """What the run reads that does not exist: the videos directory, the experts' checkpoints
  (`experts.registry.missing_checkpoints`), local LLM directories and replay files; [] when
  everything is there. Checked before the manifest is written: a mistyped path must not leave
  a manifest in `out_dir` that names it (a rerun with the path fixed would be refused)."""
  missing = []
  video_dir = config.data.get("video_dir", "")
  if video_dir and not files.isdir(video_dir):
    missing.append(f"data.video_dir={video_dir} (the videos)")
  if config.tools_factory == "experts:make_tools":
    from experts import registry

    missing += [f"experts.{m}" for m in registry.missing_checkpoints(config.experts)]
  for role in ("program_llm", "cot_llm", "judge_llm"):
    section = config.get(role) or {}
    kwargs = section.get("kwargs") or {}
    key = {"local": "model_dir", "replay": "path"}.get(section.get("kind"))
    if key and kwargs.get(key) and not files.exists(kwargs[key]):
      missing.append(f"{role}.kwargs.{key}={kwargs[key]} ({section.get('kind')})")
  return missing


def missing_videos(config, questions) -> str:
  """The error when none of the first `video.VIDEOS_CHECKED` distinct videos of `questions`
  exists (the default `make_args` decodes them from `data.video_dir`: every question would
  fail at its video after its program was written, and a rerun would resume past those
  failed records); "" otherwise, a few missing ones being the job's to record as failed."""
  if config.make_args or not questions:
    return ""
  path_of = video_path(config)
  paths, missing = video.first_videos(path_of(qa) for qa in questions)
  if not paths or len(missing) < len(paths):
    return ""
  return (
    f"data.video_dir={config.data.video_dir}: none of the first {len(paths)} videos of this "
    f"shard's questions exists (e.g. {paths[0]}); give videos= the folder that holds them in "
    f"the layout docs/data.md gives for the format{_nextqa_map_hint(config.data)}"
  )


def _nextqa_map_hint(data) -> str:
  """For NExT-QA read without its video map (no `map=`, none beside `ann=`): the videos were
  looked for as `<video>.mp4`, not in NExTVideo's `<folder>/<video>.mp4`; the fix is `map=`."""
  if data.get("format") != "nextqa" or (data.get("read_kwargs") or {}).get("map_path"):
    return ""
  beside = os.path.join(os.path.dirname(data.path), "map_vid_vidorID.json")
  if files.exists(beside):
    return ""
  return (
    f", or, for NExTVideo's <folder>/<video>.mp4, give map= its map_vid_vidorID.json (there is "
    f"none beside ann={data.path}, so the videos were looked for as <video>.mp4)"
  )


def pipeline_kwargs(config) -> dict:
  """`CotJob`'s pipeline settings from `config.pipeline` (absent: one batch at a time)."""
  section = config.get("pipeline", None)
  if section is None:
    return {"pipeline": False}
  return {
    "pipeline": bool(section.enabled),
    "max_batches_in_flight": int(section.max_batches_in_flight),
    "decode_workers": int(section.decode_workers),
    "llm_workers": int(section.get("llm_workers", 1)),
  }


def worker(config, shard_index: int | None, num_shards: int | None) -> tuple[int, int, int, int]:
  """(shard_index, num_shards, process_index, process_count) of this command.

  Without --shard_index/--num_shards the dataset is one shard; with `config.use_jax_processes`
  it is split over the JAX processes (`config.distributed=True` first calls
  `jax.distributed.initialize()`, as on a pod), each writing its own `*-0000<i>-of-0000<n>`.

  Raises:
    ValueError: only one of --shard_index and --num_shards is given.
  """
  if (shard_index is None) != (num_shards is None):
    raise ValueError(
      "--shard_index and --num_shards go together (or neither: one shard per JAX process)"
    )
  process_index, process_count = 0, 1
  if config.get("use_jax_processes", True):
    from aotd_jax import sharding

    sharding.maybe_initialize_distributed(config)
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  if shard_index is None:
    shard_index, num_shards = 0, 1
  return shard_index, num_shards, process_index, process_count


@contextlib.contextmanager
def open_job(config, manifest: str | None) -> Iterator[tuple[job.CotJob, Any]]:
  """The job this launcher runs for `config`: yields (the `CotJob`, the experts' `Toolbox` or
  None for another `tools_factory`) with the sandbox pool open, closed on exit. `manifest`: the
  records' `manifest.json#<id>` reference (`manifest.open_manifest`). The experts' models load
  here (a model loaded for two roles once); with `experts.coalesce` their coalesced calls share
  one device scheduler, which each program's execution enters (`program_scope`)."""
  box, scheduler = None, None
  if config.tools_factory == "experts:make_tools":  # the experts resolve projects' kinds
    from experts import registry

    box = registry.make_toolbox(config.experts, plugins=PLUGINS)
    tools, scheduler = box.tools(), box.scheduler  # coalesced experts: one device scheduler
  else:
    tools = resolve(config.tools_factory)(config.experts)
  make_args = resolve(config.make_args)(config) if config.make_args else clip_args(config)
  from aotd_jax.agent.sandbox import Sandbox

  local_llms: dict = {}  # roles with the same local model share one (`make_llm`)
  with Sandbox(num_workers=config.sandbox.num_workers, memory_mb=config.sandbox.memory_mb) as sb:
    yield (
      job.CotJob(
        tools=tools,
        make_args=make_args,
        run_program=sb.run,
        program_llm=make_llm(config.program_llm, "program", local_llms),
        cot_llm=make_llm(config.cot_llm, "cot", local_llms),
        judge_llm=make_llm(config.judge_llm, "judge", local_llms),
        program_source=config.program_source,
        gold_program_key=config.gold_program_key,
        logic_judge=config.logic_judge,
        judge_parse=config.get("judge_parse", "lenient"),
        rewrite_prompt=config.get("rewrite_prompt", "ours"),
        rewrite_fallback=config.get("rewrite_fallback", "verbaliser"),
        examples=few_shot_examples(config),
        batch_size=config.batch_size,
        num_threads=config.sandbox.num_workers,
        timeout_s=config.timeout_s,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        video_path=video_path(config),
        video_dir=config.data.get("video_dir", ""),
        manifest=manifest,
        fail_fast_min=config.get("fail_fast_min", 4),
        program_scope=scheduler.program if scheduler is not None else None,
        **pipeline_kwargs(config),
      ),
      box,
    )


def main(argv):
  del argv
  config = _CONFIG.value
  job.check_out_dir(config.out_dir)
  shard_index, num_shards, process_index, process_count = worker(
    config, _SHARD_INDEX.value, _NUM_SHARDS.value
  )
  questions = job.shard(
    load_questions(config),
    shard_index,
    num_shards,
    process_index=process_index,
    process_count=process_count,
  )
  name = job.shard_name(shard_index, num_shards, process_index, process_count)
  try:
    job.check_split(config.out_dir, name)
  except job.JobError as e:
    raise ConfigError(str(e)) from None
  missing = missing_inputs(config)
  missing += [m for m in [missing_videos(config, questions)] if m and not missing]
  if missing:
    raise ConfigError(
      f"not found: {'; '.join(missing)}. Nothing was written; fix the path(s) in the config "
      "string (or flags) and rerun"
    )
  from aotd_jax.agent import manifest

  roles, identity, info = provenance(config)
  try:
    manifest_ref = manifest.open_manifest(
      config.out_dir,
      roles,
      identity,
      config.to_dict(),
      info,
      accept_old_defaults=_ACCEPT_OLD_DEFAULTS.value,
    )
  except manifest.ManifestError as e:
    raise ConfigError(str(e)) from None
  logging.info(
    "vision experts: %s (%s)",
    manifest.vision_summary(roles),
    ", ".join(f"{r}={v.get('kind')}" for r, v in roles.items() if isinstance(v, dict)),
  )
  with open_job(config, manifest_ref) as (cot_job, _):
    paths = job.JobPaths.for_shard(config.out_dir, name)
    stats = cot_job.run(
      questions, paths, label=f"[{name}] ", progress_every_s=config.progress_every_s
    )
  # the agent's seconds per question and peak memory (the paper's efficiency), per shard
  manifest.add_counts(
    config.out_dir,
    name,
    {**stats.to_dict(), "efficiency": job.efficiency(job.RecordLog(paths.records).load())},
  )
  if config.report_samples:
    from aotd_jax.agent import viewer

    report = viewer.render_report(
      job.RecordLog(paths.records).load(),
      os.path.join(config.out_dir, f"report-{name}.html"),
      num_samples=config.report_samples,
      title=f"CoT run {name}",
    )
    logging.info("report: %s", report)
  logging.info("done %s: %s", name, stats.summary())


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
