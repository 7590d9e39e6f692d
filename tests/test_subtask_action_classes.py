"""Step 1's action recognition as the paper scores it on STAR: top-1 over every action class
(`num_action_choices=0`, STAR's default), next to the toy world's 4-way choice."""

import pathlib

import pytest

from aotd_jax.eval import subtasks
from experts import subtasks as harness
from tests.test_subtasks import _hand_data

CLASSES = pathlib.Path(__file__).resolve().parent / "fixtures" / "real" / "star_classes"


class _Recognizer:
  """Answers "open box" and records the candidates it was offered."""

  def __init__(self):
    self.offered = []

  def recognize(self, clip, object_name=None, candidates=None):
    self.offered.append(list(candidates))
    return ["open box"]


def test_top1_over_all_classes():
  data, rec = _hand_data(), _Recognizer()
  classes = ["hold cup", "open box", "sit down", "close door"]
  got = subtasks.score_action_recognizer(rec, data, num_action_choices=0, action_classes=classes)
  # two runs (hold cup [0, 3), open box [3, 6)); "open box" is right on the second only
  assert got == {"action_top1": 0.5, "n": 2}
  assert rec.offered == [classes, classes]
  four = _Recognizer()
  subtasks.score_action_recognizer(four, data, num_action_choices=4)
  assert all(len(c) == 2 for c in four.offered)  # the data's two actions: no more distractors
  with pytest.raises(ValueError, match=r"annotated actions \['open box'\] are not among"):
    subtasks.score_action_recognizer(rec, data, num_action_choices=0, action_classes=["hold cup"])
  with pytest.raises(ValueError, match="num_action_choices=-1"):
    subtasks.score_action_recognizer(rec, data, num_action_choices=-1)


def test_star_defaults_to_all_of_stars_classes():
  config = harness.default_config("STAR_val.json", kind="star")
  assert config.num_action_choices == 0
  assert harness.default_config("world").num_action_choices == 4
  names = harness.action_classes({"kind": "star", "classes_dir": str(CLASSES)})
  lines = [l for l in (CLASSES / "action_classes.txt").read_text().splitlines() if l.strip()]
  assert len(names) == len(lines) == 111 and names[0] == "hold some clothes"
  assert harness.action_classes({"kind": "toyworld", "classes_dir": str(CLASSES)}) is None


def test_star_list_programs_score_the_executed_answer_and_the_steps():
  """STAR's list-form programs: the generated program is scored by its executed answer and by
  its normalised steps against STAR's (`program_match`); the text-match columns have no
  Python program to compare with."""
  data = _hand_data()
  star_program = [
    {"function": "Situations", "value_input": []},
    {"function": "Filter_Actions_with_Verb", "value_input": ["hold"]},
    {"function": "Query_Objs", "value_input": []},
  ]
  for r in data.records:
    r.meta["question_program"] = star_program
  data.records[2].meta["question_program"] = [
    {"function": "Situations", "value_input": []},
    {"function": "Query_Colour", "value_input": []},
  ]
  second = (
    "def execute_command(video_clip, query, possible_answers):\n    return possible_answers[1]\n"
  )
  steps = (
    "def execute_command(video_clip, query, possible_answers):\n"
    "    clip = Filter_frames_with_act(video_clip, 'hold')\n"
    "    return possible_answers[1]\n"
  )
  # q1 (gold A): wrong; q2 (gold B): right; q3 (gold B): a non-program output, so none
  got = subtasks.score_program_generator(
    lambda recs: [second, steps, star_program],
    data,
    tools={"Filter_frames_with_act": lambda clip, a: clip},
  )
  assert got["answer_accuracy"] == pytest.approx(1 / 3) and got["n"] == 3
  assert got["program_normalized"] != got["program_normalized"]  # NaN: nothing to match
  assert got["answer_match"] != got["answer_match"]
  # gold steps [action, query_objects] (q1, q2) and [star:Query_Colour] (q3). q1: no step
  # (F1 0, edit 0); q2: [action] -> F1 2/3, edit 1/2; q3: nothing generated -> 0
  assert got["step_n"] == 3 and got["unknown_star_functions"] == ["Query_Colour"]
  assert got["step_exact"] == 0.0
  assert got["step_f1"] == pytest.approx((0 + 2 / 3 + 0) / 3)
  assert got["step_edit"] == pytest.approx((0 + 1 / 2 + 0) / 3)
  data.records[0].meta["question_program"] = [{"function": "Situations"}, "Query_Objs"]
  with pytest.raises(ValueError, match=r"question q1: question_program: step 1 of the STAR"):
    subtasks.score_program_generator(lambda recs: [second] * 3, data, tools={})
