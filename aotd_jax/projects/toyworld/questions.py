"""Toy world, part 2: STAR-style questions with four choices and gold programs.

Every question is derived from a clip's ground truth (`ClipTruth`) and has exactly one
choice that the ground truth makes true; distractors are chosen so that they are false.
Gold programs are written in the expert API (`Filter_frames_with_act`, `trim`, `Query_Objs`,
`Query_Actions`, `select_answer`, ...) as `def execute_command(video_clip, query,
possible_answers):` bodies, as the program-generation LLM is asked to write them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from aotd_jax.projects.toyworld.render import PAST, PRESENT, ClipTruth

QUESTION_TYPES = ("Interaction", "Sequence", "Prediction", "Feasibility")


def event_text(ev: dict[str, Any], tense: str = "past") -> str:
  """'the red circle jumped' / 'the red circle touches the blue square'."""
  verb = (PAST if tense == "past" else PRESENT)[ev["action"]]
  tail = f" the {ev['target']}" if ev.get("target") else ""
  return f"the {ev['object']} {verb}{tail}"


def _sentence(text: str) -> str:
  return text[0].upper() + text[1:] + "."


def _program(lines: list[str]) -> str:
  body = "\n".join(
    "    " + ln
    for ln in lines + ["answer = select_answer(query, possible_answers, info)", "return answer"]
  )
  return "def execute_command(video_clip, query, possible_answers):\n" + body + "\n"


# Each template returns a list of candidate questions:
# (template_no, question, answer, distractor_pool, program, start_frame, end_frame).


def _interaction(gt: ClipTruth, absent: list[str]):
  out, names, last = [], gt.names, gt.num_frames - 1
  ev = gt.events
  for a in names:
    targets = {e["target"] for e in ev if e["action"] == "touch" and e["object"] == a}
    if len(targets) == 1:
      b = targets.pop()
      pool = [_sentence(f"the {n}") for n in names if n not in (a, b)]
      pool += [_sentence(f"the {n}") for n in absent]
      prog = _program(
        [
          f'touch_clip = Filter_frames_with_act(video_clip, "the {a} touches an object")',
          f'objects = Query_Objs(touch_clip, "the object touched by the {a}", possible_answers)',
          f'info = {{"objects where the {a} touches an object": objects.labels}}',
        ]
      )
      out.append(
        (1, f"Which object did the {a} touch?", _sentence(f"the {b}"), pool, prog, 0, last)
      )
  for action in sorted({e["action"] for e in ev} - {"touch"}):
    doers = {e["object"] for e in ev if e["action"] == action}
    if len(doers) == 1:
      a = doers.pop()
      pool = [_sentence(f"the {n}") for n in names if n != a]
      pool += [_sentence(f"the {n}") for n in absent]
      prog = _program(
        [
          f'act_clip = Filter_frames_with_act(video_clip, "an object {PRESENT[action]}")',
          f'objects = Query_Objs(act_clip, "the object that {PRESENT[action]}", possible_answers)',
          f'info = {{"objects where an object {PRESENT[action]}": objects.labels}}',
        ]
      )
      out.append((2, f"Which object {PAST[action]}?", _sentence(f"the {a}"), pool, prog, 0, last))
  return out


def _fake_events(gt: ClipTruth) -> list[str]:
  """Sentences for (object, action) pairs that never happen in the clip."""
  done = {(e["object"], e["action"]) for e in gt.events}
  return [
    _sentence(event_text({"object": n, "action": a}))
    for n in gt.names
    for a in ("move", "jump", "spin", "grow")
    if (n, a) not in done and not (a == "spin" and n.endswith("circle"))
  ]


def _sequence(gt: ClipTruth, absent: list[str]):
  del absent
  out, ev, last = [], gt.events, gt.num_frames - 1
  keys = [event_text(e) for e in ev]
  fake = _fake_events(gt)
  for i, e in enumerate(ev):
    if keys.count(keys[i]) != 1:
      continue
    present = event_text(e, "present")
    if i + 1 < len(ev):
      pool = [_sentence(k) for k in keys[:i]] + fake
      prog = _program(
        [
          f'event_clip = Filter_frames_with_act(video_clip, "{present}")',
          "after_clip = trim(video_clip, start=event_clip.end_frame, end=None)",
          "actions = Query_Actions(after_clip, possible_actions=possible_answers)",
          f'info = {{"actions right after {present}": actions}}',
        ]
      )
      out.append(
        (1, f"What happened right after {keys[i]}?", _sentence(keys[i + 1]), pool, prog, 0, last)
      )
    if i > 0:
      pool = [_sentence(k) for k in keys[i + 1 :]] + fake
      prog = _program(
        [
          f'event_clip = Filter_frames_with_act(video_clip, "{present}")',
          "before_clip = trim(video_clip, start=None, end=event_clip.start_frame)",
          "actions = Query_Actions(before_clip, possible_actions=possible_answers)",
          f'info = {{"actions right before {present}": actions}}',
        ]
      )
      out.append(
        (2, f"What happened right before {keys[i]}?", _sentence(keys[i - 1]), pool, prog, 0, last)
      )
  return out


def _prediction(gt: ClipTruth, absent: list[str]):
  # World rule: the touched object moves away next. The question's window ends with the
  # touch, so the answer is not shown; it must be predicted.
  out, ev = [], gt.events
  for i, e in enumerate(ev[:-1]):
    nxt = ev[i + 1]
    if e["action"] == "touch" and nxt["action"] == "move" and nxt["object"] == e["target"]:
      pool = [_sentence(f"the {n}") for n in gt.names if n != e["target"]]
      pool += [_sentence(f"the {n}") for n in absent]
      prog = _program(
        [
          'touch_clip = Filter_frames_with_act(video_clip, "an object touches another object")',
          'objects = Query_Objs(touch_clip, "the object that is touched", possible_answers)',
          'info = {"objects where an object touches another object": objects.labels}',
        ]
      )
      out.append(
        (
          1,
          "Which object will move next?",
          _sentence(f"the {e['target']}"),
          pool,
          prog,
          0,
          e["end_frame"],
        )
      )
  return out


def _feasibility(gt: ClipTruth, absent: list[str]):
  out, last = [], gt.num_frames - 1
  at_end = [n for i, n in enumerate(gt.names) if gt.visible[last, i]]
  gone = [n for i, n in enumerate(gt.names) if not gt.visible[last, i]]
  for a in at_end:
    for b in at_end:
      if b == a:
        continue
      pool = [_sentence(f"the {n}") for n in gone + absent]
      prog = _program(
        [
          "end_clip = trim(video_clip, start=video_clip.end_frame - 1, end=None)",
          'objects = Query_Objs(end_clip, "objects", possible_answers)',
          'info = {"objects visible at the end of the video": objects.labels}',
        ]
      )
      out.append(
        (
          1,
          f"Which object is the {a} able to touch at the end of the video?",
          _sentence(f"the {b}"),
          pool,
          prog,
          0,
          last,
        )
      )
  return out


_TEMPLATES: dict[str, Callable] = {
  "Interaction": _interaction,
  "Sequence": _sequence,
  "Prediction": _prediction,
  "Feasibility": _feasibility,
}


def situations(gt: ClipTruth, start_frame: int, end_frame: int) -> dict[str, Any]:
  """STAR `situations` for frames [start_frame, end_frame]: boxes, actions, touching pairs.

  Keys are 6-digit frame ids as in STAR; `actions` are present-tense event phrases of the
  events running in that frame; `rel_pairs` / `rel_labels` list box pairs that touch.
  """
  out = {}
  for t in range(start_frame, end_frame + 1):
    idx = [i for i in range(len(gt.names)) if gt.visible[t, i]]
    pairs = []
    for a in idx:
      for b in idx:
        if a < b:
          ba, bb = gt.boxes[t, a], gt.boxes[t, b]
          gap = max(ba[0] - bb[2], bb[0] - ba[2], ba[1] - bb[3], bb[1] - ba[3])
          if gap <= 1:
            pairs.append([gt.names[a], gt.names[b]])
    out[f"{t:06d}"] = {
      "rel_pairs": pairs,
      "rel_labels": ["touching"] * len(pairs),
      "actions": [
        event_text(e, "present")[4:] for e in gt.events if e["start_frame"] <= t <= e["end_frame"]
      ],
      "bbox": [[float(v) for v in gt.boxes[t, i]] for i in idx],
      "bbox_labels": [gt.names[i] for i in idx],
    }
  return out


def make_questions(
  gt: ClipTruth, rng: np.random.Generator, all_names: list[str], per_type: int = 1
) -> list[dict[str, Any]]:
  """STAR-format question records for one clip: up to `per_type` per question type."""
  absent = [n for n in all_names if n not in gt.names]
  records = []
  for qtype in QUESTION_TYPES:
    cands = [c for c in _TEMPLATES[qtype](gt, absent) if len(set(c[3]) - {c[2]}) >= 3]
    for k in rng.permutation(len(cands))[:per_type]:
      tno, question, answer, pool, program, s, e = cands[int(k)]
      pool = sorted(set(pool) - {answer})
      wrong = [pool[int(j)] for j in rng.choice(len(pool), 3, replace=False)]
      choices = wrong[:]
      choices.insert(int(rng.integers(4)), answer)
      records.append(
        {
          "question_id": f"{qtype}_T{tno}_{gt.video_id}_{len(records)}",
          "question": question,
          "video_id": gt.video_id,
          "start": round(s / gt.fps, 4),
          "end": round((e + 1) / gt.fps, 4),
          "answer": answer,
          "question_program": program,
          "choices": [
            {
              "choice_id": j,
              "choice": c,
              "choice_program": [{"function": "Equal", "value_input": [c]}],
            }
            for j, c in enumerate(choices)
          ],
          "situations": situations(gt, s, e),
        }
      )
  return records
