"""Every number of the paper's main table and grounding figure from per-question outputs
(`aotd_jax.eval.rescore`, `launch.evaluate --rescore`), each checked on hand-computed values:
MC accuracy under the official, MVBench and our parses, the closed-set accuracy, open-ended
judge accuracy / score, and rationale box / window IoU."""

import json
import pathlib
import subprocess
import sys

import pytest

from aotd_jax.data import annotations
from aotd_jax.data.annotations import VideoQA
from aotd_jax.eval import mc_parse, rescore

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAR = ROOT / "tests" / "fixtures" / "annotations" / "star_val.json"
AGQA = ROOT / "tests" / "fixtures" / "annotations" / "agqa_balanced.json"
CHOICES = ["the cup", "the book", "the bag", "the door"]


def _mc(qid, answer_index, qtype="T"):
  return VideoQA(
    qid,
    "v",
    "q?",
    list(CHOICES),
    CHOICES[answer_index],
    answer_index,
    meta={"question_type": qtype},
  )


@pytest.mark.parametrize(
  "output,want",
  [
    ("B", (1, False)),  # first character
    ("D. the door", (3, False)),
    ("(C) the bag", (2, False)),  # "(" is not a letter: C is the first of A-E found
    ("The answer is D", (3, False)),  # no A, B or C in it: D
    ("A person holds the book (B)", (0, False)),  # an "A" anywhere wins over the B
    ("E", (4, False)),  # a fifth letter to four options: wrong, not redrawn
  ],
)
def test_official_parse(output, want):
  assert mc_parse.official_choice(output, 4, "q1") == want


def test_official_parse_draws_a_seeded_random_option():
  picks = {mc_parse.official_choice("no idea", 4, f"q{i}")[0] for i in range(40)}
  assert picks == {0, 1, 2, 3}  # uniform over the options, not a fixed one
  assert mc_parse.official_choice("no idea", 4, "q7") == mc_parse.official_choice(
    "no idea", 4, "q7"
  )
  assert mc_parse.official_choice("no idea", 4, "q7")[1] is True
  seeds = {mc_parse.official_choice("no idea", 4, "q7", seed=s)[0] for s in range(20)}
  assert len(seeds) > 1


@pytest.mark.parametrize(
  "output,answer,want",
  [
    ("(B) the book", 1, True),
    ("B.", 1, True),
    ("b", 1, True),
    ("A", 1, False),
    ("the book", 1, False),
    ("", 1, True),  # the release accepts an empty reply
  ],
)
def test_mvbench_parse(output, answer, want):
  assert mc_parse.mvbench_correct(output, answer) is want


def test_accuracy_per_parse_from_rows():
  records = [
    _mc("a", 0, "Interaction"),
    _mc("b", 1, "Interaction"),
    _mc("c", 2, "Sequence"),
    _mc("d", 3, "Sequence"),
  ]
  rows = [
    {"qid": "a", "output": "A"},
    {"qid": "b", "output": "the book"},
    {"qid": "c", "output": "(C)"},
    {"qid": "d", "output": "Bag or door?"},
  ]
  ours = rescore.score_rows(records, rows, parse="ours")
  # a: A right; b: text "the book" right; c: (C) right; d: names no option -> wrong
  assert ours["accuracy"] == 0.75 and ours["per_type"] == {"Interaction": 1.0, "Sequence": 0.5}
  official = rescore.score_rows(records, rows, parse="official")
  # b: no letter A-E in "the book" -> a seeded random option; d: "B" in "Bag" -> option 1, wrong
  b_pick = mc_parse.official_choice("the book", 4, "b")[0]
  assert official["accuracy"] == (1 + (b_pick == 1) + 1 + 0) / 4
  assert official["random_picks"] == 1 and official["parse"] == "official"
  mvb = rescore.score_rows(records, rows, parse="mvbench")
  # first words "a", "the", "(c)", "bag": only a and c pass
  assert mvb["accuracy"] == 0.5


def test_closed_set_accuracy_sits_beside_the_generated_one():
  records = [_mc("a", 0), _mc("b", 1)]
  rows = [
    {"qid": "a", "output": "B", "likelihood_output": "(A)"},
    {"qid": "b", "output": "B", "likelihood_output": "(A)"},
  ]
  got = rescore.score_rows(records, rows, parse="official")
  assert got["accuracy"] == 0.5 and got["likelihood"]["accuracy"] == 0.5
  only = rescore.score_rows(records, [{"qid": r["qid"], "likelihood_output": "(B)"} for r in rows])
  assert only["accuracy"] == 0.5 and "likelihood" not in only


def test_efficiency_per_question_from_rows():
  records = [_mc("a", 0), _mc("b", 1), _mc("c", 2)]
  rows = [
    {
      "qid": "a",
      "output": "A",
      "seconds": 3.0,
      "new_tokens": 2,
      "likelihood_output": "(A)",
      "likelihood_seconds": 0.5,
    },
    {
      "qid": "b",
      "output": "B",
      "seconds": 1.0,
      "new_tokens": 4,
      "likelihood_output": "(A)",
      "likelihood_seconds": 0.25,
    },
    {
      "qid": "c",
      "output": "C",
      "seconds": 2.0,
      "new_tokens": 6,
      "likelihood_output": "(C)",
      "likelihood_seconds": 0.75,
    },
  ]
  got = rescore.score_rows(records, rows)
  assert got["efficiency"] == {
    "questions": 3,
    "seconds": 6.0,
    "seconds_per_question": 2.0,
    "seconds_per_question_median": 2.0,
    "new_tokens": 12,
    "new_tokens_per_question": 4.0,
    "tokens_per_second": 2.0,
  }
  assert got["likelihood"]["efficiency"] == {
    "questions": 3,
    "seconds": 1.5,
    "seconds_per_question": 0.5,
    "seconds_per_question_median": 0.5,
  }
  # rows without timings (an older run): no efficiency; a row missing one, or a bad value: named
  assert "efficiency" not in rescore.score_rows(
    records, [{"qid": r["qid"], "output": r["output"]} for r in rows]
  )
  with pytest.raises(ValueError, match=r"question 'b': 'seconds' is None.*others have one"):
    rescore.score_rows(
      records,
      [
        rows[0],
        {"qid": "b", "output": "B", "likelihood_output": "(A)", "likelihood_seconds": 0.25},
        rows[2],
      ],
    )
  with pytest.raises(ValueError, match=r"question 'c': 'new_tokens' is 'six'"):
    rescore.score_rows(records, rows[:2] + [{**rows[2], "new_tokens": "six"}])


class _Judge:
  """Answers each judge prompt from a table of prediction -> reply."""

  def __init__(self, replies):
    self.replies = replies

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    del max_new_tokens, temperature, stop
    return [
      next(r for p_, r in self.replies.items() if f"Predicted answer: {p_}\n" in p[0]["content"])
      for p in prompts
    ]


def test_open_ended_judge_accuracy_and_score_from_rows():
  records = [VideoQA(q, "v", "what?", [], a) for q, a in (("x", "dog"), ("y", "red"), ("z", "2"))]
  rows = [
    {"qid": "x", "output": "a dog"},
    {"qid": "y", "output": "blue"},
    {"qid": "z", "output": "two"},
  ]
  replies = {
    "a dog": "{'pred': 'yes', 'score': 5}",
    "blue": "{'pred': 'no', 'score': 1}",
    "two": "yes I think",
  }  # unreadable: no and 0, counted
  seen = []
  got = rescore.score_rows(records, rows, judge=_Judge(replies), on_judgements=seen.extend)
  oe = got["open_ended"]
  assert oe["exact_match"] == pytest.approx(1 / 3)  # "a dog" == "dog" after normalising
  assert oe["judge_accuracy"] == pytest.approx(1 / 3)
  assert oe["judge_score"] == pytest.approx((5 + 1 + 0) / 3) and oe["judge_unparsed"] == 1
  assert [j["qid"] for j in seen] == ["x", "y", "z"]


def test_rationale_grounding_from_rows():
  situations = {"000120": {"bbox": [[10, 10, 50, 50]]}, "000160": {"bbox": [[20, 20, 60, 60]]}}
  records = [VideoQA("s", "v", "q?", list(CHOICES), "the cup", 0, meta={"situations": situations})]
  text = "In frames 2-4 the cup is at [10, 10, 50, 30] in frame 2. So the answer is A."
  rows = [{"qid": "s", "output": text, "frame_ids": list(range(100, 200, 10))}]
  got = rescore.score_rows(records, rows, mode="rationale")
  g = got["rationale_grounding"]
  # box: 40x20 inside 40x40 -> 0.5; window [2, 5) vs the key frames' [2, 7) -> 3 / 5
  assert g["box_iou"] == pytest.approx(0.5) and g["window_iou"] == pytest.approx(0.6)
  assert got["accuracy"] == 1.0  # the stated answer, read with our parse in rationale mode
  with pytest.raises(ValueError, match="qid|'s'.*frame_ids"):
    rescore.score_rows(records, [{"qid": "s", "output": text}], mode="rationale")


def test_read_rows_names_the_file_and_question(tmp_path):
  records = annotations.read("star", str(STAR))
  bad = tmp_path / "bad.json"
  bad.write_text("[1, 2]")
  with pytest.raises(ValueError, match="bad.json: not a launch.evaluate --out file"):
    rescore.read_rows(str(bad), records)
  part = tmp_path / "part.json"
  part.write_text(json.dumps({"outputs": [{"qid": records[0].qid, "output": "A"}]}))
  with pytest.raises(ValueError, match=f"part.json: no output for 2 of 3 .*{records[1].qid}"):
    rescore.read_rows(str(part), records)
  none = tmp_path / "none.json"
  none.write_text(json.dumps({"outputs": [{"qid": records[0].qid}]}))
  with pytest.raises(ValueError, match=r"outputs\[0\].*has none of"):
    rescore.read_rows(str(none), records)


def _evaluate(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.evaluate", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow  # five launch.evaluate subprocesses (no model)
def test_cli_rescores_a_run_without_the_student(tmp_path):
  records = annotations.read("star", str(STAR))
  run = tmp_path / "run.json"
  outputs = ["A", "no letter here", "(A) x"]
  run.write_text(
    json.dumps(
      {
        "outputs": [
          {"qid": r.qid, "output": o, "likelihood_output": "(A)"} for r, o in zip(records, outputs)
        ],
        "efficiencies": {"output": {"seconds_per_question": 2.0}},
      }
    )
  )
  out = tmp_path / "again.json"
  r = _evaluate(
    f"--rescore={run}",
    "--format=star",
    f"--annotations={STAR}",
    "--parse=ours",
    "--scoring=both",
    f"--out={out}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  got = json.loads(out.read_text())
  want = [
    int(o.startswith(("A", "(A)")) and rec.answer_index == 0) for o, rec in zip(outputs, records)
  ]
  assert got["accuracy"] == pytest.approx(sum(want) / 3)
  assert got["likelihood"]["accuracy"] == pytest.approx(
    sum(rec.answer_index == 0 for rec in records) / 3
  )
  assert got["efficiency"] == {"seconds_per_question": 2.0}
  assert [o["qid"] for o in got["outputs"]] == [rec.qid for rec in records]
  # a judge on multiple-choice data, and a run that is not one, are named
  r = _evaluate(
    f"--rescore={run}",
    "--format=star",
    f"--annotations={STAR}",
    f"--judge_replay={tmp_path / 'j.jsonl'}",
  )
  assert r.returncode == 2 and "--judge_llm/--judge_replay judge open-ended" in r.stderr
  r = _evaluate(f"--rescore={tmp_path / 'missing.json'}", "--format=agqa", f"--annotations={AGQA}")
  assert r.returncode == 2 and "--rescore:" in r.stderr and "missing.json" in r.stderr
  # rationale grounding needs the rows' frame_ids: a run without them is named
  r = _evaluate(f"--rescore={run}", "--format=star", f"--annotations={STAR}", "--mode=rationale")
  assert r.returncode == 2 and "has no frame_ids" in r.stderr and "Traceback" not in r.stderr


def test_mvbench_accuracy_is_reported_per_task():
  records = annotations.read(
    "mvbench", str(ROOT / "tests" / "fixtures" / "annotations" / "mvbench")
  )
  rows = [{"qid": r.qid, "output": f"({'ABCDE'[r.answer_index]})"} for r in records]
  got = rescore.score_rows(records, rows, parse="mvbench")
  assert got["accuracy"] == 1.0
  assert set(got["per_type"]) == {r.meta["task"] for r in records}
