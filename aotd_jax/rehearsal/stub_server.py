"""A local OpenAI-compatible chat server (stdlib `http.server` in a thread) for the rehearsal.

It stands in for the vLLM / SGLang server of the real run: `POST /v1/chat/completions` gets a
reply that is valid for the prompt it recognises (AoTD's prompt files and the selector's):

- program prompt -> one `execute_command` over the real tools (grounder, detector, action
  recogniser, video QA, selector), in a ```python block;
- CoT rewrite prompt -> the first trace lines restated (shortened), ending "So the answer is <answer>.";
- official rewrite prompt (program + trace) -> the first trace lines, then the gold answer;
- answer / logic judge -> Yes / No (the official logic judge: True); open-ended grader -> {'pred': ..., 'score': ...};
- selector prompt -> the gold letter when `answers` knows the question (so some CoTs are kept,
  and `wrong` questions are answered wrongly so some are not), else (A).

`GET /v1/models` lists the served model. `StubServer(latency_s=...)` answers each chat request
after that many seconds (requests in parallel wait in parallel, as on a serving engine with
free slots), so that a benchmark's LLM side costs a fixed time per call. Every request is counted by kind (`counts`);
an unrecognised prompt is answered "unrecognised prompt" and counted, so a prompt change
shows up in the rehearsal's checks rather than as a silent pass.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from typing import Mapping

PROGRAM = '''```python
def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, "person is taking something")
    objs = Query_Objs(clip, "cup/book/laptop/door")
    acts = Query_Actions(clip, "person", possible_answers)
    summary = Video_summary(clip)
    info = {"objects": objs, "actions": acts, "summary": summary}
    answer = select_answer(query, possible_answers, info)
    return answer
```'''


def classify(text: str) -> str:
  """The kind of prompt (see the module docstring)."""
  if "Rewrite the trace as a step-by-step rationale" in text:
    return "rewrite"
  if "Turn the trace into a natural-language rationale" in text:
    return "rewrite_official"
  if (
    "Reply with the letter of the best option only" in text
    or "Reply with the letter of the best option from the given choices only" in text
  ):
    return "selector"
  if "You compare a predicted answer" in text:
    return "judge_answer"
  if "You check reasoning written about a video question" in text:
    return "judge_logic"
  if "You are given a question about a video and a rationale written to answer it" in text:
    return "judge_logic_official"
  if "You grade answers to questions about videos" in text:
    return "judge_open_ended"
  # last: the official rewrite and the judges quote programs too
  if "def execute_command" in text and "Question:" in text:
    return "program"
  return "unknown"


def _field(text: str, name: str) -> str:
  m = re.findall(rf"^-? ?{name}:[ \t]*(.*)$", text, flags=re.M)
  return m[-1].strip() if m else ""


def _options(text: str) -> list[str]:
  return re.findall(r"^\(([A-Z])\) ", text, flags=re.M)


class Replies:
  """Prompt -> reply (the server's logic, usable without a socket)."""

  def __init__(self, answers: Mapping[str, str] | None = None, wrong: set[str] | None = None):
    self.answers = dict(answers or {})  # question -> gold option text
    self.wrong = set(wrong or ())
    self.counts: dict[str, int] = {}
    self._lock = threading.Lock()

  def reply(self, text: str) -> str:
    kind = classify(text)
    with self._lock:
      self.counts[kind] = self.counts.get(kind, 0) + 1
    if kind == "program":
      return "Here is the program.\n" + PROGRAM
    if kind == "rewrite":
      trace = text.split("Trace:", 1)[-1].split("Final answer:", 1)[0].strip()
      answer = text.split("Final answer:", 1)[-1].split("Rationale:", 1)[0].strip()
      # a short rationale (about 100 words: the length of the paper's), not the whole trace
      steps = [f"I see that {line.strip()[:120]}." for line in trace.splitlines() if line.strip()][
        :4
      ]
      return " ".join(steps + [f"So the answer is {answer}."])
    if kind == "rewrite_official":
      trace = text.split("Execution trace:", 1)[-1].split("Rationale:", 1)[0].strip()
      steps = [f"I see that {line.strip()[:120]}." for line in trace.splitlines() if line.strip()][
        :4
      ]
      gold = self.answers.get(_field(text, "Question"))
      return " ".join(steps + [f"So the answer is {gold.rstrip('.')}." if gold else ""]).strip()
    if kind == "selector":
      question = _field(text, "Question")
      # the options after the last heading (the official prompt's worked example has its own)
      tail = re.split(r"^- (?:Options|Possible answers):$", text, flags=re.M)[-1]
      lines = re.findall(r"^\(([A-Z])\) (.*)$", tail, flags=re.M)
      gold = self.answers.get(question)
      for letter, option in lines:
        if gold is not None and (option.strip() == gold) != (question in self.wrong):
          return f"({letter})"
      return "(A)"
    if kind == "judge_answer":
      same = _field(text, "Correct answer").lower() == _field(text, "Predicted answer").lower()
      return "Yes" if same else "No"
    if kind == "judge_logic":
      return "Yes"
    if kind == "judge_logic_official":
      return "True"
    if kind == "judge_open_ended":
      same = _field(text, "Correct answer").lower() == _field(text, "Predicted answer").lower()
      return "{'pred': 'yes', 'score': 5}" if same else "{'pred': 'no', 'score': 1}"
    return "unrecognised prompt"


class _Server(http.server.ThreadingHTTPServer):
  # listen()'s backlog: the default 5 makes a client's 6th concurrent connect wait for a SYN
  # retransmit (~1 s), which a real server (vLLM, SGLang) does not; the pipelined CoT job has
  # several LLM stages' requests in flight at once.
  request_queue_size = 128


class StubServer:
  """`with StubServer(replies) as s: s.url` -> "http://127.0.0.1:<port>/v1"; `latency_s`: the
  seconds each chat reply waits before it is sent (its own request's thread)."""

  def __init__(self, replies: Replies, model: str = "stub-coder", latency_s: float = 0.0):
    if latency_s < 0:
      raise ValueError(f"StubServer: latency_s must be >= 0, got {latency_s}")
    self.replies, self.model, self.latency_s = replies, model, float(latency_s)
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):  # quiet
        pass

      def _send(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
          self._send(200, {"object": "list", "data": [{"id": outer.model, "object": "model"}]})
        else:
          self._send(404, {"error": {"message": f"no route {self.path}"}})

      def do_POST(self):
        if not self.path.rstrip("/").endswith("/chat/completions"):
          self._send(404, {"error": {"message": f"no route {self.path}"}})
          return
        try:
          body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
          messages = body["messages"]
          text = "\n".join(
            m["content"]
            if isinstance(m["content"], str)
            else " ".join(p.get("text", "") for p in m["content"])
            for m in messages
          )
        except (ValueError, KeyError, TypeError) as e:
          self._send(400, {"error": {"message": f"bad request: {e}"}})
          return
        if outer.latency_s:
          time.sleep(outer.latency_s)
        content = outer.replies.reply(text)
        self._send(
          200,
          {
            "id": "stub",
            "object": "chat.completion",
            "model": outer.model,
            "choices": [
              {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
              }
            ],
          },
        )

    self._server = _Server(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

  def start(self) -> "StubServer":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()

  def __enter__(self) -> "StubServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
