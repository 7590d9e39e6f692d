"""Two-step CoT filter: answer check (MC letter/text, open-ended, judge), logic judge, counts."""

import pytest

from aotd_jax.agent import cot, filters
from fixtures.scripted_llm import ScriptedLLM

CHOICES = ["The clothes.", "The pillow.", "The bag.", "The box."]


@pytest.mark.parametrize(
  "prediction,index",
  [
    ("The pillow.", 1),
    ("pillow", 1),
    ("  THE PILLOW ", 1),
    ("a pillow", 1),
    ("B", 1),
    ("(B)", 1),
    ("b.", 1),
    ("B)", 1),
    ("[B]", 1),
    ("**B**", 1),
    ("Answer: B", 1),
    ("The answer is (C)", 2),
    ("Option D", 3),
    ("(B) The pillow.", 1),
    ("(B) something", 1),
    ("I think the person threw the bag.", 2),
    (1, 1),
    ("E", None),
    ("", None),
    (None, None),
    ("the pillow or the bag", None),
    ("Box.", 3),
    ("Banana", None),
    (7, None),
  ],
)
def test_choice_index_by_letter_and_text(prediction, index):
  assert filters.choice_index(prediction, CHOICES) == index


def test_choice_text_that_starts_like_a_letter():
  choices = ["A cup", "A book"]
  assert filters.choice_index("A book", choices) == 1
  assert filters.choice_index("a cup", choices) == 0
  assert filters.choice_index("A", choices) == 0


def test_check_answer_multiple_choice():
  ok = filters.check_answer("B", CHOICES, "The pillow.", 1)
  assert ok.passed and ok.reason == "predicted (B), gold (B)"
  assert filters.check_answer("The pillow", CHOICES, "The pillow.").passed  # gold from text
  wrong = filters.check_answer("The bag.", CHOICES, "The pillow.", 1)
  assert not wrong.passed and wrong.reason == "predicted (C), gold (B)"
  vague = filters.check_answer("something soft", CHOICES, "The pillow.", 1)
  assert not vague.passed and "names no single choice" in vague.reason
  none = filters.check_answer(None, CHOICES, "The pillow.", 1)
  assert not none.passed and none.reason == "program returned no answer"


def test_check_answer_open_ended_match_or_defer_to_judge():
  assert filters.check_answer("The Dog!", [], "dog").passed
  assert filters.check_answer("a puppy", [], "dog") is None  # the judge decides


@pytest.mark.parametrize(
  "reply,said",
  [
    ("Yes", True),
    ("yes.", True),
    ("**Yes**", True),
    ("Answer: YES", True),
    ("True", True),
    ("correct", True),
    ("Y", True),
    ("No", False),
    ("no, it skips steps", False),
    ("False.", False),
    ("Incorrect", False),
    ("The answer is: No", False),
    ("Maybe", None),
    ("", None),
    (None, None),
    ("Nobody knows", None),
    ("yesterday", None),
  ],
)
def test_parse_yes_no(reply, said):
  assert filters.parse_yes_no(reply) is said


def test_llm_judges_parse_and_count_unparsable_as_fail():
  llm = ScriptedLLM(["Yes.", "No", "I am not sure"])
  verdicts = filters.judge_answers(llm, [("What pet?", "dog", "a puppy")] * 3)
  assert [v.passed for v in verdicts] == [True, False, False]
  assert "unparsable" in verdicts[2].reason and verdicts[0].by == "llm"
  assert "Correct answer: dog" in llm.prompts[0] and "Predicted answer: a puppy" in llm.prompts[0]
  llm = ScriptedLLM(["True", "false"])
  verdicts = filters.judge_logic(llm, [("Q?", CHOICES, "First ... So the answer is B.")] * 2)
  assert [v.passed for v in verdicts] == [True, False]
  assert "step-by-step and helpful" in llm.prompts[0] and "(B) The pillow." in llm.prompts[0]
  assert filters.judge_logic(llm, []) == []


TRACE = [
  {
    "name": "Filter_frames_with_act",
    "args": {"action": "throw"},
    "result": {"start_frame": 10, "end_frame": 20},
  },
  {
    "name": "Find",
    "args": {"obj": "pillow"},
    "result": [{"frame": 12, "label": "pillow", "box": [1, 2, 3, 4], "score": 0.9}],
  },
]


def test_rule_judge():
  good = cot.verbalise(TRACE, "The pillow.")
  assert filters.rule_judge(good, TRACE, "The pillow.").passed
  one_step = filters.rule_judge("So the answer is the pillow.", TRACE, "The pillow.")
  assert not one_step.passed and "need 2 steps" in one_step.reason
  no_box = filters.rule_judge(
    "The throw is in frames 10-19. So the answer is the pillow.", TRACE, "The pillow."
  )
  assert not no_box.passed and "omits 1 piece(s) of evidence" in no_box.reason
  wrong_end = filters.rule_judge(
    good.replace("So the answer is the pillow.", "Done."), TRACE, "The pillow."
  )
  assert not wrong_end.passed and "does not give the answer" in wrong_end.reason


def test_filter_stats_counts_each_step():
  stats = filters.FilterStats()
  stats.add(parsed=False, executed=False, answer_passed=False, logic_passed=False)
  stats.add(parsed=True, executed=False, answer_passed=False, logic_passed=False)
  stats.add(parsed=True, executed=True, answer_passed=False, logic_passed=True)  # not counted
  stats.add(parsed=True, executed=True, answer_passed=True, logic_passed=False)
  stats.add_record(
    {
      "verdicts": {
        "parsed": True,
        "executed": True,
        "answer": {"passed": True},
        "logic": {"passed": True},
      }
    }
  )
  assert (stats.total, stats.parsed, stats.executed, stats.answer_passed, stats.kept) == (
    5,
    4,
    3,
    2,
    1,
  )
  assert stats.rates() == {
    "parsed": 0.8,
    "executed": 0.6,
    "answer": 0.4,
    "logic": 0.2,
    "logic_given_answer": 0.5,
    "refused": 0.0,
  }
  assert stats.summary() == "parsed 80% exec 60% answer 40% logic 20% (kept 1)"
  assert stats.to_dict()["kept"] == 1 and stats.to_dict()["parse_failed"] == 1


def test_filter_stats_counts_refused_prompts_apart_from_parse_failures():
  """A question whose prompt the LLM server refused (its record's `verdicts.refused`: HTTP 400,
  e.g. longer than the server's context) was counted among the programs that did not parse, so
  a run that lost questions to the server's context looked like one whose LLM wrote bad code."""
  stats = filters.FilterStats()
  stats.add(parsed=False, executed=False, answer_passed=False, logic_passed=False)
  stats.add(parsed=True, executed=True, answer_passed=True, logic_passed=True)
  for _ in range(2):  # what CotJob._one_at_a_time writes for a refused question
    stats.add_record({"verdicts": {"parsed": False, "refused": "the LLM server refused ..."}})
  # a refused record that (by another writer) says parsed is still not counted as parsed
  stats.add_record({"verdicts": {"parsed": True, "executed": True, "refused": "HTTP 413"}})
  d = stats.to_dict()
  assert (d["total"], d["refused"], d["parse_failed"], d["parsed"], d["kept"]) == (5, 3, 1, 1, 1)
  assert d["rates"]["refused"] == 0.6 and d["rates"]["parsed"] == 0.2
  assert stats.summary().endswith("(kept 1); 3 refused by the LLM server")
