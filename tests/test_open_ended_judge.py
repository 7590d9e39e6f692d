"""The open-ended LLM judge: reply parsing, scoring, and the launcher over an OpenAI-compatible
server, recorded and replayed."""

import http.server
import json
import pathlib
import subprocess
import sys
import threading

import pytest

from aotd_jax.eval import open_ended

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  "reply, want",
  [
    ("{'pred': 'yes', 'score': 4}", (True, 4.0)),
    ('Sure! {"pred": "no", "score": 1}', (False, 1.0)),
    ("pred: Yes, score: 5", (True, 5.0)),
    ("{'pred': 'yes', 'score': 9}", (True, 5.0)),
    ("{'pred': 'no', 'score': -2}", (False, 0.0)),
    ("I think it matches.", None),
    ("{'pred': 'maybe', 'score': 3}", None),
    ("{'pred': 'yes'}", None),
  ],
)
def test_parse_reply(reply, want):
  assert open_ended.parse_reply(reply) == want


class Scripted:
  """An LLM that answers from a list and keeps the prompts it saw."""

  def __init__(self, replies):
    self.replies, self.prompts = list(replies), []

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    self.prompts.extend(prompts)
    return [self.replies.pop(0) for _ in prompts]


ITEMS = [
  dict(qid=str(i), question=f"what is in the box {i}", answer="a cat", prediction=p)
  for i, p in enumerate(["a cat", "cat", "a dog", "nothing"])
]


def test_accuracy_score_and_unparsed_are_exact():
  llm = Scripted(
    [
      "{'pred': 'yes', 'score': 5}",
      "{'pred': 'yes', 'score': 4}",
      "{'pred': 'no', 'score': 1}",
      "no idea",
    ]
  )
  out = open_ended.judge_answers(ITEMS, llm, batch_size=3)
  assert out["accuracy"] == 0.5 and out["score"] == 2.5
  assert out["num_questions"] == 4 and out["unparsed"] == 1
  assert [j["correct"] for j in out["judgements"]] == [True, True, False, False]
  assert out["judgements"][3]["reply"] == "no idea" and not out["judgements"][3]["parsed"]
  content = llm.prompts[2][0]["content"]
  assert "Correct answer: a cat" in content and "Predicted answer: a dog" in content
  assert "what is in the box 2" in content


def test_bad_items_and_reply_counts_are_named():
  with pytest.raises(ValueError, match=r"item 0 \(qid '7'\) lacks \['prediction'\]"):
    open_ended.judge_answers([dict(qid="7", question="q", answer="a")], Scripted([]))
  with pytest.raises(ValueError, match="judge returned 0 replies for 1 prompts"):
    open_ended.judge_answers(ITEMS[:1], type("Empty", (), {"complete": lambda *a, **k: []})())


class JudgeServer:
  """OpenAI-compatible judge: 'yes' when the prediction line contains 'cat'."""

  def __init__(self):
    self.requests = 0
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        outer.requests += 1
        text = body["messages"][-1]["content"]
        predicted = text.split("Predicted answer:")[1].split("\n")[0]
        reply = (
          "{'pred': 'yes', 'score': 5}" if "cat" in predicted else "{'pred': 'no', 'score': 0}"
        )
        payload = json.dumps(
          {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


def _launch(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.judge_open_ended", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


def test_launcher_judges_records_and_replays(tmp_path):
  q = [
    {"video_name": f"vid{i}", "question": f"what is in the box {i}", "question_id": f"v_{i}"}
    for i in range(3)
  ]
  a = [{"question_id": f"v_{i}", "answer": "cat", "type": 3} for i in range(3)]
  (tmp_path / "test_q.json").write_text(json.dumps(q))
  (tmp_path / "test_a.json").write_text(json.dumps(a))
  outputs = [
    {"qid": "v_0", "output": "a cat"},
    {"qid": "v_1", "output": "a dog"},
    {"qid": "v_2", "output": "the cat"},
  ]
  (tmp_path / "eval.json").write_text(json.dumps({"outputs": outputs}))
  server = JudgeServer()
  try:
    common = [
      f"--eval={tmp_path}/eval.json",
      "--format=activitynet_qa",
      f"--annotations={tmp_path}/test_q.json",
    ]
    r = _launch(
      *common,
      f"--llm={server.url}",
      "--model=judge",
      f"--record={tmp_path}/replies.jsonl",
      f"--out={tmp_path}/W/eval/judged.json",  # a folder made by the launcher
    )
    assert r.returncode == 0, r.stderr[-2000:]
    judged = json.loads((tmp_path / "W" / "eval" / "judged.json").read_text())
    assert judged["accuracy"] == pytest.approx(2 / 3) and judged["score"] == pytest.approx(10 / 3)
    assert [j["correct"] for j in judged["judgements"]] == [True, False, True]
    assert server.requests == 3
    # re-scored from the recording, without the server
    r = _launch(*common, f"--replay={tmp_path}/replies.jsonl", f"--out={tmp_path}/again.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "again.json").read_text())["judgements"] == judged["judgements"]
    assert server.requests == 3
  finally:
    server.httpd.shutdown()
    server.httpd.server_close()
  # an output whose qid is not in the annotations is named
  (tmp_path / "bad.json").write_text(json.dumps({"outputs": [{"qid": "v_9", "output": "x"}]}))
  r = _launch(
    f"--eval={tmp_path}/bad.json",
    "--format=activitynet_qa",
    f"--annotations={tmp_path}/test_q.json",
    f"--replay={tmp_path}/replies.jsonl",
  )
  assert r.returncode != 0 and "outputs[0] qid 'v_9' is not in the annotations" in r.stderr


class FlakyJudge:
  """A judge server on the real ActivityNet-QA answers: 'yes' when the prediction is the
  answer. From request `down_at` on, every request is refused (HTTP 404, as a server restarted
  with another model answers; not retried) until `down_at` is cleared."""

  def __init__(self, answers: dict[str, str]):
    self.requests, self.down_at, self.lock = 0, None, threading.Lock()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with outer.lock:
          outer.requests += 1
          down = outer.down_at is not None and outer.requests >= outer.down_at
        if down:
          self.send_response(404)
          self.end_headers()
          self.wfile.write(b'{"error": "model not found"}')
          return
        text = body["messages"][-1]["content"]
        answer = text.split("Correct answer:")[1].split("\n")[0].strip()
        predicted = text.split("Predicted answer:")[1].split("\n")[0].strip()
        reply = (
          "{'pred': 'yes', 'score': 5}" if answer == predicted else "{'pred': 'no', 'score': 1}"
        )
        payload = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


def test_launcher_keeps_judged_batches_and_resumes_after_the_server_goes_down(tmp_path):
  """A judge server that stops answering midway (the real ActivityNet-QA val files) used to
  lose every judged answer: the results were written only at the end. Each batch's judgements
  are now appended to `<out>.rows.jsonl`, and the same command judges only the rest."""
  real = ROOT / "tests" / "fixtures" / "real" / "activitynet_qa"
  questions = json.loads((real / "val_q.json").read_text())[:40]
  answers = {a["question_id"]: a["answer"] for a in json.loads((real / "val_a.json").read_text())}
  # half right, half wrong
  outputs = [
    {"qid": q["question_id"], "output": answers[q["question_id"]] if i % 2 else "purple"}
    for i, q in enumerate(questions)
  ]
  (tmp_path / "eval.json").write_text(json.dumps({"outputs": outputs}))
  server = FlakyJudge(answers)
  out = tmp_path / "judged.json"
  log = tmp_path / "judged.json.rows.jsonl"
  args = [
    f"--eval={tmp_path}/eval.json",
    "--format=activitynet_qa",
    f"--annotations={real}/val_q.json",
    f"--llm={server.url}",
    "--model=judge",
    "--batch_size=8",
    f"--out={out}",
  ]
  try:
    server.down_at = 21  # batches 1-2 answered, batch 3 refused
    r = _launch(*args)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "HTTP 404" in r.stderr and f"answers judged so far are in {log}" in r.stderr
    assert not out.exists()
    kept = [json.loads(line) for line in log.read_text().splitlines()]
    assert kept[0] == {"judge": {"url": server.url, "model": "judge"}}
    assert [k["qid"] for k in kept[1:]] == [o["qid"] for o in outputs[:16]]
    server.down_at, sent = None, server.requests
    r = _launch(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert server.requests - sent == 40 - 16  # only the answers not judged yet
    judged = json.loads(out.read_text())
    assert [j["qid"] for j in judged["judgements"]] == [o["qid"] for o in outputs]
    assert [j["correct"] for j in judged["judgements"]] == [bool(i % 2) for i in range(40)]
    assert judged["accuracy"] == 0.5 and judged["score"] == 3.0
    # a new evaluation changed one prediction: only that answer is judged again
    outputs[0]["output"] = answers[outputs[0]["qid"]]
    (tmp_path / "eval.json").write_text(json.dumps({"outputs": outputs}))
    sent = server.requests
    r = _launch(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert server.requests - sent == 1
    assert json.loads(out.read_text())["judgements"][0]["correct"] is True
    # another judge model into the same --out would mix two judges' verdicts
    r = _launch(*[a for a in args if not a.startswith("--model")], "--model=other")
    assert r.returncode == 2 and "holds the judgements of another judge" in r.stderr
  finally:
    server.httpd.shutdown()
    server.httpd.server_close()


def test_evaluate_keeps_the_judges_batches_and_resumes(tmp_path):
  """`launch.evaluate --judge_llm` judged every open-ended answer in one go after the student:
  a judge that stopped answering midway lost all it had judged (the paper's AGQA and
  ActivityNet-QA numbers). The judgements now go to `<out>.judged.jsonl` batch by batch and a
  rerun sends only the rest (here re-scoring a finished run's rows of the real val files)."""
  real = ROOT / "tests" / "fixtures" / "real" / "activitynet_qa"
  questions = json.loads((real / "val_q.json").read_text())[:40]
  answers = {a["question_id"]: a["answer"] for a in json.loads((real / "val_a.json").read_text())}
  outputs = [
    {"qid": q["question_id"], "output": answers[q["question_id"]] if i % 2 else "purple"}
    for i, q in enumerate(questions)
  ]
  (tmp_path / "run.json").write_text(json.dumps({"outputs": outputs}))
  server = FlakyJudge(answers)
  out = tmp_path / "judged.json"
  args = [
    f"--rescore={tmp_path}/run.json",
    "--format=activitynet_qa",
    f"--annotations={real}/val_q.json",
    "--limit=40",
    f"--judge_llm={server.url}",
    "--judge_model=judge",
    f"--out={out}",
  ]
  try:
    server.down_at = 21  # the default 16 a batch: batch 1 answered, batch 2 refused
    r = subprocess.run(
      [sys.executable, "-m", "launch.evaluate", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"answers judged so far are in {out}.judged.jsonl" in r.stderr
    kept = [json.loads(line) for line in open(f"{out}.judged.jsonl")]
    assert kept[0] == {"judge": {"url": server.url, "model": "judge"}} and len(kept) == 1 + 16
    server.down_at, sent = None, server.requests
    r = subprocess.run(
      [sys.executable, "-m", "launch.evaluate", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert server.requests - sent == 40 - 16
    result = json.loads(out.read_text())["open_ended"]
    assert result["judge_accuracy"] == 0.5 and result["judge_score"] == 3.0
  finally:
    server.httpd.shutdown()
    server.httpd.server_close()
