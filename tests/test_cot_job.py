"""The resumable CoT job: SIGKILL mid-run + restart == uninterrupted run; sharding; bad inputs."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from aotd_jax.agent import filters, job
from aotd_jax.data import annotations

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_QUESTIONS = 24

# Test tools, LLM and inputs for the launcher, importable by the subprocess (written to tmp).
FIXTURE = '''
import time

def make_tools(config):
  delay = config.get("delay", 0.0)

  def Filter_frames_with_act(video_clip, action):
    """Keeps the window where `action` happens."""
    time.sleep(delay)
    n = len(action)
    return {"type": "VideoClip", "start_frame": n % 8, "end_frame": n % 8 + 9}

  def Find(video_clip, object_name):
    """Boxes of `object_name`."""
    time.sleep(delay)
    s = video_clip["start_frame"]
    return [{"frame": s + i, "label": object_name, "score": 0.5, "box": [i, 2, i + 10, 12]}
            for i in range(2)]

  def select_answer(query, possible_answers, info):
    """Picks one of possible_answers."""
    return possible_answers[len(query) % len(possible_answers)]

  return {"Filter_frames_with_act": Filter_frames_with_act, "Find": Find,
          "select_answer": select_answer}


def make_args(config):
  def make(qa):
    return {"video_clip": {"type": "VideoClip", "start_frame": 0, "end_frame": 32},
            "query": qa.question, "possible_answers": list(qa.choices)}
  return make


class ProgramLLM:
  """Writes a program per question, as real models do: chatter, fences, sometimes nothing."""

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    out = []
    for p in prompts:
      q = p.rsplit("Question: ", 1)[1].split("\\n")[0]
      if "#3" in q:
        out.append("Sorry, I cannot write that program.")
        continue
      body = ("    clip = Filter_frames_with_act(video_clip, query)\\n"
              "    boxes = Find(clip, 'ball')\\n"
              "    answer = select_answer(query, possible_answers, {'ball': boxes})\\n")
      out.append("Here you go:\\n```python\\ndef execute_command(video_clip, query, "
                 "possible_answers):\\n" + body + "```\\nHope this helps.")
    return out


def make_llm():
  return ProgramLLM()
'''

CONFIG = '''
from configs.toyworld import cot as toy

def get_config(arg=None):
  c = toy.base_config()
  c.data.path = {ann!r}
  c.out_dir = {out!r}
  c.program_source = "llm"
  c.program_llm = toy.llm("factory", factory="cotjob_fixture:make_llm")
  c.tools_factory = "cotjob_fixture:make_tools"
  c.make_args = "cotjob_fixture:make_args"
  c.experts = {{"delay": float(arg or 0)}}
  c.examples = "toyworld"
  c.batch_size = 4
  c.timeout_s = 10.0
  c.progress_every_s = 0.0
  c.use_jax_processes = False
  c.pipeline.enabled = True  # the kill/resume test runs the pipelined job (the default)
  return c
'''


def star_questions(n):
  out = []
  for i in range(n):
    choices = [f"The object {i}{c}." for c in "abcd"]
    out.append(
      {
        "question_id": f"Interaction_T1_{i}",
        "video_id": f"v{i % 5}",
        "question": f"Which object moved? #{i}" + "?" * (i % 4),
        "answer": choices[(i * 7 + 4) % 4],
        "choices": [{"choice_id": j, "choice": c} for j, c in enumerate(choices)],
      }
    )
  return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("cotjob")
  (tmp_path / "cotjob_fixture.py").write_text(FIXTURE)
  ann = tmp_path / "train.json"
  ann.write_text(json.dumps(star_questions(NUM_QUESTIONS)))

  def config(name):
    path = tmp_path / f"config_{name}.py"
    path.write_text(CONFIG.format(ann=str(ann), out=str(tmp_path / name)))
    return path

  return tmp_path, config


@pytest.fixture(scope="module")
def straight_run(workspace):
  """One uninterrupted run (shared by the tests that read its outputs); returns its stderr."""
  tmp_path, config = workspace
  run = launch(tmp_path, config("straight"))
  _, err = run.communicate(timeout=300)
  assert run.returncode == 0, err
  return err


def launch(tmp_path, config, delay=0.0, **kw):
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
    "JAX_PLATFORMS": "cpu",
  }
  kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "launch.generate_cots",
      f"--config={config}:{delay}",
      "--shard_index=0",
      "--num_shards=1",
    ],
    cwd=ROOT,
    env=env,
    text=True,
    **kw,
  )


def outputs(out_dir):
  """(records without timing, ArrayRecord records, stats without the timings' summary) of a
  finished run."""
  import grain

  records = [json.loads(l) for l in (out_dir / "records-00000-of-00001.jsonl").open()]
  for r in records:
    r.pop("timing")
  source = grain.sources.ArrayRecordDataSource([str(out_dir / "cot-00000-of-00001.array_record")])
  kept = [json.loads(source[i])["qid"] for i in range(len(source))]
  stats = json.loads((out_dir / "stats-00000-of-00001.json").read_text())
  assert stats.pop("efficiency")["questions"] == len(records)
  return records, kept, stats


def test_sigkill_mid_run_then_restart_equals_uninterrupted_run(workspace, straight_run):
  tmp_path, config = workspace
  assert "q/s ETA" in straight_run and "logic" in straight_run  # the progress line

  log = tmp_path / "killed" / "records-00000-of-00001.jsonl"
  victim_log = tmp_path / "victim.log"
  with victim_log.open("w") as f:
    victim = launch(tmp_path, config("killed"), delay=0.1, stdout=f, stderr=f)
  deadline = time.time() + 120
  while (
    time.time() < deadline
    and victim.poll() is None
    and (not log.exists() or log.read_text().count("\n") < 4)
  ):
    time.sleep(0.01)
  os.kill(victim.pid, signal.SIGKILL)
  victim.wait(timeout=60)
  assert log.exists(), victim_log.read_text()[-3000:]
  lines = log.read_text().count("\n")
  assert victim.returncode == -signal.SIGKILL and 4 <= lines < NUM_QUESTIONS, lines
  with log.open("ab") as f:  # as if killed inside a write
    f.write(b'{"qid": "Interaction_T1_9", "conversa')
  resumed = launch(tmp_path, config("killed"))
  _, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  assert f"resuming: {lines} records" in err

  records, kept, stats = outputs(tmp_path / "killed")
  want_records, want_kept, want_stats = outputs(tmp_path / "straight")
  assert records == want_records  # same records, same order: nothing lost, no duplicates
  assert len({r["qid"] for r in records}) == NUM_QUESTIONS
  assert kept == want_kept and stats == want_stats
  assert 0 < stats["kept"] < NUM_QUESTIONS
  failed = [r for r in records if not r["verdicts"]["parsed"]]
  assert [r["qid"] for r in failed] == ["Interaction_T1_3"]  # counted, not a crash
  assert stats["parsed"] == NUM_QUESTIONS - 1


def test_record_format(workspace, straight_run):
  tmp_path, _ = workspace
  records, kept, _ = outputs(tmp_path / "straight")
  assert (tmp_path / "straight" / "report-00000-of-00001.html").exists()
  record = next(r for r in records if r["kept"])
  human, gpt = record["conversation"]
  assert human["from"] == "human" and gpt["from"] == "gpt"
  assert human["value"].startswith("<video>\n" + record["question"] + "\n(A) ")
  assert human["value"].endswith("Explain the rationale to answer the question.")
  assert gpt["value"] == record["rationale"] and gpt["value"].startswith("Looking for")
  assert record["verdicts"]["answer"]["passed"] and record["verdicts"]["logic"]["by"] == "rule"
  assert [c["name"] for c in record["trace"]["calls"]] == [
    "Filter_frames_with_act",
    "Find",
    "select_answer",
  ]
  assert record["type"] == "Interaction" and record["qid"] in kept
  wrong = next(r for r in records if r["verdicts"]["executed"] and not r["kept"])
  assert wrong["conversation"][0]["value"].endswith("give the best option.")
  assert wrong["conversation"][1]["value"].startswith("(")  # "(C) The object ..."
  assert wrong["rationale"] is None and wrong["verdicts"]["logic"]["by"] == "skip"
  # provenance: the manifest names the backends, each record names the manifest
  manifest = json.loads((tmp_path / "straight" / "manifest.json").read_text())
  assert {r["manifest"] for r in records} == {f"manifest.json#{manifest['id']}"}
  assert manifest["roles"]["program_llm"] == {
    "kind": "factory",
    "factory": "cotjob_fixture:make_llm",
  }
  assert manifest["roles"]["tools_factory"] == {"kind": "cotjob_fixture:make_tools"}
  assert manifest["shards"]["00000-of-00001"]["kept"] == len(kept)
  assert manifest["code"]["git"] and manifest["config"]["batch_size"] == 4
  assert record["llm_replies"]["program"].startswith("Here you go:")
  # the agent's efficiency: every record's seconds and memory, summed up in stats and manifest
  raw = [json.loads(l) for l in (tmp_path / "straight" / "records-00000-of-00001.jsonl").open()]
  for r in raw:
    assert r["timing"]["seconds"] > 0 and r["timing"]["peak_rss_mb"] >= r["timing"]["rss_mb"] > 0
  stats = json.loads((tmp_path / "straight" / "stats-00000-of-00001.json").read_text())
  assert stats["efficiency"] == job.efficiency(raw)
  assert stats["efficiency"]["peak_rss_mb"] == max(r["timing"]["peak_rss_mb"] for r in raw)
  assert manifest["shards"]["00000-of-00001"]["efficiency"] == stats["efficiency"]


def test_agent_efficiency_by_hand():
  records = [
    {"timing": {"seconds": 1.0, "rss_mb": 50.0, "peak_rss_mb": 80.0}},
    {
      "timing": {
        "seconds": 4.0,
        "rss_mb": 60.0,
        "peak_rss_mb": 90.0,
        "device_mb": 5.0,
        "device_peak_mb": 700.0,
      }
    },
    {"timing": {"seconds": 2.5, "peak_rss_mb": 85.0}},
    {"qid": "no timing"},
  ]
  assert job.efficiency(records) == {
    "questions": 4,
    "seconds": 7.5,
    "seconds_per_question": 1.875,
    "seconds_per_question_median": 1.75,
    "peak_rss_mb": 90.0,
    "device_peak_mb": 700.0,
  }
  assert job.efficiency([]) == {
    "questions": 0,
    "seconds": 0.0,
    "seconds_per_question": 0.0,
    "seconds_per_question_median": 0.0,
  }


def test_shards_partition_the_dataset():
  items = list(range(23))
  parts = [
    job.shard(items, s, 3, process_index=p, process_count=2) for s in range(3) for p in range(2)
  ]
  assert sorted(sum(parts, [])) == items and all(parts)
  assert job.shard_name(1, 3, 1, 2) == "00003-of-00006"
  with pytest.raises(job.JobError, match=r"--shard_index=3 must be in \[0, --num_shards=3\)"):
    job.shard(items, 3, 3)


def test_corrupt_record_log_names_file_and_line(tmp_path):
  path = tmp_path / "records.jsonl"
  path.write_text('{"qid": "a"}\nnot json\n{"qid": "b"}\n')
  with pytest.raises(job.JobError, match=r"records.jsonl line 2: not JSON"):
    job.RecordLog(str(path)).load()
  path.write_text('{"qid": "a"}\n[1, 2]\n')
  with pytest.raises(job.JobError, match=r"line 2: not a record"):
    job.RecordLog(str(path)).load()
  path.write_text('{"qid": "a"}\n{"qid": "b", "x": tru')
  assert job.RecordLog(str(path)).load() == [{"qid": "a"}]
  assert path.read_text() == '{"qid": "a"}\n'  # the partial line is cut before appending


def qa(qid, choices=("x", "y"), answer="y"):
  return annotations.VideoQA(
    qid=qid,
    video_id="v",
    question="What?",
    choices=list(choices),
    answer=answer,
    answer_index=list(choices).index(answer) if choices else None,
  )


class FakeRun:
  def __init__(self, value):
    self.value = value

  def __call__(self, source, tools, args, *, timeout_s):
    from aotd_jax.agent.sandbox import Execution
    from aotd_jax.agent.trace import ToolCall

    window = {"start_frame": 2, "end_frame": 6}
    return Execution(
      ok=True,
      value=self.value,
      trace=[ToolCall("Filter_frames_with_act", {"action": "go"}, window, 0.1)],
    )


class Judge:
  def __init__(self):
    self.prompts = []

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    self.prompts += prompts
    return ["Yes" if "puppy" in p or "Rationale:" in p else "No" for p in prompts]


GOLD = "def execute_command(video_clip, query, possible_answers):\n    return 'y'\n"


def test_open_ended_and_llm_logic_judge(tmp_path):
  judge = Judge()
  questions = [qa("o1", (), "dog"), qa("o2", (), "dog")]
  for q in questions:
    q.meta["question_program"] = GOLD
  cot_job = job.CotJob(
    tools={},
    make_args=lambda q: {},
    run_program=FakeRun("a puppy"),
    judge_llm=judge,
    program_source="gold",
    logic_judge="llm",
  )
  paths = job.JobPaths.for_shard(str(tmp_path), "00000-of-00001")
  stats = cot_job.run(questions, paths, stream=open(os.devnull, "w"))
  assert (stats.total, stats.answer_passed, stats.kept) == (2, 2, 2)
  assert sum("Predicted answer: a puppy" in p for p in judge.prompts) == 2
  assert sum("step-by-step and helpful" in p for p in judge.prompts) == 2
  no_judge = job.CotJob(
    tools={}, make_args=lambda q: {}, run_program=FakeRun("a puppy"), program_source="gold"
  )
  record = no_judge.process(questions[:1])[0]
  assert record["verdicts"]["answer"]["reason"] == "open-ended mismatch and no judge LLM"
  assert record["conversation"][1]["value"] == "dog"


def test_records_keep_every_raw_llm_reply():
  """A reply that does not parse can be read back from the record (issue 19, item 8)."""
  from fixtures.scripted_llm import ScriptedLLM

  program_llm = ScriptedLLM(["I cannot write code today.", "```python\n" + GOLD + "```"])
  judge = Judge()
  cot_job = job.CotJob(
    tools={},
    make_args=lambda q: {},
    run_program=FakeRun("a puppy"),
    program_llm=program_llm,
    judge_llm=judge,
    logic_judge="llm",
  )
  bad, good = cot_job.process([qa("p1", (), "dog"), qa("p2", (), "dog")])
  assert bad["llm_replies"] == {"program": "I cannot write code today."}
  assert not bad["verdicts"]["parsed"]
  assert good["llm_replies"]["program"].startswith("```python")
  assert (
    good["llm_replies"]["answer_judge"] == "Yes" and good["llm_replies"]["logic_judge"] == "Yes"
  )
  assert "rewrite" not in good["llm_replies"]  # the verbaliser wrote this rationale
  # a stage that made no call in this batch does not leak the previous batch's replies
  program_llm.replies.append("nope")
  (again,) = cot_job.process([qa("p3", (), "dog")])
  assert again["llm_replies"] == {"program": "nope"}


def test_failure_modes_are_counted_or_named(tmp_path):
  def broken_args(q):
    raise FileNotFoundError("/videos/v.mp4")

  no_gold = qa("g1")
  cot_job = job.CotJob(
    tools={}, make_args=broken_args, run_program=FakeRun("y"), program_source="gold"
  )
  bad_video = qa("g2")
  bad_video.meta["question_program"] = GOLD
  records = cot_job.process([no_gold, bad_video])
  assert records[0]["verdicts"]["parse_error"] == "no gold program in meta['question_program']"
  assert "cannot load inputs of g2: FileNotFoundError" in records[1]["verdicts"]["execution_error"]
  stats = filters.FilterStats()
  for r in records:
    stats.add_record(r)
  assert (stats.parsed, stats.executed) == (1, 0)
  with pytest.raises(job.JobError, match="duplicate question ids"):
    cot_job.run([qa("a"), qa("a")], job.JobPaths.for_shard(str(tmp_path), "x"))
  with pytest.raises(job.JobError, match="program_source='llm' needs a program LLM"):
    job.CotJob(tools={}, make_args=broken_args, run_program=FakeRun("y"))
  with pytest.raises(job.JobError, match="logic_judge='gpt'"):
    job.CotJob(
      tools={},
      make_args=broken_args,
      run_program=FakeRun("y"),
      program_source="gold",
      logic_judge="gpt",
    )


def test_a_shard_written_by_two_workers_counts_each_question_once(tmp_path):
  """The same worker started twice on one folder (a second terminal while the first still
  ran) appends every question twice: the kept CoTs went to the trainer twice, the pass rates
  counted them twice, and merge_cots refused the shard for its size. Each question now counts
  once, its first record kept, with a warning naming the log."""
  import grain

  from aotd_jax.agent import merge

  questions = [qa(f"d{i}") for i in range(4)]
  for q in questions:
    q.meta["question_program"] = GOLD
  paths = job.JobPaths.for_shard(str(tmp_path), "00000-of-00002")

  class SecondWorker(FakeRun):
    """While this worker runs d2, the other one appends its own record of d0."""

    def __call__(self, source, tools, args, *, timeout_s):
      lines = open(paths.records).read().splitlines() if os.path.exists(paths.records) else []
      if len(lines) == 2:
        with open(paths.records, "a") as f:
          f.write(lines[0] + "\n")
      return super().__call__(source, tools, args, timeout_s=timeout_s)

  cot_job = job.CotJob(
    tools={},
    make_args=lambda q: {},
    run_program=SecondWorker("y"),
    program_source="gold",
    batch_size=1,
  )
  stream = io.StringIO()
  stats = cot_job.run(questions, paths, stream=stream)
  assert "1 records repeat a question already in the log" in stream.getvalue()
  assert (stats.total, stats.kept) == (4, 4)
  source = grain.sources.ArrayRecordDataSource([paths.array_record])
  assert sorted(json.loads(source[i])["qid"] for i in range(len(source))) == [
    "d0",
    "d1",
    "d2",
    "d3",
  ]
  assert json.loads(open(paths.stats).read())["total"] == 4
  # the whole log again (both workers ran to the end): a rerun resumes on unique questions
  with open(paths.records) as f:
    text = f.read()
  with open(paths.records, "a") as f:
    f.write(text)
  stream = io.StringIO()
  stats = cot_job.run(questions, paths, stream=stream)
  assert (
    "resuming: 4 records" in stream.getvalue()
    and "6 records repeat a question" in stream.getvalue()
  )
  assert (stats.total, stats.kept) == (4, 4)
  # merged with the other worker's shard: what an unsharded run gives
  other = job.JobPaths.for_shard(str(tmp_path), "00001-of-00002")
  for i in range(4):
    job.RecordLog(other.records).append({"qid": f"e{i}", "kept": False, "verdicts": {}})
  open(other.stats, "w").write("{}")
  assert merge.merge(str(tmp_path)).total == 8
  got = [json.loads(line)["qid"] for line in open(tmp_path / "merged" / "records.jsonl")]
  assert got == ["d0", "e0", "d1", "e1", "d2", "e2", "d3", "e3"]


class RefusingLLM:
  """A rewrite LLM whose server refuses (HTTP 400) any prompt holding `marker`, as vLLM refuses
  a prompt longer than the model's context; a batch holding one is refused whole."""

  def __init__(self, marker="TOO LONG"):
    self.marker, self.calls = marker, 0

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    from aotd_jax.agent.llm import PromptRejected

    self.calls += 1
    if any(self.marker in str(p) for p in prompts):
      raise PromptRejected("POST http://llm/v1/chat/completions: HTTP 400 context too long")
    return ["We look at frames 2-6 and see it go, so the answer is y." for _ in prompts]


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_prompt_the_llm_server_refuses_fails_its_question_not_the_run(tmp_path, pipeline):
  """A server that refuses one question's prompt (HTTP 400: longer than its context) stopped the
  whole job, and the same command stopped again at the same batch, forever. That question now
  gets a record saying so (not kept; done on a rerun) and the others go on; a server refusing
  every prompt of a batch still stops the run."""
  questions = [qa(f"r{i}") for i in range(6)]
  questions[4].question = "What? TOO LONG"
  for q in questions:
    q.meta["question_program"] = GOLD
  kw = dict(
    tools={},
    make_args=lambda q: {},
    run_program=FakeRun("y"),
    program_source="gold",
    batch_size=3,
    pipeline=pipeline,
  )
  llm = RefusingLLM()
  paths = job.JobPaths.for_shard(str(tmp_path / "one"), "00000-of-00001")
  stream = io.StringIO()
  stats = job.CotJob(cot_llm=llm, **kw).run(questions, paths, stream=stream)
  records = {r["qid"]: r for r in job.RecordLog(paths.records).load()}
  assert sorted(records) == [f"r{i}" for i in range(6)] and stats.total == 6
  # counted as refused, not as a program that did not parse (the stats file and the report)
  assert (stats.refused, stats.parse_failed, stats.parsed) == (1, 0, 5)
  written = json.load(open(paths.stats))
  assert (written["refused"], written["parse_failed"]) == (1, 0)
  assert "1 refused by the LLM server" in stream.getvalue()
  refused = records["r4"]["verdicts"]["refused"]
  assert "refused this question's rewrite prompt" in refused and "HTTP 400" in refused
  assert not records["r4"]["kept"] and "question r4:" in stream.getvalue()
  assert all(records[f"r{i}"]["llm_replies"]["rewrite"] for i in (0, 1, 2, 3, 5))
  assert all("refused" not in records[f"r{i}"]["verdicts"] for i in (0, 1, 2, 3, 5))
  calls = llm.calls
  job.CotJob(cot_llm=llm, **kw).run(questions, paths, stream=io.StringIO())
  assert llm.calls == calls  # the rerun has nothing left to do
  # every prompt refused: a setting the server refuses whatever the prompt; the run stops
  for q in questions:
    q.question = "What? TOO LONG"
  other = job.JobPaths.for_shard(str(tmp_path / "all"), "00000-of-00001")
  from aotd_jax.agent.llm import PromptRejected

  with pytest.raises(PromptRejected, match="HTTP 400"):
    job.CotJob(cot_llm=RefusingLLM(), **kw).run(questions, other, stream=io.StringIO())
  assert not os.path.exists(other.records) or not open(other.records).read()


def test_launcher_config_errors_name_the_field():
  sys.path.insert(0, str(ROOT))
  from configs.toyworld import cot as toy
  from launch import generate_cots

  with pytest.raises(ValueError, match=r"config arg 'colour=red'.*'split'"):
    toy.get_config("colour=red")
  with pytest.raises(ValueError, match="llm kind 'gpt4'"):
    generate_cots.make_llm(toy.llm("gpt4"))
  with pytest.raises(ValueError, match="cannot resolve 'nosuch.module:thing'"):
    generate_cots.resolve("nosuch.module:thing")
  assert generate_cots.make_llm(toy.llm()) is None


def test_dataset_configs_build_their_backends(tmp_path):
  """configs/cot/{star,nextqa}.py bind the real experts named in the arg; oracles only when
  asked; vocabularies from the dataset (issue 19, items 4 and 5)."""
  sys.path.insert(0, str(ROOT))
  from configs.cot import nextqa, star
  from configs.toyworld import cot as toy
  from launch import generate_cots
  from aotd_jax.agent import llm

  paths = "owlv2=o,univtg=u.ckpt,clip=c,llava=l"
  c = star.get_config(f"ann=a.json,videos=v,classes=cls,{paths},llm=http://127.0.0.1:9/v1,model=m")
  assert (c.program_source, c.logic_judge, c.examples) == ("llm", "llm", "star")
  assert isinstance(generate_cots.make_llm(c.program_llm), llm.OpenAIChat)
  e = c.experts
  assert (e.detector.kind, e.detector.path) == ("owlv2", "o")
  assert (e.grounder.kind, e.grounder.path, e.grounder.clip_path) == ("univtg", "u.ckpt", "c")
  assert (e.action_recognizer.kind, e.video_qa.kind, e.video_qa.path) == ("llava", "llava", "l")
  assert (e.video_qa.num_frames, e.video_qa.choice_scoring, e.video_qa.prompt_format) == (
    32,
    "generate",
    "official",
  )
  assert e.video_qa.feature_cache_mb == e.action_recognizer.feature_cache_mb == 4096
  assert e.video_qa.prefix_cache_mb == e.action_recognizer.prefix_cache_mb == 16384
  assert (e.detector.threshold, e.detector.query_template, e.tools.find) == (
    0.2,
    "a photo of a {}",
    "crops",
  )
  assert (e.selector.kind, e.selector.base_url) == ("openai", "http://127.0.0.1:9/v1")
  assert e.object_vocabulary == "star:cls"
  with pytest.raises(ValueError, match="missing: univtg=, llava="):
    star.get_config("ann=a.json,videos=v,owlv2=o,clip=c,llm=http://x/v1")
  with pytest.raises(ValueError, match="llm= is required"):
    star.get_config(f"ann=a.json,videos=v,{paths}")
  oracle = star.get_config("ann=a.json,videos=v,experts=oracle,llm=http://x/v1,selector=keyword")
  assert oracle.experts.detector.kind == "oracle" and oracle.experts.ground_truth.path == "a.json"
  assert oracle.experts.selector.kind == "keyword"
  judged = star.get_config(
    f"ann=a.json,videos=v,{paths},llm=/models/coder,judge=http://j/v1,judge_model=llama-3.1-8b"
  )
  assert (
    judged.program_llm.kind == "local" and judged.program_llm.kwargs.model_dir == "/models/coder"
  )
  assert (judged.judge_llm.kind, judged.judge_llm.kwargs.model) == ("openai", "llama-3.1-8b")
  assert judged.experts.selector.to_dict() == {
    "kind": "llama",
    "path": "/models/coder",
    "base_url": "",
    "model": "",
    "api_key_env": "",
    "max_new_tokens": 8,
    "chat": True,
    "prompt": "official",
  }
  c = nextqa.get_config(f"ann=t.csv,videos=v,map=m.json,{paths},llm=http://x/v1")
  assert c.data.format == "nextqa" and dict(c.data.read_kwargs) == {"map_path": "m.json"}
  assert c.experts.object_vocabulary == "open" and c.experts.detector.kind == "owlv2"
  assert (
    nextqa.get_config(
      f"ann=t.csv,videos=v,{paths},llm=http://x/v1,vocab=names.txt"
    ).experts.object_vocabulary
    == "file:names.txt"
  )
  with pytest.raises(ValueError, match="NExT-QA has no scene graphs"):
    nextqa.get_config(f"ann=t.csv,videos=v,{paths},llm=http://x/v1,experts=oracle")
  assert toy.get_config("programs=llm").program_source == "llm"


def test_vocabularies_and_manifest_of_real_experts(tmp_path):
  """The manifest tells real experts from oracles, fingerprints local weights, and refuses a
  run that would mix backends in one output directory."""
  sys.path.insert(0, str(ROOT))
  from aotd_jax.agent import manifest
  from configs.cot import star
  from experts import registry

  names = tmp_path / "names.txt"
  names.write_text("# objects\ncup\nlaptop\n\n")
  assert registry._vocabulary({"object_vocabulary": f"file:{names}"}) == ["cup", "laptop"]
  assert registry._vocabulary({"object_vocabulary": "open"}) == []
  with pytest.raises(ValueError, match="object_vocabulary='colours'"):
    registry._vocabulary({"object_vocabulary": "colours"})
  for d in ("owl", "clip", "llava"):
    (tmp_path / d).mkdir()
    (tmp_path / d / "model.safetensors").write_bytes(d.encode() * 100)
  (tmp_path / "u.ckpt").write_bytes(b"univtg")
  arg = (
    f"ann=a.json,videos=v,owlv2={tmp_path}/owl,univtg={tmp_path}/u.ckpt,"
    f"clip={tmp_path}/clip,llava={tmp_path}/llava,llm=http://x/v1,model=m"
  )
  roles = registry.describe(star.get_config(arg).experts)
  assert manifest.vision_summary(roles) == "real"
  assert (
    roles["detector"]["weights"]["sha256"]
    == manifest.weights_fingerprint(str(tmp_path / "owl"))["sha256"]
  )
  assert roles["grounder"]["clip_weights"]["files"] == 1
  assert roles["selector"] == {
    "kind": "openai",
    "base_url": "http://x/v1",
    "model": "m",
    "prompt": "official",
  }
  oracle_roles = registry.describe(
    star.get_config("ann=a.json,videos=v,experts=oracle,llm=http://x/v1").experts
  )
  assert manifest.vision_summary(oracle_roles) == "oracle"
  out = tmp_path / "cots"
  ref = manifest.open_manifest(str(out), roles, {"max_frames": 32}, {"any": 1})
  assert manifest.open_manifest(str(out), roles, {"max_frames": 32}, {"any": 2}) == ref
  with pytest.raises(
    manifest.ManifestError,
    match=r"roles that differ: \['action_recognizer', "
    r"'detector', 'grounder', 'selector', "
    r"'tools', 'video_qa'\]",
  ):
    manifest.open_manifest(str(out), oracle_roles, {"max_frames": 32}, {})
  with pytest.raises(manifest.ManifestError, match="max_frames: 32 -> 8"):
    manifest.open_manifest(str(out), roles, {"max_frames": 8}, {})
  manifest.add_counts(str(out), "00000-of-00002", {"kept": 3})
  data = json.loads((out / "manifest.json").read_text())
  assert data["vision_experts"] == "real" and data["shards"] == {"00000-of-00002": {"kept": 3}}
  # the fingerprint moves with the weights
  before = manifest.weights_fingerprint(str(tmp_path / "owl"))["sha256"]
  (tmp_path / "owl" / "model.safetensors").write_bytes(b"other")
  assert manifest.weights_fingerprint(str(tmp_path / "owl"))["sha256"] != before


def test_resume_with_batching_flipped_is_accepted_and_recorded(tmp_path):
  """Cross-program batching does not change a record: a resume of a real-expert STAR job with
  `experts.coalesce` flipped reuses the manifest (same id, the switch recorded per run), and a
  manifest of 2026-12-04 that put the switch in its roles is still resumed."""
  sys.path.insert(0, str(ROOT))
  from aotd_jax.agent import manifest
  from configs.cot import star
  from launch import generate_cots

  config = star.get_config(
    "ann=a.json,videos=v,owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://x/v1,model=m"
  )
  out = str(tmp_path / "cots")
  roles, identity, info = generate_cots.provenance(config)
  assert info["batching"]["detector"] == {"coalesce": True, "coalesce_wait_s": 0.002}
  ref = manifest.open_manifest(out, roles, identity, {}, info)
  config.experts.coalesce = False  # --config.experts.coalesce=False on the resume
  roles_off, identity_off, info_off = generate_cots.provenance(config)
  assert info_off["batching"]["video_qa"] == {"coalesce": False}
  assert manifest.open_manifest(out, roles_off, identity_off, {}, info_off) == ref
  data = json.loads((tmp_path / "cots" / "manifest.json").read_text())
  assert [r["info"] for r in data["runs"]] == [info, info_off]
  # a content setting still refuses
  with pytest.raises(manifest.ManifestError, match="max_frames"):
    manifest.open_manifest(out, roles, {**identity, "max_frames": 3}, {}, info)
  # a manifest written with the switch inside its roles (hence its id)
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  old_roles = {r: {**e, "coalesce": True} if r in info["batching"] else e for r, e in roles.items()}
  old_id = manifest.manifest_id(old_roles, identity)
  (legacy / "manifest.json").write_text(
    json.dumps({"id": old_id, "roles": old_roles, "identity": identity, "shards": {}})
  )
  assert manifest.open_manifest(str(legacy), roles_off, identity, {}, info_off) == (
    f"manifest.json#{old_id}"
  )
  old_roles["detector"]["threshold"] = 0.9  # but not one whose backends differ
  (legacy / "manifest.json").write_text(
    json.dumps({"id": "x", "roles": old_roles, "identity": identity, "shards": {}})
  )
  with pytest.raises(manifest.ManifestError, match=r"roles that differ: \['detector'\]"):
    manifest.open_manifest(str(legacy), roles, identity, {}, info)


def test_kept_shards_are_the_trainers_dataset(tmp_path):
  """The job's `cot-*.array_record` shards are what the trainer reads: kept CoTs only, each with
  the question's window (the frames the experts saw), and an empty shard is a valid, empty
  source (issue 19, item 6)."""
  import glob

  from aotd_jax.data import pipeline

  windowed = qa("w1")
  windowed.start, windowed.end = 12.5, 30.0
  wrong = qa("w2", answer="x")  # the program answers 'y': not kept
  whole = qa("w3")
  for q in (windowed, wrong, whole):
    q.meta["question_program"] = GOLD
  cot_job = job.CotJob(
    tools={},
    make_args=lambda q: {},
    run_program=FakeRun("y"),
    program_source="gold",
    video_path=lambda q: f"videos/{q.video_id}.mp4",
  )
  quiet = open(os.devnull, "w")
  cot_job.run(
    [windowed, wrong, whole], job.JobPaths.for_shard(str(tmp_path), "00000-of-00002"), stream=quiet
  )
  cot_job.run(
    [qa("w4", answer="x")], job.JobPaths.for_shard(str(tmp_path), "00001-of-00002"), stream=quiet
  )
  shards = sorted(glob.glob(str(tmp_path / "cot-*.array_record")))
  assert [os.path.basename(s) for s in shards] == [
    "cot-00000-of-00002.array_record",
    "cot-00001-of-00002.array_record",
  ]
  first, empty = (pipeline.cot_source(s, video_root="/data") for s in shards)
  assert len(empty) == 0
  examples = {e["qid"]: e for e in (first[i] for i in range(len(first)))}
  assert sorted(examples) == ["w1", "w3"]
  assert (examples["w1"]["start"], examples["w1"]["end"]) == (12.5, 30.0)
  assert (examples["w3"]["start"], examples["w3"]["end"]) == (None, None)
  assert examples["w1"]["video_path"] == "/data/videos/v.mp4"
  record = next(
    r
    for r in job.RecordLog(str(tmp_path / "records-00000-of-00002.jsonl")).load()
    if r["qid"] == "w1"
  )
  assert examples["w1"]["assistant_text"] == record["rationale"]
  assert (
    json.loads((tmp_path / "stats-00001-of-00002.json").read_text())["array_record_records"] == 0
  )


def parse_flags(*argv):
  """The config as `launch.generate_cots` would get it from this command line."""
  from absl import flags
  from ml_collections import config_flags

  values, argv = flags.FlagValues(), ["generate_cots", *argv]
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def test_llm_selector_and_data_settings_from_the_command_line(tmp_path):
  """LLM backends, the selector, the NExT-QA map and the vocabulary are set with flags on any
  config, no new config file (issue 19, item 7)."""
  sys.path.insert(0, str(ROOT))
  from aotd_jax.agent import llm
  from launch import generate_cots

  replay = tmp_path / "replies.jsonl"
  replay.write_text("")
  toy_cfg = parse_flags(
    f"--config={ROOT}/configs/toyworld/cot.py:world={tmp_path}/w",
    "--config.cot_llm.kind=replay",
    f"--config.cot_llm.kwargs.path={replay}",
    "--config.program_llm.kind=local",
    "--config.program_llm.kwargs.model_dir=/models/coder",
    "--config.experts.selector.kind=openai",
    "--config.experts.selector.base_url=http://127.0.0.1:9/v1",
    "--config.experts.object_vocabulary=file:names.txt",
  )
  assert isinstance(generate_cots.make_llm(toy_cfg.cot_llm, "cot"), llm.Replay)
  assert generate_cots.set_kwargs(toy_cfg.program_llm) == {"model_dir": "/models/coder"}
  assert (toy_cfg.experts.selector.kind, toy_cfg.experts.selector.base_url) == (
    "openai",
    "http://127.0.0.1:9/v1",
  )
  assert toy_cfg.experts.object_vocabulary == "file:names.txt"
  paths = "owlv2=o,univtg=u.ckpt,clip=c,llava=l"
  star_arg = f"--config={ROOT}/configs/cot/star.py:ann=a.json,videos=v,{paths},llm=http://x/v1"
  # switching a server section to a local model: the server's settings must be cleared
  switched = parse_flags(
    star_arg,
    "--config.program_llm.kind=local",
    "--config.program_llm.kwargs.model_dir=/models/coder",
  )
  with pytest.raises(
    ValueError,
    match=r"program LLM section \(kind 'local'\) does not take "
    r"base_url, model \(set by --config.program_llm.kwargs"
    r".base_url",
  ):
    generate_cots.make_llm(switched.program_llm, "program")
  cleared = parse_flags(
    star_arg,
    "--config.program_llm.kind=local",
    "--config.program_llm.kwargs.model_dir=/models/coder",
    "--config.program_llm.kwargs.base_url=",
    "--config.program_llm.kwargs.model=",
    "--config.judge_llm.kwargs.model=llama-3.1-8b",
  )
  assert generate_cots.set_kwargs(cleared.program_llm) == {"model_dir": "/models/coder"}
  assert generate_cots.set_kwargs(cleared.judge_llm) == {
    "base_url": "http://x/v1",
    "model": "llama-3.1-8b",
  }
  nextqa_cfg = parse_flags(
    f"--config={ROOT}/configs/cot/nextqa.py:ann=t.csv,videos=v,{paths},llm=http://x/v1",
    "--config.data.read_kwargs.map_path=map.json",
    "--config.max_questions=3",
  )
  assert nextqa_cfg.data.read_kwargs.map_path == "map.json" and nextqa_cfg.max_questions == 3


def test_a_broken_backend_stops_the_run_instead_of_filling_the_records(tmp_path):
  """A selector (or any expert) whose backend raises on every call — a server down, a model
  without a chat template — stops the job with the tool and the error, writing nothing of
  that batch; a program's own bad arguments (ToolError) and lone failures do not (issue 19,
  item 8)."""
  from aotd_jax.agent.sandbox import run_program
  from experts import ToolError

  program = (
    "def execute_command(video_clip, query, possible_answers):\n"
    "    return select_answer(query, possible_answers, {})\n"
  )
  questions = [qa(f"b{i}") for i in range(4)]
  for q in questions:
    q.meta["question_program"] = program

  def tools(error):
    def select_answer(query, possible_answers, info):
      """Picks an option."""
      if error is not None:
        raise error
      return possible_answers[-1]

    return {"select_answer": select_answer}

  def make(error, **kw):
    return job.CotJob(
      tools=tools(error),
      make_args=lambda q: {
        "video_clip": None,
        "query": q.question,
        "possible_answers": list(q.choices),
      },
      run_program=run_program,
      program_source="gold",
      num_threads=1,
      **kw,
    )

  quiet = open(os.devnull, "w")
  paths = job.JobPaths.for_shard(str(tmp_path / "broken"), "00000-of-00001")
  broken = make(
    RuntimeError("LocalLlama: chat-message prompts need a tokenizer with a chat_template")
  )
  with pytest.raises(
    job.JobError,
    match=r"an expert backend is broken: all 4 programs of the "
    r"batch stopped in select_answer, whose backend raised "
    r"RuntimeError: LocalLlama: chat-message prompts",
  ):
    broken.run(questions, paths, stream=quiet)
  assert job.RecordLog(paths.records).load() == []  # a rerun redoes these questions
  # the program's own mistakes, or the guard switched off: records, no stop
  for name, cot_job in (
    ("tool_error", make(ToolError("select_answer: bad info"))),
    ("off", make(RuntimeError("down"), fail_fast_min=0)),
  ):
    stats = cot_job.run(questions, job.JobPaths.for_shard(str(tmp_path / name), "x"), stream=quiet)
    assert (stats.total, stats.executed) == (4, 0)
  # fewer failing programs than the threshold: one question alone is not a verdict
  lone = make(RuntimeError("down")).run(
    questions[:1], job.JobPaths.for_shard(str(tmp_path / "lone"), "x"), stream=quiet
  )
  assert (lone.total, lone.executed) == (1, 0)
  good = make(None).run(
    questions, job.JobPaths.for_shard(str(tmp_path / "good"), "x"), stream=quiet
  )
  assert good.executed == 4


def test_videos_not_where_the_job_looks_stop_the_run_instead_of_filling_the_records(tmp_path):
  """Every question of a batch failing to load its video (a videos folder in another layout
  than the reader's) stops the job, writing nothing of that batch: its failed records would
  count as done when rerun with the right folder. A few missing videos do not."""
  questions = [qa(f"v{i}") for i in range(4)]
  for q in questions:
    q.meta["question_program"] = GOLD

  def make(missing, **kw):
    def make_args(q):
      if q.qid in missing:
        raise FileNotFoundError(f"/videos/{q.qid}.mp4")
      return {}

    return job.CotJob(
      tools={}, make_args=make_args, run_program=FakeRun("y"), program_source="gold", **kw
    )

  quiet = open(os.devnull, "w")
  paths = job.JobPaths.for_shard(str(tmp_path / "all"), "x")
  everyone = {q.qid for q in questions}
  with pytest.raises(
    job.JobError,
    match=r"all 4 questions of the batch failed to load their inputs: cannot load inputs of v0: "
    r"FileNotFoundError: /videos/v0.mp4\. Nothing of this batch was written",
  ):
    make(everyone).run(questions, paths, stream=quiet)
  assert job.RecordLog(paths.records).load() == []
  some = make({"v1"}).run(
    questions, job.JobPaths.for_shard(str(tmp_path / "some"), "x"), stream=quiet
  )
  assert (some.total, some.executed) == (4, 3)
  off = make(everyone, fail_fast_min=0).run(
    questions, job.JobPaths.for_shard(str(tmp_path / "off"), "x"), stream=quiet
  )
  assert (off.total, off.executed) == (4, 0)


def test_records_keep_the_selectors_raw_replies():
  """select_answer snaps the selector LLM's reply to an option; the record keeps the raw reply
  of every call (cached ones too), so a selector that rambles can be seen (issue 19, item 8)."""
  import experts
  from aotd_jax.agent.sandbox import run_program
  from experts.backends.llm import LLMSelector
  from fixtures.scripted_llm import ScriptedLLM

  selector = ScriptedLLM(["Hmm, probably the second one: (B)", "I refuse."])
  tools = experts.Toolbox(selector=LLMSelector(selector)).tools()
  program = (
    "def execute_command(video_clip, query, possible_answers):\n"
    "    first = select_answer(query, possible_answers, {'a': 1})\n"
    "    again = select_answer(query, possible_answers, {'a': 1})\n"
    "    return select_answer(query, possible_answers, {'b': 2})\n"
  )
  q = qa("s1")
  q.meta["question_program"] = program
  cot_job = job.CotJob(
    tools={"select_answer": tools["select_answer"]},
    make_args=lambda q: {
      "video_clip": None,
      "query": q.question,
      "possible_answers": list(q.choices),
    },
    run_program=run_program,
    program_source="gold",
  )
  (record,) = cot_job.process([q])
  assert record["llm_replies"]["select_answer"] == [
    "Hmm, probably the second one: (B)",
    "Hmm, probably the second one: (B)",
    "I refuse.",
  ]
  assert record["verdicts"]["executed"]


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_their_shards_and_merge_into_the_unsharded_run(workspace, straight_run):
  """Two JAX processes (a local coordinator, as on a pod) run the launcher without shard flags:
  each writes its own shard; `launch.merge_cots` gives the unsharded run's records, kept CoTs
  and stats."""
  import grain

  tmp_path, config = workspace
  path, port = config("pair"), _free_port()
  procs = []
  for pid in range(2):
    env = {
      **os.environ,
      "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
      "JAX_PLATFORMS": "cpu",
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(pid),
    }
    procs.append(
      subprocess.Popen(
        [
          sys.executable,
          "-m",
          "launch.generate_cots",
          f"--config={path}",
          "--config.use_jax_processes=True",
          "--config.distributed=True",
          "--config.report_samples=0",
        ],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
      )
    )
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  pair = tmp_path / "pair"
  shards = sorted(p.name for p in pair.glob("records-*.jsonl"))
  assert shards == ["records-00000-of-00002.jsonl", "records-00001-of-00002.jsonl"]
  sizes = [len(list((pair / s).open())) for s in shards]
  assert sizes == [NUM_QUESTIONS // 2] * 2
  r = subprocess.run(
    [sys.executable, "-m", "launch.merge_cots", f"--cot_dir={pair}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0, r.stderr
  merged = pair / "merged"
  records = [json.loads(l) for l in (merged / "records.jsonl").open()]
  for rec in records:
    rec.pop("timing")
  want_records, want_kept, want_stats = outputs(tmp_path / "straight")
  assert records == want_records  # same records, the dataset's order
  source = grain.sources.ArrayRecordDataSource([str(merged / "cot.array_record")])
  assert [json.loads(source[i])["qid"] for i in range(len(source))] == want_kept
  merged_stats = json.loads((merged / "stats.json").read_text())
  assert merged_stats.pop("efficiency")["questions"] == NUM_QUESTIONS
  assert merged_stats == want_stats
  assert (merged / "manifest.json").read_text() == (pair / "manifest.json").read_text()


def _shard_dir(tmp_path, sizes, *, finished=None, qids=None):
  tmp_path.mkdir(parents=True, exist_ok=True)
  n, i = len(sizes), 0
  for k, size in enumerate(sizes):
    name = job.shard_name(k, n)
    rows = []
    for _ in range(size):
      rows.append(json.dumps({"qid": (qids or {}).get(i, f"q{i}"), "kept": False, "verdicts": {}}))
      i += 1
    (tmp_path / f"records-{name}.jsonl").write_text("".join(r + "\n" for r in rows))
    if finished is None or k in finished:
      (tmp_path / f"stats-{name}.json").write_text("{}")
  return str(tmp_path)


def test_merge_refuses_shards_that_are_not_one_whole_run(tmp_path):
  from aotd_jax.agent import merge

  with pytest.raises(job.JobError, match="no records-"):
    merge.merge(str(tmp_path / "empty"))
  with pytest.raises(job.JobError, match=r"shard 00001-of-00002 has not finished \(no stats-"):
    merge.merge(_shard_dir(tmp_path / "unfinished", [2, 2], finished={0}))
  with pytest.raises(
    job.JobError, match="shard 00000-of-00002 holds 3 records; 3 questions over 2 workers give it 2"
  ):
    merge.merge(_shard_dir(tmp_path / "short", [3, 0]))
  with pytest.raises(job.JobError, match="'q0' is in shards 00000-of-00002 and 00001-of-00002"):
    merge.merge(_shard_dir(tmp_path / "dup", [2, 2], qids={2: "q0"}))
  missing = _shard_dir(tmp_path / "missing", [2, 2, 2])
  os.remove(os.path.join(missing, "records-00001-of-00003.jsonl"))
  with pytest.raises(job.JobError, match=r"shard 00001-of-00003 is missing"):
    merge.merge(missing)
  mixed = _shard_dir(tmp_path / "mixed", [2, 2])
  (tmp_path / "mixed" / "records-00000-of-00003.jsonl").write_text("")
  with pytest.raises(job.JobError, match="2 different splits"):
    merge.merge(mixed)
  bad = _shard_dir(tmp_path / "bad", [1, 1])
  (tmp_path / "bad" / "records-00001-of-00002.jsonl").write_text("{oops\n")
  with pytest.raises(job.JobError, match=r"records-00001-of-00002.jsonl line 1: not JSON"):
    merge.merge(bad)
  merge.merge(_shard_dir(tmp_path / "odd", [3, 2]))  # 5 questions over 2 workers is whole
  assert [json.loads(l)["qid"] for l in (tmp_path / "odd" / "merged" / "records.jsonl").open()] == [
    "q0",
    "q3",
    "q1",
    "q4",
    "q2",
  ]


def test_shard_flags_go_together():
  from launch import generate_cots
  import ml_collections

  config = ml_collections.ConfigDict({"use_jax_processes": False})
  with pytest.raises(ValueError, match="--shard_index and --num_shards go together"):
    generate_cots.worker(config, 1, None)
  assert generate_cots.worker(config, None, None) == (0, 1, 0, 1)
  assert generate_cots.worker(config, 2, 3) == (2, 3, 0, 1)


def test_a_bucket_out_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(job.JobError, match="config.out_dir=gs://b/cots: the record log appends"):
    job.check_out_dir("gs://b/cots")
  cot_job = job.CotJob(tools={}, make_args=lambda qa: {}, run_program=None, program_source="gold")
  with pytest.raises(job.JobError, match="gs://b/cots/records-x.jsonl"):
    cot_job.run([qa("a")], job.JobPaths.for_shard("gs://b/cots", "x"))
  assert not (tmp_path / "gs:").exists()


def test_missing_inputs_are_listed_before_anything_is_written(tmp_path):
  """Every path the real config reads is checked: the videos, each expert's checkpoint, a
  local LLM directory; [] once they exist."""
  sys.path.insert(0, str(ROOT))
  from configs.cot import star
  from launch import generate_cots

  t = tmp_path
  arg = (
    f"ann={t / 'a.json'},videos={t / 'v'},classes={t / 'cls'},owlv2={t / 'o'},"
    f"univtg={t / 'u.ckpt'},clip={t / 'c'},llava={t / 'l'},llm={t / 'llm'}"
  )
  c = star.get_config(arg)
  missing = generate_cots.missing_inputs(c)
  assert missing == [
    f"data.video_dir={t / 'v'} (the videos)",
    f"experts.detector.path={t / 'o'} (owlv2)",
    f"experts.grounder.path={t / 'u.ckpt'} (univtg)",
    f"experts.grounder.clip_path={t / 'c'} (univtg)",
    f"experts.action_recognizer.path={t / 'l'} (llava)",
    f"experts.video_qa.path={t / 'l'} (llava)",
    f"experts.selector.path={t / 'llm'} (llama)",
    f"program_llm.kwargs.model_dir={t / 'llm'} (local)",
    f"cot_llm.kwargs.model_dir={t / 'llm'} (local)",
    f"judge_llm.kwargs.model_dir={t / 'llm'} (local)",
  ]
  for d in ("v", "o", "c", "l", "llm"):
    (t / d).mkdir()
  (t / "u.ckpt").write_bytes(b"")
  assert generate_cots.missing_inputs(c) == []
