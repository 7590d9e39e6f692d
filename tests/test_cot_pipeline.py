"""The pipelined CoT job: the same records as one batch at a time, stages that overlap, clips
decoded ahead of execution, an undecodable video as a failed record, resume after a failure."""

import os
import threading
import time

import numpy as np
import pytest

from aotd_jax.agent import job
from aotd_jax.agent.llm import LLMError
from aotd_jax.agent.sandbox import Execution
from aotd_jax.agent.stages import StageTimes, run_stages
from aotd_jax.agent.trace import ToolCall
from aotd_jax.data import annotations, video

PROGRAM = (
  "```python\ndef execute_command(video_clip, query, possible_answers):\n"
  "    boxes = Find(video_clip, 'ball')\n"
  "    return select_answer(query, possible_answers, {'ball': boxes})\n```"
)


# -- run_stages ---------------------------------------------------------------------------------


def test_stages_keep_the_order_and_overlap():
  started = {1: threading.Event()}
  seen = []

  def slow_first(x):
    seen.append(("a", x))
    return x

  def second(x):
    if x == 0:  # item 1 enters stage a while item 0 is still in stage b
      started[1].wait(timeout=30)
    seen.append(("b", x))
    return x * 10

  def first(x):
    if x == 1:
      started[1].set()
    return slow_first(x)

  times = StageTimes()
  out = list(run_stages(range(5), [("a", first), ("b", second)], max_in_flight=3, times=times))
  assert out == [0, 10, 20, 30, 40]
  assert seen.index(("a", 1)) < seen.index(("b", 0))  # overlapped, not one after the other
  assert times.items == {"a": 5, "b": 5} and set(times.busy_s) == {"a", "b"}


def test_at_most_max_in_flight_items_are_fed_ahead_of_the_consumer():
  fed = []

  def items():
    for i in range(10):
      fed.append(i)
      yield i

  consumed = 0
  for _ in run_stages(items(), [("id", lambda x: x)], max_in_flight=2):
    consumed += 1
    assert len(fed) - consumed <= 2  # fed but not yet handed out: at most max_in_flight
  assert consumed == 10


def test_a_stage_of_two_workers_runs_two_items_at_once_and_keeps_their_order():
  both_in = threading.Barrier(2, timeout=30)  # broken (an error) unless items 0 and 1 meet

  def slow(x):
    if x < 2:
      both_in.wait()
      if x == 0:
        time.sleep(0.05)  # item 0 finishes after item 1; the stage still hands 0 on first
    return x

  out = list(run_stages(range(6), [("llm", slow, 2), ("next", lambda x: x + 100)], max_in_flight=4))
  assert out == [100, 101, 102, 103, 104, 105]
  with pytest.raises(ValueError, match="stage 'llm': workers must be >= 1"):
    list(run_stages([1], [("llm", abs, 0)]))


def test_a_stage_error_comes_after_the_earlier_items_and_the_threads_end():
  def boom(x):
    if x == 2:
      raise LLMError("server down")
    return x

  got = []
  with pytest.raises(LLMError, match="server down"):
    for x in run_stages(range(6), [("a", lambda x: x), ("b", boom)], max_in_flight=2):
      got.append(x)
  assert got == [0, 1]
  assert not [t for t in threading.enumerate() if t.name.startswith("stages-")]
  with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
    list(run_stages([1], [("a", abs)], max_in_flight=0))


# -- the job ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """Three tiny videos of different brightness and one file that is not a video."""
  root = tmp_path_factory.mktemp("videos")
  for i in range(3):
    frames = np.full((8, 16, 16, 3), 40 + 60 * i, np.uint8)
    frames[:, 4:8, 2 + 3 * i : 6 + 3 * i] = 250  # a bright square, placed per video
    video.write_video(str(root / f"v{i}.mp4"), frames, fps=8)
  (root / "broken.mp4").write_bytes(b"this is not an mp4 file")
  return root


def questions(n=14):
  out = []
  for i in range(n):
    vid = "broken" if i == 5 else f"v{i % 3}"
    choices = [] if i % 4 == 3 else ["dark", "mid", "bright"]
    answer = ["dark", "mid", "bright"][i % 3]
    out.append(
      annotations.VideoQA(
        qid=f"q{i}",
        video_id=vid,
        question=f"How bright is it? #{i}",
        choices=choices,
        answer=answer,
        answer_index=choices.index(answer) if choices else None,
      )
    )
  return out


def tools():
  def Find(video_clip, object_name):
    """Boxes of the brightest square, read from the decoded pixels."""
    frames = video_clip.frames
    cols = np.nonzero(frames[0].max(axis=(0, 2)) > 200)[0]
    return [
      {
        "frame": int(f),
        "label": object_name,
        "score": 0.9,
        "box": [int(cols[0]), 4, int(cols[-1]) + 1, 8],
      }
      for f in video_clip.frame_ids[:2]
    ]

  def select_answer(query, possible_answers, info):
    """Picks by the square's position."""
    x = info["ball"][0]["box"][0]
    options = possible_answers or ["dark", "mid", "bright"]
    return options[min(len(options) - 1, (x - 2) // 3)]

  return {"Find": Find, "select_answer": select_answer}


class ProgramLLM:
  """A program per question; question #7 gets chatter instead; raises on `fail_on`."""

  def __init__(self, fail_on=None, on_call=None):
    self.fail_on, self.on_call, self.calls = fail_on, on_call, 0

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    self.calls += 1
    if self.on_call:
      self.on_call(prompts)
    if self.fail_on and any(self.fail_on in p for p in prompts):
      raise LLMError("POST http://127.0.0.1:1/v1/chat/completions failed: refused")
    return ["No program, sorry." if "#7\n" in p else PROGRAM for p in prompts]


class TextLLM:
  """Rewrites (a rationale quoting the trace's numbers) and judges (Yes/No from the prompt)."""

  def __init__(self, on_call=None):
    self.on_call = on_call

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    if self.on_call:
      self.on_call(prompts)
    out = []
    for p in prompts:
      if "Predicted answer:" in p:
        out.append("Yes" if "bright" in p.split("Predicted answer:")[1][:20] else "No")
      elif "Rationale:" in p and "Trace:" in p:
        out.append("I look at " + p.split("Trace:")[1][:160].replace("\n", " ") + ".")
      else:
        out.append("Yes" if len(p) % 3 else "No")
    return out


def make_job(videos, *, pipeline, decode_workers=2, program_llm=None, run_program=None, **kw):
  from aotd_jax.agent.sandbox import run_program as sandbox_run
  from experts.clip import clip_args

  path = lambda qa: str(videos / f"{qa.video_id}.mp4")  # noqa: E731
  return job.CotJob(
    tools=tools(),
    make_args=clip_args(path, max_frames=4),
    run_program=run_program or sandbox_run,
    program_llm=program_llm or ProgramLLM(),
    cot_llm=TextLLM(),
    judge_llm=TextLLM(),
    logic_judge="llm",
    batch_size=4,
    num_threads=2,
    timeout_s=10.0,
    video_path=path,
    pipeline=pipeline,
    decode_workers=decode_workers,
    max_batches_in_flight=3,
    **kw,
  )


def run_records(cot_job, out_dir):
  paths = job.JobPaths.for_shard(str(out_dir), "00000-of-00001")
  with open(os.devnull, "w") as quiet:
    cot_job.run(questions(), paths, stream=quiet)
  return strip(job.RecordLog(paths.records).load())


def strip(records):
  for r in records:
    r.pop("timing")
  return records


def test_pipelined_and_prefetched_runs_write_the_records_of_the_plain_run(videos, tmp_path):
  plain = run_records(make_job(videos, pipeline=False), tmp_path / "plain")
  assert [r["qid"] for r in plain] == [q.qid for q in questions()]
  assert sum(r["kept"] for r in plain) >= 3 and not all(r["kept"] for r in plain)
  broken = plain[5]  # an undecodable video: a failed record naming the file; the job went on
  assert not broken["verdicts"]["executed"]
  assert "cannot load inputs of q5: VideoDecodeError" in broken["verdicts"]["execution_error"]
  assert "broken.mp4" in broken["verdicts"]["execution_error"]
  assert not plain[7]["verdicts"]["parsed"] and plain[6]["verdicts"]["executed"]
  assert {"program", "rewrite", "logic_judge"} <= set(plain[0]["llm_replies"])
  for name, decode_workers, llm_workers in (
    ("pipelined", 0, 1),
    ("prefetched", 2, 1),
    ("two_llm_batches", 2, 2),
  ):
    got = run_records(
      make_job(videos, pipeline=True, decode_workers=decode_workers, llm_workers=llm_workers),
      tmp_path / name,
    )
    assert got == plain, name


def test_llm_stages_overlap_execution(videos):
  """Batch 1's programs are written while batch 0's run, and batch 0's rationales while batch
  1's run (each wait below would time out if the stages ran one batch at a time)."""
  batch1_programs, batch0_rewrite, batch1_running = (threading.Event() for _ in range(3))
  overlapped = []

  def on_program(prompts):
    if any("#4\n" in p for p in prompts):
      batch1_programs.set()

  def run(source, tools_, args, *, timeout_s):
    if args["query"].endswith("#0"):
      overlapped.append(("program 1 during run 0", batch1_programs.wait(timeout=30)))
    if args["query"].endswith("#4"):
      batch1_running.set()
      overlapped.append(("rewrite 0 during run 1", batch0_rewrite.wait(timeout=30)))
    boxes = tools_["Find"](args["video_clip"], "ball")
    value = tools_["select_answer"](args["query"], args["possible_answers"], {"ball": boxes})
    return Execution(
      ok=True, value=value, trace=[ToolCall("Find", {"object_name": "ball"}, boxes, 0.0)]
    )

  def on_rewrite(prompts):
    if any("#0\n" in p for p in prompts) and any("Trace:" in p for p in prompts):
      batch0_rewrite.set()
      batch1_running.wait(timeout=30)

  cot_job = make_job(
    videos,
    pipeline=True,
    program_llm=ProgramLLM(on_call=on_program),
    run_program=run,
    times=StageTimes(),
  )
  cot_job.cot_llm.llm.on_call = on_rewrite
  records = [r for batch in cot_job._batches(questions(8)) for r in batch]
  assert [r["qid"] for r in records] == [f"q{i}" for i in range(8)]
  assert overlapped == [("program 1 during run 0", True), ("rewrite 0 during run 1", True)]
  assert cot_job.times.items["program"] == 2 and cot_job.times.items["execute"] == 2


def test_a_failing_stage_keeps_the_done_batches_and_a_rerun_completes_the_run(videos, tmp_path):
  """An LLM error in batch 2's program stage: batches 0-1 are in the log (in order), nothing
  after; the rerun skips them and ends with the uninterrupted run's records."""
  paths = job.JobPaths.for_shard(str(tmp_path / "run"), "00000-of-00001")
  quiet = open(os.devnull, "w")
  failing = make_job(videos, pipeline=True, program_llm=ProgramLLM(fail_on="#8\n"))
  with pytest.raises(LLMError, match="refused"):
    failing.run(questions(), paths, stream=quiet)
  assert [r["qid"] for r in job.RecordLog(paths.records).load()] == [f"q{i}" for i in range(8)]
  rerun = make_job(videos, pipeline=True)
  rerun.run(questions(), paths, stream=quiet)
  resumed = strip(job.RecordLog(paths.records).load())
  assert rerun.program_llm.llm.calls == 2  # only the two batches left
  assert resumed == run_records(make_job(videos, pipeline=False), tmp_path / "straight")


def test_a_broken_backend_stops_the_pipelined_run_after_the_good_batches(videos, tmp_path):
  def run(source, tools_, args, *, timeout_s):
    if args["query"].endswith(("#8", "#9", "#10", "#11")):  # batch 2: every program fails
      return Execution(
        ok=False,
        error="tool Find failed: RuntimeError: OOM",
        trace=[ToolCall("Find", {}, None, 0.0, error="tool Find failed: RuntimeError: OOM")],
      )
    return Execution(ok=True, value="mid", trace=[])

  paths = job.JobPaths.for_shard(str(tmp_path), "x")
  golden = questions(28)  # 7 batches: the stop at batch 2 leaves batches in flight
  for q in golden:
    q.meta["question_program"] = PROGRAM.strip("`").removeprefix("python\n")
  cot_job = make_job(videos, pipeline=True, run_program=run, program_source="gold")
  with pytest.raises(job.JobError, match="all 4 programs of the batch stopped in Find"):
    cot_job.run(golden, paths, stream=open(os.devnull, "w"))
  assert [r["qid"] for r in job.RecordLog(paths.records).load()] == [f"q{i}" for i in range(8)]
  # the stop in the consumer ended the stage and decode threads before run() returned
  assert not [t for t in threading.enumerate() if t.name.startswith(("stages-", "decode"))]


def test_the_cot_configs_pipeline_by_default_with_a_switch():
  from configs.toyworld import cot as toy
  from launch import generate_cots

  config = toy.base_config()
  assert generate_cots.pipeline_kwargs(config) == {
    "pipeline": True,
    "max_batches_in_flight": 4,
    "decode_workers": 2,
    "llm_workers": 1,
  }
  config.pipeline.enabled = False
  assert generate_cots.pipeline_kwargs(config)["pipeline"] is False
  with pytest.raises(job.JobError, match="decode_workers >= 0"):
    job.CotJob(tools={}, make_args=dict, run_program=None, program_source="gold", decode_workers=-1)


def test_a_question_clip_hands_its_decoded_frames_to_the_experts_without_copies(videos):
  from experts.clip import question_clip

  clip = question_clip(str(videos / "v1.mp4"), max_frames=8)
  window = clip.select(range(2, 6))
  assert np.shares_memory(clip.frames, window.frames)  # views of the decoded frames
  assert not window.frames.flags.writeable  # the store stays what was decoded
  np.testing.assert_array_equal(window.frames, clip.frames[2:6])
  picked = clip.select([1, 3, 5])  # not one run: gathered into its own array
  assert not np.shares_memory(picked.frames, clip.frames)
  np.testing.assert_array_equal(picked.frames, clip.frames[[1, 3, 5]])
