"""STAR program generation scored as normalised step sequences (`aotd_jax.eval.program_match`),
each number computed by hand."""

import pytest

from aotd_jax.eval import program_match as pm

# STAR's list form: "Which object was tidied up by the person?"
TIDY = [
  {"function": "Situations", "value_input": []},
  {"function": "Actions", "value_input": []},
  {"function": "Filter_Actions_with_Verb", "value_input": ["tidy"]},
  {"function": "Unique", "value_input": []},
  {"function": "Query_Objs", "value_input": []},
]
SAME = '''def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, "person is tidying something")
    objs = Query_Objs(clip, "clothes/pillow")
    return select_answer(query, possible_answers, {"objects": objs})
'''
OTHER = '''def execute_command(video_clip, query, possible_answers):
    last = trim(video_clip, start=3)
    objs = Query_Objs(last, "clothes/pillow")
    info = {"objects": objs, "summary": Video_summary(last)}
    return select_answer(query, possible_answers, info)
'''


def test_star_steps_drop_scene_graph_and_set_steps():
  assert pm.star_steps(TIDY) == (["action", "query_objects"], [])
  after = [
    {"function": "Filter_After_Actions", "value_input": []},
    {"function": "Query_Verbs", "value_input": []},
    {"function": "Filter_Magic", "value_input": []},
  ]
  assert pm.star_steps(after) == (["time", "query_actions", "star:Filter_Magic"], ["Filter_Magic"])
  with pytest.raises(ValueError, match=r"step 1 of the STAR program is not"):
    pm.star_steps([{"function": "Situations"}, {"value_input": ["x"]}])
  with pytest.raises(ValueError, match="is a list of steps, not str"):
    pm.star_steps("Situations")


def test_python_steps_follow_execution_order():
  assert pm.python_steps(SAME) == ["action", "query_objects"]  # select_answer dropped
  assert pm.python_steps(OTHER) == ["time", "query_objects", "summary"]
  nested = "x = Query_Objs(Filter_frames_with_act(v, 'a'), Find(v, 'b'))\nlen(x)"
  assert pm.python_steps(nested) == ["action", "object", "query_objects"]  # args first
  assert pm.python_steps("def f(:\n") is None


def test_step_scores_by_hand():
  gold = ["action", "query_objects"]
  assert pm.step_scores(pm.python_steps(SAME), gold) == {
    "step_exact": 1.0,
    "step_f1": 1.0,
    "step_edit": 1.0,
  }
  # OTHER: time, query_objects, summary. Common 1: P 1/3, R 1/2 -> F1 0.4; edits: time->action,
  # + summary = 2 over the longer length 3
  got = pm.step_scores(pm.python_steps(OTHER), gold)
  assert got == {
    "step_exact": 0.0,
    "step_f1": pytest.approx(0.4),
    "step_edit": pytest.approx(1 / 3),
  }
  assert pm.step_scores(None, gold) == {"step_exact": 0.0, "step_f1": 0.0, "step_edit": 0.0}
  assert pm.step_scores([], []) == {"step_exact": 1.0, "step_f1": 1.0, "step_edit": 1.0}
  assert pm.edit_distance(list("kitten"), list("sitting")) == 3
  assert pm.step_f1(["a", "a", "b"], ["a", "b", "b", "c"]) == pytest.approx(
    2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)
  )
