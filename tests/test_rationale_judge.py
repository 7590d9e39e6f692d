"""The toy world's rationale judge (`aotd_jax.projects.toyworld.rationale_judge`): a kept CoT
must name the question's objects and events in its trace and its rationale; `judged_cots`
writes the set that passes, once."""

import json

import pytest

from aotd_jax.projects.toyworld import rationale_judge as rj

QUESTION = "What happened right after the blue triangle disappeared?"


def trace(query: str) -> dict:
  return {
    "calls": [
      {
        "tool": "Filter_frames_with_act",
        "args": {"query": query},
        "result": {"start_frame": 0, "end_frame": 23},
      }
    ]
  }


def test_question_terms_finds_objects_and_any_event_form():
  assert rj.question_terms(QUESTION) == (["blue triangle"], ["disappear"])
  assert rj.question_terms("Which object did the red circle touch?") == (["red circle"], ["touch"])
  assert rj.question_terms("Which object will move next?") == ([], ["move"])
  # "appear" is not found inside "disappeared", nor "red" objects inside "bored circle"
  assert rj.missing_terms("Which object appeared?", "the green square disappeared") == ["appear"]
  assert rj.missing_terms(QUESTION, "The Blue Triangle disappears in frames 3-5.") == []


def test_check_drops_a_cot_about_another_object():
  # the example: right letter, reasoning about the green circle
  wrong = (
    "Looking for when the green circle disappears in frames 0-23, I find frames 4-6. "
    "Right after it, the red square moved. So the answer is (B)."
  )
  ok, why = rj.check(QUESTION, trace("the green circle disappears"), wrong)
  assert not ok and why == "the trace does not name blue triangle (the question does)"
  right = (
    "Looking for when the blue triangle disappears in frames 0-23, I find frames 4-6. "
    "Right after it, the red square moved. So the answer is (B)."
  )
  assert rj.check(QUESTION, trace("the blue triangle disappears"), right)[0]
  ok, why = rj.check(QUESTION, trace("the blue triangle disappears"), wrong)
  assert not ok and "rationale does not name blue triangle" in why
  ok, why = rj.check(QUESTION, trace("the blue triangle"), right)
  assert not ok and "trace does not name disappear" in why
  assert not rj.check(QUESTION, None, right)[0]  # no trace: nothing to check against


def test_judged_cots_writes_the_passing_set_once(tmp_path):
  from aotd_jax.agent.job import RecordLog

  records = tmp_path / "records.jsonl"
  log = RecordLog(str(records))
  convo = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]
  for qid, query, kept in (
    ("q0", "the blue triangle disappears", True),
    ("q1", "the green circle disappears", True),
    ("q2", "the blue triangle disappears", False),
  ):
    log.append(
      {
        "qid": qid,
        "video_id": "v",
        "video_path": "v.mp4",
        "question": QUESTION,
        "kept": kept,
        "trace": trace(query),
        "conversation": convo,
        "rationale": f"Looking for when {query[4:]}. So (B).",
      }
    )
  cots = {"records": str(records), "passed_judge": 2, "filtered_path": "old"}
  out = rj.judged_cots(cots)
  assert out["passed_judge"] == 1 and out["passed_rule"] == 2 and out["judge"] == "rationale"
  assert out["rationale_dropped"] == [
    {"qid": "q1", "reason": "the trace does not name blue triangle (the question does)"}
  ]
  lines = (tmp_path / "judged_rationale.jsonl").read_text().splitlines()
  assert [json.loads(x)["qid"] for x in lines] == ["q0"]
  assert json.loads(lines[0])["conversation"] == convo
  assert cots["filtered_path"] == "old"  # the input summary is not touched
  records.unlink()  # cached: the second call reads its counts back
  with pytest.raises(FileNotFoundError, match="no CoT records at"):
    rj.judged_cots(cots)
  records.write_text("")
  assert rj.judged_cots(cots)["passed_judge"] == 1
