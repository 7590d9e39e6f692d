"""Parsers for the published VideoQA annotation formats (used by `annotations.read`).

Each `read_<fmt>(path, ctx, **kw)` yields `VideoQA` records; per-record problems raise inside
`ctx.parse(where, fn)`, which reports the file and row / key and skips the record.

Formats (as their datasets publish them):
- star: JSON list of {question_id, question, video_id, start, end, answer,
  choices[{choice_id, choice, choice_program}], question_program, situations}.
- nextqa: CSV `video,frame_count,width,height,question,answer,qid,type,a0..a4`, `answer` the
  choice index; `map_vid_vidorID.json` beside it maps video id -> `"0101/2909445186"`.
- activitynet_qa: `*_q.json` [{video_name, question, question_id}] + `*_a.json`
  [{answer, type, question_id}], joined on `question_id`; open-ended.
- agqa (AGQA 2.0 balanced): JSON dict question key -> {question, answer, video_id, ans_type,
  global, local, semantic, structural, steps, program, sg_grounding, ...}; open-ended.
- clevrer: JSON list of videos {scene_index, video_filename, questions[{question_id,
  question, question_type, program, answer} | {..., choices[{choice_id, choice, program,
  answer: "correct" | "wrong"}]}]}.
- mvbench: per-task JSON list of {video, question, candidates, answer, [start, end]}.
- perception_test: JSON dict video id -> {metadata{video_id, num_frames, frame_rate, ...},
  mc_question[{id, question, options, answer_id, area, reasoning, tag}]}.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Iterable, Iterator

from absl import logging

from aotd_jax.data import files
from aotd_jax.data.annotations import AnnotationError, BadRecord, VideoQA, load_json

_ACTIVITYNET_TYPES = {
  0: "motion",
  1: "spatial",
  2: "temporal",
  3: "yes_no",
  4: "color",
  5: "object",
  6: "location",
  7: "number",
  8: "other",
}


def _text(rec: dict, key: str) -> str:
  value = rec[key]
  if not isinstance(value, str) or not value.strip():
    raise BadRecord(f"field {key!r} must be a non-empty string, got {value!r}")
  return value


def _seconds(value: Any, key: str) -> float | None:
  if value is None or value == "":
    return None
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise BadRecord(f"field {key!r} is not a number of seconds: {value!r}") from None
  if out < 0:
    raise BadRecord(f"field {key!r} is negative: {value!r}")
  return out


def _window(rec: dict) -> tuple[float | None, float | None]:
  start, end = _seconds(rec.get("start"), "start"), _seconds(rec.get("end"), "end")
  if start is not None and end is not None and end < start:
    raise BadRecord(f"window end {end} < start {start}")
  return start, end


def _mc_answer(
  choices: list[str], answer: Any, ctx, what: str = "answer"
) -> tuple[str, int | None]:
  """(answer text, index) from an answer given as text that must be one of `choices`."""
  if answer is None or answer == "":
    if ctx.labelled:
      raise BadRecord(f"no {what} (pass labelled=False to read unlabelled splits)")
    return "", None
  if answer not in choices:
    raise BadRecord(f"{what} {answer!r} is not one of the choices {choices}")
  return answer, choices.index(answer)


def _index_answer(choices: list[str], index: Any, ctx, what: str) -> tuple[str, int | None]:
  """(answer text, index) from an answer given as a choice index."""
  if index is None or index == "":
    if ctx.labelled:
      raise BadRecord(f"no {what} (pass labelled=False to read unlabelled splits)")
    return "", None
  try:
    i = int(index)
  except (TypeError, ValueError):
    raise BadRecord(f"{what} {index!r} is not an integer choice index") from None
  if not 0 <= i < len(choices):
    raise BadRecord(f"{what} {i} out of range for {len(choices)} choices")
  return choices[i], i


def _list_of(data: Any, path: str, what: str) -> list:
  if not isinstance(data, list):
    raise AnnotationError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
  return data


def _dict_of(data: Any, path: str, what: str) -> dict:
  if not isinstance(data, dict):
    raise AnnotationError(f"{path}: expected a JSON object of {what}, got {type(data).__name__}")
  return data


# ---------------------------------------------------------------------------------- STAR


def read_star(path: str, ctx) -> Iterator[VideoQA]:
  """STAR (and the toy world, which writes STAR's format)."""
  data = _list_of(load_json(path), path, "questions")

  def one(rec: dict) -> VideoQA:
    raw = sorted(rec["choices"], key=lambda c: int(c.get("choice_id", 0)))
    choices = [_text(c, "choice") for c in raw]
    if not choices:
      raise BadRecord("empty choices")
    answer, index = _mc_answer(choices, rec.get("answer"), ctx)
    qid = _text(rec, "question_id")
    start, end = _window(rec)
    return VideoQA(
      qid=qid,
      video_id=_text(rec, "video_id"),
      question=_text(rec, "question"),
      choices=choices,
      answer=answer,
      answer_index=index,
      start=start,
      end=end,
      meta={
        "question_type": qid.split("_")[0],
        "question_program": rec.get("question_program"),
        "choice_programs": [c.get("choice_program") for c in raw],
        "situations": rec.get("situations"),
      },
    )

  for i, rec in enumerate(data):
    key = rec.get("question_id", f"#{i}") if isinstance(rec, dict) else f"#{i}"
    yield from ctx.parse(f"{path}[{i}] question_id={key}", lambda rec=rec: one(rec))


# ------------------------------------------------------------------------------- NExT-QA

_NEXTQA_COLUMNS = (
  "video",
  "frame_count",
  "width",
  "height",
  "question",
  "answer",
  "qid",
  "type",
  "a0",
  "a1",
  "a2",
  "a3",
  "a4",
)


def read_nextqa(path: str, ctx, map_path: str | None = None) -> Iterator[VideoQA]:
  """NExT-QA CSV; `map_path` (default: `map_vid_vidorID.json` beside it) gives video paths."""
  if map_path is None:
    beside = os.path.join(os.path.dirname(path), "map_vid_vidorID.json")  # also for gs://
    video_map = load_json(beside) if files.exists(beside) else {}
    if not video_map:
      logging.warning(
        "nextqa: no map_vid_vidorID.json beside %s: its videos are looked for as <video>.mp4 "
        "under the video root, not in NExTVideo's <folder>/<video>.mp4 (give the map: "
        "configs/cot/nextqa.py's map=, launch.evaluate --map, or read_kwargs map_path=)",
        path,
      )
  else:
    video_map = load_json(map_path)
  try:
    text = files.read_text(path)
  except FileNotFoundError as e:
    raise AnnotationError(f"annotation file not found: {path}") from e
  with io.StringIO(text, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(header[: len(_NEXTQA_COLUMNS)]) != _NEXTQA_COLUMNS:
      raise AnnotationError(f"{path}: header {header} is not NExT-QA's {list(_NEXTQA_COLUMNS)}")

    def one(row: list[str]) -> VideoQA:
      if len(row) != len(header):
        raise BadRecord(f"{len(row)} columns, expected {len(header)}")
      rec = dict(zip(header, row))
      choices = [_text(rec, f"a{k}") for k in range(5)]
      answer, index = _index_answer(choices, rec["answer"], ctx, "answer")
      video = _text(rec, "video")
      meta = {
        "type": rec["type"],
        "qid": rec["qid"],
        "frame_count": int(rec["frame_count"]),
        "width": int(rec["width"]),
        "height": int(rec["height"]),
      }
      if video in video_map:
        meta["video_path"] = video_map[video] + ".mp4"
      return VideoQA(
        qid=f"{video}_{_text(rec, 'qid')}",
        video_id=video,
        question=_text(rec, "question"),
        choices=choices,
        answer=answer,
        answer_index=index,
        meta=meta,
      )

    for row in reader:
      if not row:
        continue
      yield from ctx.parse(f"{path}:{reader.line_num}", lambda row=row: one(row))


# ------------------------------------------------------------------------ ActivityNet-QA


def read_activitynet_qa(path: str, ctx, answers_path: str | None = None) -> Iterator[VideoQA]:
  """ActivityNet-QA; `path` is `*_q.json`, answers from `*_a.json` beside it or `answers_path`."""
  if answers_path is None:
    if not path.endswith("_q.json"):
      raise AnnotationError(f"{path}: expected a *_q.json file (or pass answers_path=)")
    answers_path = path[: -len("_q.json")] + "_a.json"
  questions = _list_of(load_json(path), path, "questions")
  answers: dict[str, dict] = {}
  for i, a in enumerate(_list_of(load_json(answers_path), answers_path, "answers")):
    if not isinstance(a, dict) or "question_id" not in a:
      ctx.report.skip(f"{answers_path}[{i}]", "answer entry without question_id")
      continue
    answers[a["question_id"]] = a

  def one(rec: dict) -> VideoQA:
    qid = _text(rec, "question_id")
    a = answers.get(qid)
    if a is None and ctx.labelled:
      raise BadRecord(f"no answer with this question_id in {answers_path}")
    answer = _text(a, "answer") if a is not None else ""
    qtype = a.get("type") if a is not None else None
    name = _text(rec, "video_name")
    return VideoQA(
      qid=qid,
      video_id=name,
      question=_text(rec, "question"),
      choices=[],
      answer=answer,
      meta={
        "type": qtype,
        "type_name": _ACTIVITYNET_TYPES.get(qtype),
        "video_file_stem": f"v_{name}",
      },
    )

  for i, rec in enumerate(questions):
    key = rec.get("question_id", f"#{i}") if isinstance(rec, dict) else f"#{i}"
    yield from ctx.parse(f"{path}[{i}] question_id={key}", lambda rec=rec: one(rec))


# ActivityNet's videos come from YouTube in several containers; `.mp4` first.
ACTIVITYNET_VIDEO_EXTS = (".mp4", ".mkv", ".webm")


def video_file(r: VideoQA, video_root: str = "", video_ext: str = ".mp4") -> str:
  """The path of `r`'s video under `video_root`, as training and evaluation read it (one
  function, so both find the same file): `meta["video_path"]` where the reader or
  `locate_activitynet_videos` set it (NExT-QA's folders, MVBench's tasks, ActivityNet-QA's
  container), else `{meta["video_file_stem"] or video_id}{video_ext}`."""
  stem = r.meta.get("video_file_stem") or r.video_id  # ActivityNet-QA: v_<name>
  return files.join(video_root, r.meta.get("video_path") or f"{stem}{video_ext}")


def activitynet_stems(records: Iterable[VideoQA]) -> set[str]:
  """The `v_<name>` file stems of ActivityNet-QA `records` (what `activitynet_video_files` looks
  for)."""
  return {r.meta["video_file_stem"] for r in records if "video_file_stem" in r.meta}


def activitynet_video_files(stems: set[str], video_root: str) -> dict[str, str]:
  """{`v_<name>` stem: its file name under `video_root`} for the stems whose video is there in
  one of `ACTIVITYNET_VIDEO_EXTS` (the folder is listed once)."""
  if not stems or not files.isdir(video_root):
    return {}
  names = {p.rpartition("/")[2] for p in files.glob(video_root, "v_*")}
  found = {}
  for stem in stems:
    ext = next((e for e in ACTIVITYNET_VIDEO_EXTS if stem + e in names), None)
    if ext is not None:
      found[stem] = stem + ext
  return found


def locate_activitynet_video(r: VideoQA, found: dict[str, str]) -> VideoQA:
  """Sets `r.meta["video_path"]` to its video's file in `found` (`activitynet_video_files`)
  unless the record names one already; returns `r`, changed in place."""
  name = found.get(r.meta.get("video_file_stem"))
  if name is not None and "video_path" not in r.meta:
    r.meta["video_path"] = name
  return r


def locate_activitynet_videos(records: list[VideoQA], video_root: str) -> list[VideoQA]:
  """Sets each ActivityNet-QA record's `meta["video_path"]` to its video's file under
  `video_root` in whichever of `ACTIVITYNET_VIDEO_EXTS` it is (`v_<name>.mkv`, ...), listing
  the folder once; a record whose video is in none keeps the default `v_<name>.mp4` (and is
  reported missing where its video is read). Returns `records`, changed in place."""
  found = activitynet_video_files(activitynet_stems(records), video_root)
  for r in records:
    locate_activitynet_video(r, found)
  return records


# ---------------------------------------------------------------------------------- AGQA

_AGQA_META = (
  "ans_type",
  "global",
  "local",
  "semantic",
  "structural",
  "steps",
  "program",
  "sg_grounding",
  "nl",
  "template",
)


def read_agqa(path: str, ctx) -> Iterator[VideoQA]:
  """AGQA 2.0 (balanced) questions: a dict keyed by question key; open-ended answers."""
  data = _dict_of(load_json(path), path, "questions keyed by question id")

  def one(key: str, rec: dict) -> VideoQA:
    answer = rec.get("answer")
    if (answer is None or answer == "") and ctx.labelled:
      raise BadRecord("no answer (pass labelled=False to read unlabelled splits)")
    return VideoQA(
      qid=str(key),
      video_id=_text(rec, "video_id"),
      question=_text(rec, "question"),
      choices=[],
      answer=str(answer or ""),
      meta={k: rec[k] for k in _AGQA_META if k in rec},
    )

  for key, rec in data.items():
    yield from ctx.parse(f"{path}[{key!r}]", lambda key=key, rec=rec: one(key, rec))


# ------------------------------------------------------------------------------- CLEVRER


def clevrer_video_path(video_file: str) -> str:
  """Where CLEVRER's release puts a video inside its extracted `video_<split>.zip`: folders of
  1000 scenes, `video_10000.mp4` -> `video_10000-11000/video_10000.mp4`."""
  stem = os.path.splitext(video_file)[0]
  try:
    first = int(stem.rpartition("_")[2]) // 1000 * 1000
  except ValueError:
    raise BadRecord(f"video_filename {video_file!r} is not CLEVRER's video_<number>.mp4") from None
  return f"video_{first:05d}-{first + 1000:05d}/{video_file}"


def read_clevrer(path: str, ctx) -> Iterator[VideoQA]:
  """CLEVRER: descriptive questions are open-ended; the others multiple-choice.

  CLEVRER's multiple-choice questions may have several correct choices: `answer` joins the
  correct texts with " | ", `answer_index` is set only when exactly one is correct, and
  `meta["correct"]` holds one bool per choice. `meta["video_path"]` is the video in the
  release's layout (`clevrer_video_path`), under the extracted `video_<split>/` folder.
  """
  data = _list_of(load_json(path), path, "videos")

  def one(video: dict, q: dict) -> VideoQA:
    video_file = _text(video, "video_filename")
    video_id = os.path.splitext(video_file)[0]
    meta = {
      "scene_index": video.get("scene_index"),
      "video_filename": video_file,
      "video_path": clevrer_video_path(video_file),
      "question_type": q.get("question_type"),
      "question_subtype": q.get("question_subtype"),
      "program": q.get("program"),
    }
    qid = f"{video_id}_{q['question_id']}"
    if "choices" not in q:
      answer = q.get("answer")
      if (answer is None or answer == "") and ctx.labelled:
        raise BadRecord("no answer (pass labelled=False to read unlabelled splits)")
      return VideoQA(
        qid=qid,
        video_id=video_id,
        question=_text(q, "question"),
        choices=[],
        answer=str(answer or ""),
        meta=meta,
      )
    raw = sorted(q["choices"], key=lambda c: int(c.get("choice_id", 0)))
    choices = [_text(c, "choice") for c in raw]
    meta["choice_programs"] = [c.get("program") for c in raw]
    labels = [c.get("answer") for c in raw]
    if any(l is None for l in labels):
      if ctx.labelled:
        raise BadRecord("choice without answer (pass labelled=False for unlabelled splits)")
      return VideoQA(
        qid=qid,
        video_id=video_id,
        question=_text(q, "question"),
        choices=choices,
        answer="",
        meta=meta,
      )
    bad = [l for l in labels if l not in ("correct", "wrong")]
    if bad:
      raise BadRecord(f"choice answers must be 'correct' or 'wrong', got {bad}")
    correct = [l == "correct" for l in labels]
    meta["correct"] = correct
    texts = [c for c, ok in zip(choices, correct) if ok]
    index = correct.index(True) if sum(correct) == 1 else None
    return VideoQA(
      qid=qid,
      video_id=video_id,
      question=_text(q, "question"),
      choices=choices,
      answer=" | ".join(texts),
      answer_index=index,
      meta=meta,
    )

  for i, video in enumerate(data):
    if not isinstance(video, dict) or not isinstance(video.get("questions"), list):
      ctx.report.skip(f"{path}[{i}]", "video entry without a 'questions' list")
      continue
    for j, q in enumerate(video["questions"]):
      where = f"{path}[{i}].questions[{j}] (video {video.get('video_filename')})"
      yield from ctx.parse(where, lambda video=video, q=q: one(video, q))


# ------------------------------------------------------------------------------- MVBench


# MVBench's task file -> the folder of its videos under the release's `video/` directory (the
# release's evaluation notebook, `data_list` in Ask-Anything's video_chat2/mvbench.ipynb).
MVBENCH_VIDEO_DIRS = {
  "action_sequence": "star/Charades_v1_480",
  "action_prediction": "star/Charades_v1_480",
  "action_antonym": "ssv2_video",
  "fine_grained_action": "Moments_in_Time_Raw/videos",
  "unexpected_action": "FunQA_test/test",
  "object_existence": "clevrer/video_validation",
  "object_interaction": "star/Charades_v1_480",
  "object_shuffle": "perception/videos",
  "moving_direction": "clevrer/video_validation",
  "action_localization": "sta/sta_video",
  "scene_transition": "scene_qa/video",
  "action_count": "perception/videos",
  "moving_count": "clevrer/video_validation",
  "moving_attribute": "clevrer/video_validation",
  "state_change": "perception/videos",
  "fine_grained_pose": "nturgbd",
  "character_order": "perception/videos",
  "egocentric_navigation": "vlnqa",
  "episodic_reasoning": "tvqa/frames_fps3_hq",
  "counterfactual_inference": "clevrer/video_validation",
}
# tasks whose `video` is a folder of frames, not a video file: their frame rate (TVQA's
# `frames_fps3_hq`, read at 3 per second as the release's notebook does)
MVBENCH_FRAME_TASKS = {"episodic_reasoning": 3.0}


def read_mvbench(path: str, ctx, task: str | None = None) -> Iterator[VideoQA]:
  """MVBench: one JSON list per task (`path` a file, or the `json/` directory of all tasks).

  `meta["video_path"]` is the video's path under the release's `video/` directory: its task's
  folder (`MVBENCH_VIDEO_DIRS`; none for a task file of another name) and the file name as
  written, extension included (`.webm`, `.avi`, ... as well as `.mp4`). A task whose videos are
  folders of frames (`MVBENCH_FRAME_TASKS`) has their rate in `meta["frame_folder_fps"]`.
  """
  if files.isdir(path):
    tasks = files.glob(path, "*.json")
    if not tasks:
      raise AnnotationError(f"{path}: no MVBench task *.json files in this directory")
    for f in tasks:
      yield from read_mvbench(f, ctx)
    return
  task = task or os.path.splitext(path.rpartition("/")[2])[0]
  data = _list_of(load_json(path), path, "questions")

  def one(i: int, rec: dict) -> VideoQA:
    choices = [str(c) for c in rec["candidates"]]
    if not choices:
      raise BadRecord("empty candidates")
    answer, index = _mc_answer(choices, rec.get("answer"), ctx)
    start, end = _window(rec)
    video = _text(rec, "video")
    folder = MVBENCH_VIDEO_DIRS.get(task)
    return VideoQA(
      qid=f"{task}_{i}",
      video_id=os.path.splitext(video)[0],
      question=_text(rec, "question"),
      choices=choices,
      answer=answer,
      answer_index=index,
      start=start,
      end=end,
      meta={
        "task": task,
        "video": video,
        "video_path": f"{folder}/{video}" if folder else video,
        **({"frame_folder_fps": MVBENCH_FRAME_TASKS[task]} if task in MVBENCH_FRAME_TASKS else {}),
      },
    )

  for i, rec in enumerate(data):
    yield from ctx.parse(f"{path}[{i}]", lambda i=i, rec=rec: one(i, rec))


# ----------------------------------------------------------------------- Perception Test


def read_perception_test(path: str, ctx) -> Iterator[VideoQA]:
  """Perception Test multiple-choice questions (`mc_question_*.json` / `all_*.json`)."""
  data = _dict_of(load_json(path), path, "videos keyed by video id")

  def one(video_key: str, video: dict, q: dict) -> VideoQA:
    meta_in = video.get("metadata") or {}
    video_id = meta_in.get("video_id", video_key)
    choices = [str(o) for o in q["options"]]
    if not choices:
      raise BadRecord("empty options")
    answer, index = _index_answer(choices, q.get("answer_id"), ctx, "answer_id")
    return VideoQA(
      qid=f"{video_id}_{q['id']}",
      video_id=video_id,
      question=_text(q, "question"),
      choices=choices,
      answer=answer,
      answer_index=index,
      meta={
        "area": q.get("area"),
        "reasoning": q.get("reasoning"),
        "tag": q.get("tag"),
        "num_frames": meta_in.get("num_frames"),
        "frame_rate": meta_in.get("frame_rate"),
      },
    )

  for key, video in data.items():
    questions = video.get("mc_question") if isinstance(video, dict) else None
    if not isinstance(questions, list):
      ctx.report.skip(f"{path}[{key!r}]", "video entry without an 'mc_question' list")
      continue
    for j, q in enumerate(questions):
      yield from ctx.parse(
        f"{path}[{key!r}].mc_question[{j}]", lambda key=key, video=video, q=q: one(key, video, q)
      )
