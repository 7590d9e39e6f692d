"""The rehearsal (`python -m launch.rehearse`): its builders, its stub LLM server, and the
whole real path end to end at toy sizes, every student's stages in one run (slow)."""

import json
import os
import subprocess
import sys

import pytest

from aotd_jax.rehearsal import stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT_STAGES = ("distill", "export", "hf_load", "eval_star_mc")


def test_videos_have_a_realistic_length_and_the_readers_parse_the_files(tmp_path):
  from aotd_jax.data import annotations
  from aotd_jax.rehearsal import datasets

  star = datasets.star(str(tmp_path / "star"), questions=3, videos=1)
  nq = datasets.nextqa(str(tmp_path / "nq"), questions=3, videos=2)
  frames, fps = datasets.video_info(os.path.join(star["videos"], "RH000.mp4"))
  assert fps == 30.0 and frames >= 900  # >= 30 s at 30 fps
  qs = list(annotations.read("star", star["ann"]))
  assert len(qs) == 3 and qs[0].answer in qs[0].choices and qs[0].meta["situations"]
  rows = list(annotations.read("nextqa", nq["ann"], map_path=nq["map"]))
  assert len(rows) == 3 and len(rows[0].choices) == 5
  assert os.path.isfile(os.path.join(nq["videos"], rows[1].meta["video_path"]))
  assert sorted(os.listdir(star["classes"]))[0] == "action_classes.txt"


def test_stub_server_answers_each_prompt_kind_over_http():
  from aotd_jax.agent import cot, filters, programs
  from aotd_jax.agent.llm import OpenAIChat
  from aotd_jax.rehearsal.stub_server import Replies, StubServer, classify
  from experts.backends.llm import select_prompt

  replies = Replies({"Which cup?": "The red cup.", "Which box?": "Big."}, wrong={"Which box?"})
  with StubServer(replies) as server:
    llm = OpenAIChat(server.url, "stub-coder")
    got = llm.complete(
      [
        select_prompt("Which cup?", ["The blue cup.", "The red cup."], "x"),
        select_prompt("Which box?", ["Big.", "Small."], "x"),
        "what is the capital of France?",
      ],
      max_new_tokens=8,
    )
  assert got == ["(B)", "(B)", "unrecognised prompt"]
  assert replies.counts == {"selector": 2, "unknown": 1}
  prompt = programs.build_program_prompt(
    "Which cup?", ["The blue cup.", "The red cup."], {}, examples=""
  )
  assert classify(prompt) == "program"
  program = programs.parse_program(replies.reply(prompt))
  assert program.ok and "select_answer" in program.source
  rewrite = cot.rewrite_prompt("Which cup?", ["a", "b"], {"calls": []}, "a")
  assert classify(rewrite) == "rewrite" and replies.reply(rewrite).endswith("answer is a.")
  logic = programs.read_prompt_file("judge_logic.txt")
  assert classify(logic) == "judge_logic"
  assert filters.parse_yes_no(replies.reply(logic)) is True
  official = programs.read_prompt_file("judge_logic_official.txt")
  assert classify(official) == "judge_logic_official" and replies.reply(official) == "True"
  rewrite = programs.read_prompt_file("cot_rewrite_official.txt").format(
    question="Which cup?",
    choices="(A) The blue cup. (B) The red cup.",
    program="def execute_command(video_clip, query, possible_answers): ...",
    trace="1. Find -> a cup",
  )
  assert classify(rewrite) == "rewrite_official"
  assert replies.reply(rewrite) == "I see that 1. Find -> a cup. So the answer is The red cup."


def test_stub_server_answers_after_its_latency_and_in_parallel():
  """`latency_s` delays every chat reply by that much, each request in its own thread: four
  requests sent at once come back after about one latency, not four; a negative one is refused."""
  import concurrent.futures
  import time

  from aotd_jax.agent.llm import OpenAIChat
  from aotd_jax.rehearsal.stub_server import Replies, StubServer

  with pytest.raises(ValueError, match="latency_s"):
    StubServer(Replies(), latency_s=-1.0)
  latency = 0.3
  with StubServer(Replies(), latency_s=latency) as server:
    llm = OpenAIChat(server.url, "stub-coder")
    t0 = time.perf_counter()
    assert llm.complete(["hello"], max_new_tokens=4) == ["unrecognised prompt"]
    one = time.perf_counter() - t0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      t0 = time.perf_counter()
      got = list(pool.map(lambda p: llm.complete([p], max_new_tokens=4), ["a", "b", "c", "d"]))
      four = time.perf_counter() - t0
  assert got == [["unrecognised prompt"]] * 4
  assert one >= latency
  assert latency <= four < 3 * latency, four  # in parallel (4 in turn would take 4 x latency)


def test_checkpoints_load_in_their_readers(tmp_path):
  from aotd_jax.hf.univtg import load_univtg
  from aotd_jax.rehearsal import checkpoints

  path = checkpoints.univtg(str(tmp_path / "model_best.ckpt"))
  model = load_univtg(path)
  assert model.config.v_feat_dims == (12,) and model.config.t_feat_dim == 16
  llama = checkpoints.llama(str(tmp_path / "coder"))
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(llama)
  text = tok.apply_chat_template(
    [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
  )
  assert text.endswith("assistant<|end_header_id|>\n\n")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
  """One run of the whole rehearsal: LLaVA-NeXT-Video's stages, then every other student's
  distill / export / hf_load / eval, which reuse the same CoT stages (one run, not two)."""
  workdir = tmp_path_factory.mktemp("rehearsal")
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.rehearse",
      f"--workdir={workdir}",
      f"--students={','.join(stages.STUDENTS)}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=2400,
  )
  result = json.loads((workdir / "rehearsal.json").read_text())
  return workdir, r, result, {row["stage"]: row for row in result["stages"]}


def _student_stage(name: str) -> bool:
  return any(name.endswith(f"_{student}") for student in stages.STUDENTS)


@pytest.mark.slow
def test_rehearsal_end_to_end(rehearsal):
  """Every stage of the real path passes at toy sizes. A stage that reports `waiting` or `gap`
  fails the test."""
  _, r, result, rows = rehearsal
  lnv = {k: v for k, v in rows.items() if not _student_stage(k)}
  bad = {k: (v["status"], v.get("detail")) for k, v in lnv.items() if v["status"] != "ok"}
  assert not bad, f"{bad}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
  assert len(lnv) >= 14, sorted(lnv)
  assert rows["cot_star"]["figures"]["kept"] >= 1
  assert rows["distill"]["figures"]["rationale_tokens"] > 0
  assert result["llm_requests"].get("unknown", 0) == 0
  assert (r.returncode == 0) == result["ok"]


@pytest.mark.slow
def test_other_students_rehearse_end_to_end(rehearsal):
  """LLaVA-OneVision and Qwen2-VL: their production configs distil tiny checkpoints that
  transformers' own classes wrote (on the CoT stages' records), the exports reload in
  transformers with the trained model's logits, and `launch.evaluate` runs them unchanged."""
  workdir, r, _, rows = rehearsal
  only = ["cot_star", "cot_nextqa"] + [f"{n}_{s}" for s in stages.STUDENTS for n in STUDENT_STAGES]
  assert set(only) <= set(rows), sorted(rows)
  bad = {k: (rows[k]["status"], rows[k].get("detail")) for k in only if rows[k]["status"] != "ok"}
  assert not bad, f"{bad}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
  for student in stages.STUDENTS:
    assert rows[f"distill_{student}"]["figures"]["rationale_tokens"] > 0
    parity = json.loads((workdir / "eval" / f"export_parity_{student}.json").read_text())
    want = {
      "onevision7b": "LlavaOnevisionForConditionalGeneration",
      "qwen2vl7b": "Qwen2VLForConditionalGeneration",
    }[student]
    assert parity["architecture"] == want and parity["max_abs_diff"] < 1e-4
    assert parity["tensors_changed_by_training"] > 0 and not parity["vision_tower_changed"]
    evaluated = json.loads((workdir / "eval" / f"eval_star_mc_{student}.json").read_text())
    assert len(evaluated["outputs"]) == 4


# A docs command that the rehearsal replaces (the LLM server: the stub server stands in).
EXTERNAL = {("external", "vllm"), ("python -m", "sglang.launch_server")}


def test_reproduce_commands_are_rehearsed():
  """Every command in docs/reproduce.md is a rehearsal stage's command (sizes and paths
  aside), and every stage that runs a launcher is in the docs."""
  plan = stages.placeholder_plan()
  rehearsed = {stages.signature(s.command): s.name for s in plan}
  with open(os.path.join(ROOT, "docs", "reproduce.md")) as f:
    commands = stages.docs_commands(f.read())
  assert len(commands) >= 10
  documented = set()
  for argv in commands:
    if argv[0] == "python" and argv[1] == "-m" and argv[2] == "sglang.launch_server":
      continue
    sig = stages.signature(argv)
    if sig in EXTERNAL:
      continue
    assert sig in rehearsed, (
      f"docs/reproduce.md: {' '.join(argv)[:200]} is not a rehearsal "
      f"command:\n{sig}\nrehearsed: {sorted(rehearsed.values())}"
    )
    documented.add(sig)
  # hf_load (and each student's) is the rehearsal's own check (transformers loads the export)
  missing = {
    s.name
    for s in plan
    if stages.signature(s.command) not in documented and s.base_name() != "hf_load"
  }
  assert not missing, f"rehearsal stages not in docs/reproduce.md: {sorted(missing)}"


def test_signature_ignores_values_and_sizes_but_not_flags():
  from aotd_jax.rehearsal.stages import signature

  a = signature(
    [
      "python",
      "-m",
      "launch.train",
      "--config=configs/distill/lnv7b.py:h100x8,hf_dir=/a,datasets=star",
      "--workdir=/w",
    ]
  )
  b = signature(
    [
      "python",
      "-m",
      "launch.train",
      "--config=configs/distill/lnv7b.py:tpu_v5p_128,hf_dir=/b,datasets=star+nextqa",
      "--workdir=gs://x",
    ]
  )
  assert a == b
  assert a != signature(
    [
      "python",
      "-m",
      "launch.train",
      "--config=configs/distill/lnv7b.py:h100x8,hf_dir=/a",
      "--workdir=/w",
    ]
  )
  assert a != signature(
    [
      "python",
      "-m",
      "launch.train",
      "--config=configs/toyworld/distill.py:h100x8,hf_dir=/a,datasets=star",
      "--workdir=/w",
    ]
  )
  assert (
    signature(["python", "-m", "aotd_jax.hf", "convert", "--hf_dir=a"])[0] == "aotd_jax.hf convert"
  )
