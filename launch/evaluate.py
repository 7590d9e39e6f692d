r"""Evaluate a student the way the paper does; every number comes from per-question outputs.

  python -m launch.evaluate --student=W/checkpoints --tokenizer=TOK_DIR \
      --format=star --annotations=STAR_val.json --video_root=VIDEOS --num_frames=32 \
      [--mode=answer|rationale] [--scoring=generate|likelihood|both] \
      [--parse=official|mvbench|ours] [--limit=200] [--out=W/eval.json]
  python -m launch.evaluate --rescore=W/eval.json --format=star --annotations=STAR_val.json \
      [--parse=ours] [--judge_replay=W/judge.jsonl]        # re-score a run, no student

NExT-QA: `--format=nextqa --annotations=val.csv --map=map_vid_vidorID.json` (the video-id map;
default: the map beside the CSV) `--video_root=NExTVideo`.

`--student` is a Hugging Face directory or an Orbax checkpoint directory written by
`launch.train` (its latest step). For the latter, `--tokenizer`, `--num_frames`,
`--prompt_format`, `--answer_style`, `--window` and `--frame_sampling` default to what the run
trained with (its saved `config.data`: `tokenizer`, `num_frames`, `prompt_format`,
`answer_style`, `window`, `frame_sampling`; a run whose config has no `window` /
`frame_sampling` trained with `question` / `ours`), and `--frame_numbers` from how its CoTs'
traces numbered frames (the trainer's `cot_frames.json` beside `checkpoints/`); so do all but
`--tokenizer` for a Hugging Face directory `launch.export` wrote (its `aotd_training.json`). A flag given on the command
line wins (`settings.differs_from_training` lists those that differ, with a warning).
Otherwise (a Hugging Face directory from elsewhere) the frames are the official
release's, as the real configs train on: the whole video (`--window=whole`) at
`linspace(0, vlen, N, endpoint=False)` (`--frame_sampling=official`; docs/fidelity.md, "which
frames"). `settings` in the output says what was used. The run
writes one row per question under `outputs` in `--out` (`output`: the greedy reply;
`likelihood_output`: the closed-set pick; `frame_ids`: the source frame ids of the student's
frames, rationale mode) and computes every number from those rows (`aotd_jax.eval.rescore`),
so `--rescore=` that file gives them again, under another `--parse` or with a judge, without
the student.

Multiple choice (answer mode): accuracy overall and per question type. `--parse` says how a
generated reply picks an option: `official` (the release's `eval_nextqa.py`: the first
character if a letter, else the first of A-E found in the reply, else a random option seeded
by `--seed` and the question id; `random_picks` counts those), `mvbench` (the release's
`eval_mvbench.py` first-word check) or `ours` (a letter or one option's text; unparsable is
wrong). `--scoring=likelihood` is closed-set scoring, the option whose reply ("(B) text", or
"B" with `--answer_style=letter`) the student finds most likely; `both` reports it under
"likelihood" next to the generated result.

Open-ended (AGQA, ActivityNet-QA): normalised exact match, and with `--judge_llm=URL` (any
OpenAI-compatible server; the paper: GPT-3.5) or `--judge_replay=` a recording of one, the
judge's accuracy and mean 0-5 score (`open_ended.judge_accuracy`, `judge_score`); its replies
go to `--out` under `judgements` and, with `--judge_record`, to a replayable JSONL.

`--mode=rationale`: the student explains; the grounding of its boxes and windows against
STAR's annotated key frames (`situations`), in the frame numbers it was trained to name
(`--frame_numbers=sampled`: its own frames 0..N-1, the real CoT configs'; `source`: source
frame ids): box IoU and window IoU, the paper's grounding figure
(`aotd_jax/eval/star_grounding.py`). The paper's efficiency: each row carries its question's
`seconds` (its share of its batch's wall time) and generated `new_tokens`
(`likelihood_seconds` for the closed-set pick), and `efficiency` reports their means (and the
median seconds: the first batch compiles) with the run's peak memory (the device's peak where
the backend reports it, else the host's peak RSS). docs/evaluation.md maps each number of the
paper's main table and grounding figure to its command and key. A bad flag value stops with
one line naming the flag (exit 2).

Before the student is loaded, every question's video is looked up under `--video_root` (each
format's layout: docs/data.md); missing ones stop the run naming how many and the first, or,
with `--missing_videos=skip`, are left out and listed in the output's `missing_videos` (and
stay out under `--rescore`). Multiple-choice questions without one correct option (CLEVRER's
with several) are left out and counted (`left_out_no_single_answer`). `--out`'s folder is made
first, so the rows are not lost at the end of a run.

While it runs, each batch's rows are appended to `<out>.rows.jsonl` (`evaluate_batches`): a
stop, crash or preemption keeps them, and the same command again answers only the questions
left (a rerun with other settings, or after the weights at the `--student` path changed,
into that `--out` is refused). A video that is there but
does not decode stops the run naming the file and question, or, with `--missing_videos=skip`,
leaves the question out, listed under `missing_videos` (`undecodable`: qid -> why).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging

from aotd_jax import hf
from aotd_jax.data import annotations, files, video_processing
from aotd_jax.eval import mc_parse, open_ended, rescore
from aotd_jax.eval import student as student_eval
from aotd_jax.train import cot_frames, data as train_data
from aotd_jax.train.config_check import ConfigError
from launch import cli

# beside --out, the rows as they are produced (one JSON line each; see `evaluate_batches`)
ROWS_SUFFIX = ".rows.jsonl"
# beside --out, the open-ended judge's judgements as they come (`open_ended.JudgeLog`)
JUDGED_SUFFIX = ".judged.jsonl"

_STUDENT = flags.DEFINE_string("student", None, "HF directory or Orbax checkpoint directory.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer directory (default: --student).")
_FORMAT = flags.DEFINE_enum("format", "star", list(annotations.FORMATS), "Annotation format.")
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "Annotation file.")
_VIDEO_ROOT = flags.DEFINE_string("video_root", "", "Directory of the videos.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
_MODE = flags.DEFINE_enum("mode", "answer", list(student_eval.MODES), "Answer or rationale mode.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate the first N questions (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Questions per generate call.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 0, "0: 16 in answer mode, 256 in rationale mode.")
_OUT = flags.DEFINE_string("out", "", "Write the results (and outputs) as JSON here.")
_FRAME_NUMBERS = flags.DEFINE_enum(
  "frame_numbers",
  "sampled",
  ["sampled", "source"],
  "How the student's rationales number frames (the CoT job's config.frame_numbers).",
)
_PROMPT_FORMAT = flags.DEFINE_enum(
  "prompt_format",
  "plain",
  ["plain", "official"],
  "The prompt format the student was trained with (config.data.prompt_format; lnv7b: official).",
)
_MAP = flags.DEFINE_string(
  "map",
  "",
  "NExT-QA video-id map (map_vid_vidorID.json; "
  "--format=nextqa only; default: the map beside the CSV).",
)
_SCORING = flags.DEFINE_enum(
  "scoring",
  "generate",
  ["generate", "likelihood", "both"],
  "Multiple choice: parse the generated reply, pick the most likely option, or both.",
)
_ANSWER_STYLE = flags.DEFINE_enum(
  "answer_style",
  "letter_text",
  ["letter_text", "letter"],
  "The QA target the student was trained with "
  "(config.data.answer_style; lnv7b: letter); likelihood scoring.",
)
_PARSE = flags.DEFINE_enum(
  "parse",
  "official",
  list(mc_parse.PARSES),
  "How a generated reply picks an option (answer mode): official "
  "(eval_nextqa.py: first letter, any letter, else a seeded random "
  "option), mvbench (eval_mvbench.py's first-word check) or ours "
  "(letter or option text; unparsable = wrong).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of --parse=official's random picks.")
_WINDOW = flags.DEFINE_enum(
  "window",
  "whole",
  list(annotations.WINDOWS),
  "Frames from the whole video (the official release's; the real configs') or the question's "
  "window (STAR's start/end); as the student was trained (config.data.window).",
)
_FRAME_SAMPLING = flags.DEFINE_enum(
  "frame_sampling",
  "official",
  list(video_processing.FRAME_SAMPLINGS),
  "Which N frames: official (the release's linspace(0, vlen, N, endpoint=False); the real "
  "configs') or ours (both ends taken); as the student was trained (config.data.frame_sampling).",
)
_RESCORE = flags.DEFINE_string(
  "rescore",
  "",
  "Re-score the per-question outputs of an earlier --out file instead of running a student.",
)
_JUDGE_LLM = flags.DEFINE_string(
  "judge_llm",
  "",
  "OpenAI-compatible base URL of the judge of open-ended answers (the paper: GPT-3.5).",
)
_JUDGE_MODEL = flags.DEFINE_string("judge_model", "gpt-3.5-turbo", "Served judge model name.")
_JUDGE_API_KEY_ENV = flags.DEFINE_string(
  "judge_api_key_env", "OPENAI_API_KEY", "Environment variable holding the judge's API key."
)
_JUDGE_REPLAY = flags.DEFINE_string(
  "judge_replay",
  "",
  "Replay judge replies recorded with --judge_record instead of calling a judge.",
)
_JUDGE_RECORD = flags.DEFINE_string("judge_record", "", "Append every judge reply to this JSONL.")
_DTYPE = flags.DEFINE_enum(
  "dtype",
  "float32",
  ["float32", "bfloat16"],
  "The student's weights and compute: float32 (exact; a 7B student takes ~30 GB) or "
  "bfloat16 (half that; replies and picks can differ from float32's).",
)
_MISSING_VIDEOS = flags.DEFINE_enum(
  "missing_videos",
  "stop",
  ["stop", "skip"],
  "A question whose video is not under --video_root: stop before the student is loaded, "
  "naming them, or leave it out (listed in the output's missing_videos).",
)
flags.mark_flags_as_required(["annotations"])
flags.register_validator("num_frames", lambda v: v >= 1, "--num_frames must be >= 1")
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("limit", lambda v: v >= 0, "--limit must be >= 0 (0: all)")
flags.register_validator("max_new_tokens", lambda v: v >= 0, "--max_new_tokens must be >= 0")


# Flags a training checkpoint's saved config gives when the command line leaves them out:
# flag -> key of the run's `config.data`.
TRAINED_WITH = {
  "tokenizer": "tokenizer",
  "num_frames": "num_frames",
  "prompt_format": "prompt_format",
  "answer_style": "answer_style",
  "window": "window",
  "frame_sampling": "frame_sampling",
  "frame_numbers": "frame_numbers",  # the CoTs' (workdir/cot_frames.json), not config.data's
}


def training_data_config(path: str) -> dict:
  """`config.data` of the `launch.train` run whose Orbax checkpoint directory is `path` (its
  latest step's saved config), or what `launch.export` recorded of it in a Hugging Face
  directory (`aotd_training.json`); {} for a directory neither wrote."""
  from aotd_jax.hf import orbax_io
  from aotd_jax.train.checkpoint import Checkpointer

  if files.isfile(files.join(path, "config.json")):
    recorded = files.join(path, train_data.TRAINED_INPUTS_FILE)
    if not files.isfile(recorded):
      return {}
    try:
      data = json.loads(files.read_text(recorded)).get("data")
    except (ValueError, AttributeError) as e:
      raise ConfigError(
        f"--student: {recorded} is not the JSON launch.export writes ({e})"
      ) from None
    return data if isinstance(data, dict) else {}
  if not files.isfile(files.join(path, orbax_io.HF_CONFIG)):
    return {}
  checkpointer = Checkpointer(path)
  try:
    config = checkpointer.restore_meta().get("config")
  except FileNotFoundError:
    return {}
  finally:
    checkpointer.close()
  data = config.get("data") if isinstance(config, dict) else None
  data = dict(data) if isinstance(data, dict) else {}
  # the trainer's report of its CoTs, beside `checkpoints/`: how their traces number frames
  numbering = cot_frames.frame_numbers(
    cot_frames.read_report(os.path.dirname(path.rstrip("/"))) or {}
  )
  if data and numbering:
    data["frame_numbers"] = numbering
  return data


def _trained_value(data: dict, key: str):
  """The training config's `key`; the trainer's default (`DATA_DEFAULTS`) when a config that
  exists leaves it out; None when there is no training config."""
  value = data.get(key)
  if value is None and data:
    value = train_data.DATA_DEFAULTS.get(key)
  return value


def defaults_from_training(data: dict) -> list[str]:
  """Sets each `TRAINED_WITH` flag the command line left out to the training config's value;
  returns them as `--flag=value` (a key the config leaves out: the trainer's default,
  `aotd_jax.train.data.DATA_DEFAULTS`). A saved value the flag does not take is a ConfigError."""
  taken = []
  for flag, key in TRAINED_WITH.items():
    value = _trained_value(data, key)
    if flags.FLAGS[flag].present or value is None or value == "":
      continue
    try:
      flags.FLAGS[flag].parse(str(value))
    except flags.IllegalFlagValueError as e:
      raise ConfigError(
        f"--student: its training config's data.{key}={value!r} is not a valid --{flag} ({e})"
      ) from e
    taken.append(f"--{flag}={value}")
  return taken


def differences_from_training(data: dict) -> list[str]:
  """The `TRAINED_WITH` flags (the tokenizer aside) given on the command line with another
  value than the student was trained with: `--flag=value (trained with X)`."""
  out = []
  for flag, key in TRAINED_WITH.items():
    value = _trained_value(data, key)
    if flag == "tokenizer" or not flags.FLAGS[flag].present or value is None or value == "":
      continue
    if str(flags.FLAGS[flag].value) != str(value):
      out.append(f"--{flag}={flags.FLAGS[flag].value} (trained with {value})")
  return out


# a directory holding any of these has a tokenizer AutoTokenizer can load
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_tokenizer() -> None:
  """A ConfigError, before the student is loaded, when the tokenizer directory (--tokenizer,
  else --student) holds no tokenizer: a folder of weights alone (an Orbax copy made before
  `aotd_jax.hf convert` kept the tokenizer) ended in a transformers traceback once the student
  was loaded."""
  path = _TOKENIZER.value or _STUDENT.value
  if any(files.isfile(files.join(path, name)) for name in TOKENIZER_FILES):
    return
  flag = "--tokenizer" if _TOKENIZER.value else "--student"
  raise ConfigError(
    f"{flag}={path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); give "
    "--tokenizer=<the Hugging Face directory the student came from>"
  )


def load_student(path: str, dtype: str = "float32"):
  """A student from a HF directory or an Orbax checkpoint directory (latest step), its weights
  and compute in `dtype`."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return hf.from_pretrained(path, dtype=dtype)
  from aotd_jax.hf import orbax_io

  return orbax_io.restore_model(path, dtype=dtype)


def student_weights(path: str) -> list:
  """What identifies the weights a `--student` path holds now: [file, mtime, size] of a HF
  directory's config and safetensors, or the latest step of an Orbax checkpoint directory and
  [file, mtime, size] of that step's model files. Retraining or re-exporting into the same path
  changes it, so a rerun into the same --out does not resume the old weights' rows."""
  if files.isfile(files.join(path, "config.json")):
    names = [files.join(path, "config.json"), *files.glob(path, "*.safetensors")]
    return [[os.path.basename(n), *files.stat_key(n)] for n in names]
  names = (os.path.basename(p.rstrip("/")) for p in files.glob(path, "*"))
  steps = sorted(int(n) for n in names if n.isdigit())
  if not steps:
    return []  # not a checkpoint: loading the student names the path
  model = files.join(files.join(path, str(steps[-1])), "model")
  return [steps[-1]] + [
    [os.path.basename(n), *files.stat_key(n)] for n in files.glob(model, "*") if files.isfile(n)
  ]


def read_records(
  fmt: str, path: str, map_path: str = "", window: str = "question", video_root: str = ""
):
  """The evaluation records; `map_path` is NExT-QA's video map (ConfigError for another format),
  `window` `annotations.read`'s (`--window`); ActivityNet-QA's videos are looked for under
  `video_root` in each of its containers."""
  kw = {}
  if map_path:
    if fmt != "nextqa":
      raise ConfigError(f"--map={map_path} is NExT-QA's video map; --format is {fmt!r}")
    if not files.exists(map_path):
      raise ConfigError(f"--map={map_path}: no such file")
    kw["map_path"] = map_path
  records = annotations.read(fmt, path, window=window, **kw)
  if fmt == "activitynet_qa":  # its videos in whichever container they came in
    from aotd_jax.data import annotations_formats

    annotations_formats.locate_activitynet_videos(records, video_root)
  return records


def find_videos(records) -> dict[str, str]:
  """{qid: video path} of the questions whose video file is not under --video_root (each
  distinct path looked up once, 32 at a time: on a bucket each look-up is a request)."""
  import concurrent.futures

  paths = {r.qid: student_eval.video_file(r, _VIDEO_ROOT.value, ".mp4") for r in records}
  # a folder of frames is read where the reader gives its rate (MVBench's TVQA clips)
  folders = {paths[r.qid] for r in records if r.meta.get("frame_folder_fps")}

  def there(path: str) -> bool:
    return files.isfile(path) or (path in folders and files.isdir(path))

  unique = list(dict.fromkeys(paths.values()))
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    found = dict(zip(unique, pool.map(there, unique)))
  return {qid: path for qid, path in paths.items() if not found[path]}


def drop_missing_videos(records) -> tuple[list, dict]:
  """(the records whose video is there, the output's `missing_videos`) under
  --missing_videos; a ConfigError naming the first ones with `stop` (the default), before the
  student is loaded: a run would otherwise end at the first of them, its rows unwritten."""
  missing = find_videos(records)
  if not missing:
    return list(records), {}
  qid, path = next(iter(missing.items()))
  folders = [p for p in dict.fromkeys(missing.values()) if files.isdir(p)]
  note = (
    f" ({len(folders)} of them folders, e.g. {folders[0]}, read as frames only for a task "
    "whose reader gives their rate)"
    if folders
    else ""
  )
  if _MISSING_VIDEOS.value == "stop":
    raise ConfigError(
      f"--video_root={_VIDEO_ROOT.value}: the videos of {len(missing)} of the {len(records)} "
      f"questions are not there (e.g. {path} for {qid}){note}; docs/data.md gives each "
      "format's layout; --missing_videos=skip leaves those questions out"
    )
  logging.warning(
    "--missing_videos=skip: %d of %d questions left out, their videos not there (e.g. %s)",
    len(missing),
    len(records),
    path,
  )
  kept = [r for r in records if r.qid not in missing]
  return kept, {"video_root": _VIDEO_ROOT.value, "count": len(missing), "qids": sorted(missing)}


def frame_ids(record) -> list[int]:
  """The source frame ids of the student's frames of a STAR question (for grounding)."""
  from aotd_jax.eval import star_grounding as sg

  ids = sg.student_frame_ids(
    student_eval.video_file(record, _VIDEO_ROOT.value, ".mp4"),
    _NUM_FRAMES.value,
    record.start,
    record.end,
    _FRAME_SAMPLING.value,
  )
  return [int(i) for i in ids]


def make_judge():
  """The open-ended judge from the --judge_* flags, or None."""
  from aotd_jax.agent import llm as llm_lib

  if _JUDGE_LLM.value and _JUDGE_REPLAY.value:
    raise ConfigError("give one of --judge_llm (a judge server) and --judge_replay (a recording)")
  if _JUDGE_REPLAY.value:
    judge = llm_lib.Replay(_JUDGE_REPLAY.value)
  elif _JUDGE_LLM.value:
    judge = llm_lib.OpenAIChat(
      _JUDGE_LLM.value, _JUDGE_MODEL.value, api_key_env=_JUDGE_API_KEY_ENV.value
    )
  else:
    return None
  return llm_lib.Recording(judge, _JUDGE_RECORD.value) if _JUDGE_RECORD.value else judge


def load_model() -> tuple:
  """(model, tokenizer, the keyword arguments every batch's call takes) of --student."""
  from aotd_jax.hf import processor_files

  model = load_student(_STUDENT.value, _DTYPE.value)
  tokenizer = hf.load_tokenizer(_TOKENIZER.value or _STUDENT.value)
  common = dict(
    # the checkpoint's processor files (an export's, or those the trainer writes beside its
    # checkpoints), else the released processor's
    normalization=processor_files.pixel_normalization(model.config, _STUDENT.value),
    video_root=_VIDEO_ROOT.value,
    num_frames=_NUM_FRAMES.value,
    batch_size=_BATCH.value,
    prompt_format=_PROMPT_FORMAT.value,
    frame_sampling=_FRAME_SAMPLING.value,
  )
  return model, tokenizer, common


def run_model(student: tuple, records, scoring: str) -> tuple[list[dict], dict]:
  """(one row per question, the efficiency of each scoring) of `records` (one batch) from the
  `student` `load_model` gave. A video that does not decode raises `VideoDecodeError`."""
  model, tokenizer, common = student
  rows = [{"qid": r.qid} for r in records]
  eff = {}
  if scoring in ("generate", "both"):
    max_new = _MAX_NEW.value or (16 if _MODE.value == "answer" else 256)
    run = student_eval.run_student(
      model, tokenizer, records, mode=_MODE.value, max_new_tokens=max_new, **common
    )
    eff["output"] = run.efficiency.to_dict()
    for row, text, secs, tokens in zip(rows, run.outputs, run.seconds, run.new_tokens):
      row.update(output=text, seconds=round(secs, 6), new_tokens=tokens)
    if _MODE.value == "rationale":
      for row, r in zip(rows, records):
        if r.meta.get("situations"):
          row["frame_ids"] = frame_ids(r)
  if scoring in ("likelihood", "both"):
    choice = student_eval.choose_by_likelihood(
      model, tokenizer, records, answer_style=_ANSWER_STYLE.value, **common
    )
    eff["likelihood_output"] = choice.efficiency.to_dict()
    for row, text, secs in zip(rows, choice.outputs, choice.seconds):
      row.update(likelihood_output=text, likelihood_seconds=round(secs, 6))
  return rows, eff


def merge_efficiency(total: dict, part: dict) -> dict:
  """`total` with one batch's efficiencies (`Efficiency.to_dict` per scoring) added: seconds
  and questions summed, the peak memory the larger."""
  out = dict(total)
  for key, e in part.items():
    t = out.get(key)
    if t is None:
      out[key] = dict(e)
      continue
    seconds, questions = t["seconds"] + e["seconds"], t["questions"] + e["questions"]
    out[key] = {
      **t,
      "seconds": seconds,
      "questions": questions,
      "seconds_per_question": seconds / questions if questions else 0.0,
      "peak_mb": max(t["peak_mb"], e["peak_mb"]),
    }
  return out


def rows_file(out: str) -> str:
  """The file beside `--out` that a run appends its rows to, batch by batch."""
  return out + ROWS_SUFFIX


def read_row_log(path: str, run: dict) -> tuple[dict, dict, dict]:
  """({qid: row}, {qid: why its video did not decode}, the efficiencies so far) of an earlier
  run's row log `path` (nothing when there is none). A ConfigError when it was written by a
  run with other `run` settings (its rows would be mixed with these)."""
  if not files.isfile(path):
    return {}, {}, {}
  done, undecodable, eff = {}, {}, {}
  for n, line in enumerate(files.read_text(path).splitlines()):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except ValueError:  # a line cut by the crash that ended the run: the batch runs again
      logging.warning("%s: line %d is not JSON (a write cut short); ignored", path, n + 1)
      continue
    if "run" in entry:
      if entry["run"] != run:
        differ = sorted(k for k in {*run, *entry["run"]} if run.get(k) != entry["run"].get(k))
        raise ConfigError(
          f"--out: {path} holds the rows of a run with other settings ({', '.join(differ)}); "
          "give another --out, or remove it to start again"
        )
    elif "efficiencies" in entry:
      eff = merge_efficiency(eff, entry["efficiencies"])
    elif "undecodable" in entry:
      undecodable[str(entry["qid"])] = entry["undecodable"]
    elif "qid" in entry:
      done[str(entry["qid"])] = entry
  return done, undecodable, eff


def append_lines(path: str, entries: list[dict]) -> None:
  """Appends `entries` to the row log, one JSON line each (`files.append_text`: flushed; on a
  bucket the file is written again whole)."""
  files.append_text(path, "".join(json.dumps(e) + "\n" for e in entries))


def evaluate_batches(records, scoring: str, log: str, run: dict) -> tuple[list[dict], dict, dict]:
  """(rows in the order of `records`, the merged efficiencies, {qid: why}) of the questions
  whose video decodes, one batch of --batch_size at a time, each batch's rows appended to the
  row log `log` (none when ""): a crash keeps them, and a rerun with the same log answers only
  the questions it lacks (those whose video did not decode are tried again). A video that
  does not decode stops the run with one line (--missing_videos=stop) or leaves its question
  out (skip)."""
  from aotd_jax.data.video import VideoDecodeError

  done, earlier, eff = read_row_log(log, run) if log else ({}, {}, {})
  if done or earlier:
    logging.info(
      "%s: %d questions answered by an earlier run; resuming (%d whose video did not decode "
      "are tried again: the file may have been replaced)",
      log,
      len(done),
      len(set(earlier) - set(done)),
    )
  undecodable: dict[str, str] = {}
  todo = [r for r in records if str(r.qid) not in done]
  if log and not files.isfile(log):
    append_lines(log, [{"run": run}])
  student = load_model() if todo else None
  for i in range(0, len(todo), _BATCH.value):
    chunk, lines = todo[i : i + _BATCH.value], []
    while chunk:
      try:
        rows, part = run_model(student, chunk, scoring)
        break
      except VideoDecodeError as e:
        bad = [r for r in chunk if student_eval.video_file(r, _VIDEO_ROOT.value) == e.path]
        if not bad:
          raise
        if _MISSING_VIDEOS.value == "stop":
          kept = (
            f"the {len(done)} rows so far are in {log}, and a rerun with the same --out resumes"
            if log
            else "no --out: the rows so far are not kept"
          )
          raise ConfigError(
            f"{e.path} (question {bad[0].qid}) does not decode: {e.why}; {kept}; "
            "--missing_videos=skip leaves such questions out"
          ) from e
        logging.warning(
          "--missing_videos=skip: %s does not decode (%s); %d questions left out",
          e.path,
          e.why,
          len(bad),
        )
        for r in bad:
          undecodable[str(r.qid)] = f"{e.path}: {e.why}"
          lines.append({"qid": r.qid, "undecodable": undecodable[str(r.qid)]})
        chunk = [r for r in chunk if str(r.qid) not in undecodable]
    else:
      rows, part = [], {}
    for row in rows:
      done[str(row["qid"])] = row
    eff = merge_efficiency(eff, part)
    if log:
      append_lines(log, lines + rows + ([{"efficiencies": part}] if part else []))
  rows = [done[str(r.qid)] for r in records if str(r.qid) in done]
  return rows, eff, undecodable


def main(argv):
  del argv
  scoring = _SCORING.value
  if scoring != "generate" and _MODE.value != "answer":
    raise ConfigError(
      f"--scoring={scoring} scores answers; --mode={_MODE.value} needs --scoring=generate"
    )
  if not _RESCORE.value and not _STUDENT.value:
    raise ConfigError("--student is required (or --rescore=EVAL_JSON to re-score a run)")
  if _OUT.value:  # where the rows go, made before hours of evaluation rather than after
    cli.out_file(_OUT.value)
  from_training, differs = [], []
  if not _RESCORE.value:
    trained = training_data_config(_STUDENT.value)
    from_training = defaults_from_training(trained)
    if from_training:
      logging.info("from the student's training config: %s", " ".join(from_training))
    differs = differences_from_training(trained)
    if differs:
      logging.warning("evaluating on other inputs than the student trained on: %s", differs)
  records = read_records(
    _FORMAT.value, _ANNOTATIONS.value, _MAP.value, _WINDOW.value, _VIDEO_ROOT.value
  )
  if not records:  # a test split without answers, or another format's file
    report = records.report
    why = f" (first: {report.messages[0]})" if report.messages else ""
    raise ConfigError(
      f"--annotations={_ANNOTATIONS.value}: no question to evaluate: {report.summary()}{why}"
    )
  if _LIMIT.value:
    records = records[: _LIMIT.value]
  left_out = [r.qid for r in records if r.choices and r.answer_index is None]
  if left_out:  # CLEVRER's questions with several correct choices: no one option to score
    logging.warning(
      "%d multiple-choice questions without one correct option left out (e.g. %s)",
      len(left_out),
      left_out[0],
    )
    records = [r for r in records if not (r.choices and r.answer_index is None)]
  missing_videos = {}
  if _RESCORE.value:  # the questions the run left out for their videos (--missing_videos=skip)
    try:
      skipped = json.loads(files.read_text(_RESCORE.value)).get("missing_videos") or {}
    except (OSError, ValueError, AttributeError):
      skipped = {}  # read_rows names what is wrong with the file
    gone = set(skipped.get("qids", ()))
    records, missing_videos = [r for r in records if r.qid not in gone], skipped
  else:
    records, missing_videos = drop_missing_videos(records)
  if not records:
    raise ConfigError(f"--annotations={_ANNOTATIONS.value}: no question left to evaluate")
  if scoring != "generate" and not all(r.choices for r in records):
    raise ConfigError(
      f"--scoring={scoring} needs multiple-choice questions; "
      f"{_ANNOTATIONS.value} has open-ended ones (use --scoring=generate)"
    )
  if (_JUDGE_LLM.value or _JUDGE_REPLAY.value) and all(r.choices for r in records):
    raise ConfigError(
      f"--judge_llm/--judge_replay judge open-ended answers; "
      f"{_ANNOTATIONS.value} has only multiple-choice questions"
    )
  if _JUDGE_REPLAY.value and not os.path.isfile(_JUDGE_REPLAY.value):
    raise ConfigError(f"--judge_replay={_JUDGE_REPLAY.value}: no such file")
  judge = make_judge()
  judge_log = None
  # the judged answers kept as they come and reused on a rerun; another judge's file is refused
  # before the student runs
  if judge is not None and _OUT.value:
    about = (
      {"replay": _JUDGE_REPLAY.value}
      if _JUDGE_REPLAY.value
      else {"url": _JUDGE_LLM.value, "model": _JUDGE_MODEL.value}
    )
    judge_log = open_ended.JudgeLog(_OUT.value + JUDGED_SUFFIX, about)
    try:
      judge_log.load()
    except ValueError as e:
      raise ConfigError(f"--out: {e}") from None
  if _RESCORE.value:
    try:
      header, rows = rescore.read_rows(_RESCORE.value, records)
    except ValueError as e:
      raise ConfigError(f"--rescore: {e}") from e
    eff = header.get("efficiencies", {})
    if scoring != "generate" and not any("likelihood_output" in row for row in rows):
      raise ConfigError(
        f"--rescore={_RESCORE.value} has no likelihood outputs; --scoring={scoring} needs them"
      )
    if scoring == "likelihood":
      rows = [
        {k: v for k, v in row.items() if k not in ("output", "seconds", "new_tokens")}
        for row in rows
      ]
    elif scoring == "generate":
      rows = [
        {k: v for k, v in row.items() if k not in ("likelihood_output", "likelihood_seconds")}
        for row in rows
      ]
  else:
    settings = {
      "student": _STUDENT.value,
      "tokenizer": _TOKENIZER.value or _STUDENT.value,
      "dtype": _DTYPE.value,
      "num_frames": _NUM_FRAMES.value,
      "prompt_format": _PROMPT_FORMAT.value,
      "answer_style": _ANSWER_STYLE.value,
      "window": _WINDOW.value,
      "frame_sampling": _FRAME_SAMPLING.value,
      "frame_numbers": _FRAME_NUMBERS.value,
      "from_training_config": from_training,
      "differs_from_training": differs,
    }
    # what a row depends on: a rerun with other values must not resume from these rows
    run = {
      **{
        k: v
        for k, v in settings.items()
        if k not in ("from_training_config", "differs_from_training")
      },
      "student_weights": student_weights(_STUDENT.value),
      "format": _FORMAT.value,
      "annotations": _ANNOTATIONS.value,
      "video_root": _VIDEO_ROOT.value,
      "mode": _MODE.value,
      "scoring": scoring,
      "max_new_tokens": _MAX_NEW.value,
    }
    check_tokenizer()
    rows, eff, undecodable = evaluate_batches(
      records, scoring, rows_file(_OUT.value) if _OUT.value else "", run
    )
    if undecodable:  # listed as missing videos are, so --rescore keeps them out too
      records = [r for r in records if str(r.qid) not in undecodable]
      qids = sorted({*missing_videos.get("qids", ()), *undecodable})
      missing_videos = {
        "video_root": _VIDEO_ROOT.value,
        **missing_videos,
        "count": len(qids),
        "qids": qids,
        "undecodable": dict(sorted(undecodable.items())),
      }
    if not records:
      raise ConfigError(f"--video_root={_VIDEO_ROOT.value}: no question's video decodes")
  judgements: list = []
  try:
    result = rescore.score_rows(
      records,
      rows,
      mode=_MODE.value,
      parse=_PARSE.value,
      seed=_SEED.value,
      frame_numbers=_FRAME_NUMBERS.value,
      judge=judge,
      on_judgements=judgements.extend,
      judge_log=judge_log,
    )
  except ValueError as e:
    if not _RESCORE.value:
      raise
    raise ConfigError(f"--rescore={_RESCORE.value}: {e}") from e
  except Exception as e:  # an LLMError: the judge stopped answering; say what is kept
    llm_http = sys.modules.get("aotd_jax.agent.llm_http")
    if judge is None or llm_http is None or not isinstance(e, llm_http.LLMError):
      raise
    kept = (
      f"the answers judged so far are in {judge_log.path}"
      if judge_log
      else "no --out: the answers judged so far are not kept"
    )
    rows_kept = (
      f"the student's rows are in {rows_file(_OUT.value)}; "
      if not _RESCORE.value and _OUT.value
      else ""
    )
    raise llm_http.LLMError(f"{e}; {rows_kept}{kept}, and the same command resumes") from None
  # Per question (seconds, tokens) from the rows; the run's peak memory from its header.
  if "output" in eff:
    result["efficiency"] = {**eff["output"], **result.get("efficiency", {})}
  if "likelihood_output" in eff:
    part = result["likelihood"] if "likelihood" in result else result
    part["efficiency"] = {**eff["likelihood_output"], **part.get("efficiency", {})}
  result["scoring"] = scoring
  if left_out:
    result["left_out_no_single_answer"] = len(left_out)
  if missing_videos:
    result["missing_videos"] = missing_videos
  if not _RESCORE.value:
    result["settings"] = settings
  print(json.dumps(result, indent=1))
  if _OUT.value:
    out = {**result, "efficiencies": eff, "outputs": rows}
    if judgements:
      out["judgements"] = judgements
    files.write_text(_OUT.value, json.dumps(out, indent=1))


if __name__ == "__main__":
  cli.run(main)
