"""The official release's rewrite and judge as options (docs/fidelity.md): the program in the
rewrite prompt, the LLM reply kept as written, and a judge that keeps only an exact "True"."""

import pytest

from aotd_jax.agent import cot, filters, job
from aotd_jax.agent.trace import ToolCall
from aotd_jax.data import annotations
from fixtures.scripted_llm import ScriptedLLM

TRACE = [
  ToolCall(
    "Filter_frames_with_act", {"action": "open the door"}, {"start_frame": 12, "end_frame": 40}, 0.1
  )
]
PROGRAM = "def execute_command(video_clip, query, possible_answers):\n    return 'a door'\n"


def test_exact_true_judge_keeps_only_true():
  llm = ScriptedLLM(["True", " True\n", "true", "True, it is step by step.", "Yes"])
  verdicts = filters.judge_logic(llm, [("Q?", ["a", "b"], "r")] * 5, parse="exact_true")
  assert [v.passed for v in verdicts] == [True, True, False, False, False]
  assert "reply True; otherwise reply False" in llm.prompts[0]
  lenient = filters.judge_logic(ScriptedLLM(["true", "Yes", "No"]), [("Q?", [], "r")] * 3)
  assert [v.passed for v in lenient] == [True, True, False]
  with pytest.raises(ValueError, match="judge parse 'strict'"):
    filters.judge_logic(ScriptedLLM([]), [], parse="strict")


def test_official_rewrite_prompt_has_the_program_and_keeps_the_reply():
  llm = ScriptedLLM(["The person opens the door, so the answer is a door."])
  ((text, source),) = cot.rewrite(
    llm,
    [("What opened?", ["a cup", "a door"], TRACE, "a door", PROGRAM)],
    prompt="official",
    fallback="none",
  )
  assert "Program:\n" + PROGRAM.strip() in llm.prompts[0] and "frames 12-39" in llm.prompts[0]
  # the reply states no window: ours would replace it, the official keeps it as written
  assert (text, source) == ("The person opens the door, so the answer is a door.", "llm")
  ours = cot.rewrite(ScriptedLLM([text]), [("What opened?", ["a cup", "a door"], TRACE, "a door")])
  assert ours[0][1] == "verbaliser"
  with pytest.raises(ValueError, match="rewrite prompt 'paper'"):
    cot.rewrite(llm, [], prompt="paper")


class _Run:
  def __call__(self, source, tools, args, *, timeout_s):
    from aotd_jax.agent.sandbox import Execution

    return Execution(ok=True, value="a door", trace=TRACE)


def test_the_job_runs_the_official_rewrite_and_judge():
  qa = annotations.VideoQA(
    qid="q",
    video_id="v",
    question="What opened?",
    choices=["a cup", "a door"],
    answer="a door",
    answer_index=1,
  )
  qa.meta["question_program"] = PROGRAM
  rewriter = ScriptedLLM(["It opens a door, so a door."])
  judge = ScriptedLLM(["True"])
  cot_job = job.CotJob(
    tools={},
    make_args=lambda q: {},
    run_program=_Run(),
    cot_llm=rewriter,
    judge_llm=judge,
    program_source="gold",
    logic_judge="llm",
    judge_parse="exact_true",
    rewrite_prompt="official",
    rewrite_fallback="none",
  )
  (record,) = cot_job.process([qa])
  assert record["kept"] and record["rationale"] == "It opens a door, so a door."
  assert PROGRAM.strip() in rewriter.prompts[0]
  assert record["llm_replies"] == {"rewrite": "It opens a door, so a door.", "logic_judge": "True"}
  with pytest.raises(job.JobError, match="judge_parse='maybe'"):
    job.CotJob(
      tools={},
      make_args=lambda q: {},
      run_program=_Run(),
      program_source="gold",
      judge_parse="maybe",
    )
