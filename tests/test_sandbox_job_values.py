"""The CoT job never dies on a program's value: each hostile value is a failed (or escaped)
record, written like any other, the job goes on, and a resume finds nothing left to do."""

import json
import os

import numpy as np
import pytest

from aotd_jax.agent import Sandbox, job
from aotd_jax.data import annotations

HEADER = "def execute_command(video_clip, query, possible_answers):\n"


class VideoClip:
  """A stand-in for experts.VideoClip (kept in the host, the program gets a handle)."""

  def __init__(self):
    self.frames = np.zeros((4, 8, 8, 3), np.uint8)


# (qid, program body, expected: "fail:<substring of the error>" or "ok:<prediction>")
VALUES = [
  ("set", "return {1, 2}", "fail:a set"),
  ("frozenset", "return frozenset([1])", "fail:a frozenset"),
  ("bytes", "return 'ab'.encode()", "fail:"),  # .encode is fine; bytes are not an answer
  ("complex", "return 1j", "fail:a complex"),
  ("np_scalar_float", "return video_clip.frames.mean()", "ok:0.0"),
  ("np_scalar_int", "return video_clip.frames.sum()", "ok:0"),
  ("np_array", "return video_clip.frames[0, 0]", "fail:a ndarray"),
  ("video_clip", "return video_clip", "fail:a VideoClip"),
  ("lone_surrogate", "return chr(0xd800)", "ok:\\ud800"),
  ("surrogate_in_stdout", "print(chr(0xdfff) * 3)\nreturn 'y'", "ok:y"),
  ("huge_int", "return 7 ** 5000", "fail:an int of"),
  ("dag", "x = [1]\nfor i in range(60):\n    x = [x, x]\nreturn x", "fail:"),
  ("self_reference", "x = []\nx.append(x)\nreturn x", "fail:"),
  ("dict", "return {'a': [1, 2]}", "fail:a dict"),
  ("tuple", "return (1, 2)", "fail:a tuple"),
  ("none", "return None", "ok:None"),
  ("float_nan", "return float('nan')", "ok:nan"),
  ("long_string", "return 'y' * 100000", "ok:yyyy"),
  ("tool_result_object", "return Clip()", "fail:a VideoClip"),
  ("plain", "return 'y'", "ok:y"),
]


def _qa(qid, body):
  q = annotations.VideoQA(
    qid=qid, video_id="v", question="What?", choices=["x", "y"], answer="y", answer_index=1
  )
  q.meta["question_program"] = HEADER + "".join(f"    {line}\n" for line in body.splitlines())
  return q


@pytest.fixture(scope="module")
def sb():
  with Sandbox(num_workers=2, memory_mb=256) as s:
    yield s


def _job(sb):
  return job.CotJob(
    tools={"Clip": VideoClip},
    program_source="gold",
    timeout_s=5.0,
    batch_size=8,
    make_args=lambda q: {
      "video_clip": VideoClip(),
      "query": q.question,
      "possible_answers": list(q.choices),
    },
    run_program=lambda *a, **k: sb.run(*a, max_steps=100_000, **k),
  )


def test_every_hostile_value_is_a_record_and_the_job_goes_on(sb, tmp_path):
  questions = [_qa(qid, body) for qid, body, _ in VALUES]
  paths = job.JobPaths.for_shard(str(tmp_path), "00000-of-00001")
  with open(os.devnull, "w") as devnull:
    stats = _job(sb).run(questions, paths, stream=devnull)
  assert stats.total == len(VALUES)
  records = {r["qid"]: r for r in job.RecordLog(paths.records).load()}
  assert sorted(records) == sorted(qid for qid, _, _ in VALUES)
  for qid, _, expected in VALUES:
    r = records[qid]
    kind, _, text = expected.partition(":")
    if kind == "ok":
      assert r["verdicts"]["executed"], (qid, r["verdicts"]["execution_error"])
      assert str(r["prediction"]).startswith(text) or (
        text == "\\ud800" and r["prediction"] == "\\ud800"
      ), (qid, r["prediction"])
    else:
      assert not r["verdicts"]["executed"], (qid, r["prediction"])
      assert text in r["verdicts"]["execution_error"], (qid, r["verdicts"]["execution_error"])
    json.dumps(r)  # every record is plain JSON
  # The plain program still passes; the record log is readable line by line.
  assert records["plain"]["verdicts"]["answer"]["passed"]
  # Resume: nothing is processed again.
  with open(os.devnull, "w") as devnull:
    again = _job(sb).run(questions, paths, stream=devnull)
  assert again.total == len(VALUES)
  assert len(job.RecordLog(paths.records).load()) == len(VALUES)


def test_answer_checked_bounds_every_field():
  from aotd_jax.agent.sandbox import Execution

  ex = job.answer_checked(Execution(ok=True, value="\ud800" * 5000, stdout="\udfff" * 20000))
  assert ex.ok and len(ex.value) <= job.MAX_ANSWER_CHARS + 3
  ex.value.encode("utf-8") and ex.stdout.encode("utf-8")
  bad = job.answer_checked(Execution(ok=True, value=np.zeros(3)))
  assert not bad.ok and "a ndarray" in bad.error and bad.value is None
