"""STAR-format JSON, NExT-QA CSV + video map, and mp4s of realistic length (PyAV).

The videos are long enough to exercise the real time bases (>= 30 s at 30 fps: a clip of 32
sampled frames spans the whole video, UniVTG's clips are seconds, not frames) and tiny in
pixels (32x32) so decoding stays cheap. Each video shows a coloured square moving across a
grey background, its colour changing halfway (something happens "before" and "after").
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

STAR_OBJECTS = {
  "o000": "person",
  "o001": "cup",
  "o002": "laptop",
  "o003": "book",
  "o004": "table",
  "o005": "door",
}
STAR_VERBS = {"v000": "take", "v001": "put", "v002": "open"}
STAR_ACTIONS = {
  "a000": ("take a cup from somewhere", "v000", "o001"),
  "a001": ("put a book somewhere", "v001", "o003"),
  "a002": ("open a door", "v002", "o005"),
}
STAR_RELATIONS = {"r000": "on", "r001": "holding"}


def write_video(
  path: str, *, seconds: float = 30.0, fps: int = 30, size: int = 32, seed: int = 0
) -> str:
  """An H.264 mp4 (yuv420p) of `seconds` at `fps`, `size` x `size` pixels."""
  import av

  rng = np.random.default_rng(seed)
  colours = rng.integers(40, 255, (2, 3))
  n = int(round(seconds * fps))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "35"}
    for i in range(n):
      img = np.full((size, size, 3), 128, np.uint8)
      x = int((size - 8) * i / max(n - 1, 1))
      img[12:20, x : x + 8] = colours[int(i >= n // 2)]
      frame = av.VideoFrame.from_ndarray(img, format="rgb24")
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  return path


def video_info(path: str) -> tuple[int, float]:
  """(frame count, fps) as PyAV reads them back."""
  import av

  with av.open(path) as f:
    s = f.streams.video[0]
    n = s.frames or sum(1 for _ in f.decode(video=0))
    return n, float(s.average_rate)


def star_classes(root: str) -> str:
  """STAR's class-list directory (`object_classes.txt`, ... as the release lays them out)."""
  os.makedirs(root, exist_ok=True)
  files = {
    "object_classes.txt": [f"{k} {v}" for k, v in STAR_OBJECTS.items()],
    "verb_classes.txt": [f"{k} {v}" for k, v in STAR_VERBS.items()],
    "action_classes.txt": [f"{k} {v[0]}" for k, v in STAR_ACTIONS.items()],
    "action_mapping.txt": [f"{k} {v[1]} {v[2]}" for k, v in STAR_ACTIONS.items()],
    "relationship_classes.txt": [f"{k} {v}" for k, v in STAR_RELATIONS.items()],
  }
  for name, lines in files.items():
    with open(os.path.join(root, name), "w") as f:
      f.write("\n".join(lines) + "\n")
  return root


def _star_record(i: int, video_id: str, seconds: float) -> dict:
  kinds = ("Interaction", "Sequence", "Prediction", "Feasibility")
  objects = ["The cup.", "The book.", "The laptop.", "The door."]
  answer = objects[i % 4]
  situations = {}
  for k, frame in enumerate(range(30, int(seconds * 30), 150)):
    situations[f"{frame:06d}"] = {
      "rel_pairs": [["o000", "o001"]],
      "rel_labels": ["r001"],
      "actions": [["a000", "a001"][k % 2]],
      "bbox": [[4.0, 4.0, 12.0, 12.0]],
      "bbox_labels": ["o001"],
    }
  return {
    "question_id": f"{kinds[i % 4]}_T{i % 3 + 1}_{i}",
    "question": [
      "Which object was taken by the person?",
      "What did the person do after taking the cup?",
      "What will the person do next with the book?",
      "Which object is the person able to open?",
    ][i % 4],
    "video_id": video_id,
    "start": 1.0,
    "end": seconds - 1.0,
    "answer": answer,
    "question_program": [
      {"function": "Situations", "value_input": []},
      {"function": "Actions", "value_input": []},
      {"function": "Filter_Actions_with_Verb", "value_input": ["take"]},
      {"function": "Unique_Objects", "value_input": []},
      {"function": "Query_Objs", "value_input": []},
    ],
    "choices": [
      {
        "choice_id": j,
        "choice": c,
        "choice_program": [{"function": "Equal", "value_input": [c[4:-1].lower()]}],
      }
      for j, c in enumerate(objects)
    ],
    "situations": situations,
  }


def star(
  root: str, *, questions: int = 4, videos: int = 2, seconds: float = 30.0, size: int = 32
) -> dict:
  """STAR train-format JSON over `videos` Charades-style mp4s of `size` x `size` pixels;
  returns its paths."""
  vdir = os.path.join(root, "Charades_v1_480")
  ids = [f"RH{k:03d}" for k in range(videos)]
  for k, vid in enumerate(ids):
    write_video(os.path.join(vdir, f"{vid}.mp4"), seconds=seconds, size=size, seed=k)
  records = [_star_record(i, ids[i % videos], seconds) for i in range(questions)]
  ann = os.path.join(root, "STAR_train.json")
  with open(ann, "w") as f:
    json.dump(records, f)
  return {
    "ann": ann,
    "videos": vdir,
    "classes": star_classes(os.path.join(root, "classes")),
    "questions": questions,
  }


NEXTQA_ROWS = (
  (
    "what does the person do after the square turns",
    "CH",
    ("moves right", "stops", "jumps", "turns around", "waves"),
  ),
  (
    "why does the square move across the room",
    "CW",
    ("to reach the door", "to sleep", "to eat", "to play", "to hide"),
  ),
  (
    "what is on the table at the beginning",
    "DO",
    ("a cup", "a book", "a laptop", "a phone", "a bag"),
  ),
  (
    "how does the person open the door",
    "CH",
    ("with the hand", "with a foot", "with a key", "with a stick", "by pushing"),
  ),
)


def nextqa(
  root: str, *, questions: int = 4, videos: int = 2, seconds: float = 30.0, fps: int = 30
) -> dict:
  """NExT-QA `train.csv` (the release's columns) + `map_vid_vidorID.json` + mp4s under
  `NExTVideo/<dir>/<id>.mp4`; returns its paths."""
  vroot = os.path.join(root, "NExTVideo")
  ids = [str(4000000000 + k) for k in range(videos)]
  mapping = {vid: f"{1000 + k:04d}/{vid}" for k, vid in enumerate(ids)}
  for k, vid in enumerate(ids):
    write_video(os.path.join(vroot, mapping[vid] + ".mp4"), seconds=seconds, fps=fps, seed=10 + k)
  ann = os.path.join(root, "train.csv")
  with open(ann, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
      [
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
      ]
    )
    for i in range(questions):
      q, kind, options = NEXTQA_ROWS[i % len(NEXTQA_ROWS)]
      w.writerow([ids[i % videos], int(seconds * fps), 32, 32, q, i % 5, i, kind, *options])
  map_path = os.path.join(root, "map_vid_vidorID.json")
  with open(map_path, "w") as f:
    json.dump(mapping, f)
  return {"ann": ann, "videos": vroot, "map": map_path, "questions": questions}


def texts() -> list[str]:
  """Every word the datasets use (the tiny tokenizers' vocabulary)."""
  out = list(STAR_OBJECTS.values()) + list(STAR_VERBS.values())
  out += [a[0] for a in STAR_ACTIONS.values()]
  for i in range(4):
    r = _star_record(i, "x", 30.0)
    out += [r["question"]] + [c["choice"] for c in r["choices"]]
  for q, _, options in NEXTQA_ROWS:
    out += [q, *options]
  out += [f"{q} {a}" for q, a, _ in ANETQA_ROWS]
  return out


ANETQA_ROWS = (
  ("is the square moving", "yes", 3),
  ("what color is the background", "grey", 0),
  ("how many squares are there", "1", 4),
)


def activitynet_qa(
  root: str, *, questions: int = 3, videos: int = 1, seconds: float = 30.0
) -> dict:
  """ActivityNet-QA `val_q.json` + `val_a.json` (open-ended) over `videos/v_<name>.mp4`."""
  vdir = os.path.join(root, "videos")
  names = [f"RHanet{k:04d}" for k in range(videos)]
  for k, name in enumerate(names):
    write_video(os.path.join(vdir, f"v_{name}.mp4"), seconds=seconds, seed=20 + k)
  qs, ans = [], []
  for i in range(questions):
    q, a, kind = ANETQA_ROWS[i % len(ANETQA_ROWS)]
    qid = f"v_{names[i % videos]}_{i}"
    qs.append({"video_name": names[i % videos], "question": q, "question_id": qid})
    ans.append({"answer": a, "type": kind, "question_id": qid})
  q_path, a_path = os.path.join(root, "val_q.json"), os.path.join(root, "val_a.json")
  with open(q_path, "w") as f:
    json.dump(qs, f)
  with open(a_path, "w") as f:
    json.dump(ans, f)
  return {"ann": q_path, "videos": vdir, "questions": questions}
