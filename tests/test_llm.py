"""LLM backends: OpenAI-compatible HTTP against a loopback server, replay, and local Flax Llama."""

import http.server
import json
import random
import threading
import time

import pytest

from aotd_jax.agent.llm import LLM, LLMError, LocalLlama, OpenAIChat, Recording, Replay, cut_at_stop


class FakeServer:
  """An OpenAI-compatible chat server on 127.0.0.1 in a thread.

  `script` is a list of actions consumed one per request ("ok", "slow", 500, 503, 400,
  "garbage", "cut": a reply shorter than its Content-Length, (429, "7"): a status with a
  Retry-After header); when it runs out every request is answered "ok". The reply to a prompt is
  "re: <last message content>" (or a random word with `random_replies`, like sampling).
  """

  def __init__(self):
    self.script, self.requests, self.headers = [], [], []
    self.inflight = self.max_inflight = 0
    # a "slow" request waits until `release` is set (at close) or `slow_s` has passed
    self.delay_s, self.slow_s, self.random_replies = 0.0, 60.0, False
    self.release = threading.Event()
    # >0: each request waits (<= 10 s) until this many are in flight or all `expect_requests`
    # have arrived (the last one may be alone)
    self.hold_until_inflight, self.expect_requests = 0, 0
    self.lock = threading.Lock()
    self.changed = threading.Condition(self.lock)
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          action = server.script.pop(0) if server.script else "ok"
          server.requests.append(body)
          server.headers.append(dict(self.headers))
          server.inflight += 1
          server.max_inflight = max(server.max_inflight, server.inflight)
          server.changed.notify_all()
          server.changed.wait_for(
            lambda: (
              server.inflight >= server.hold_until_inflight
              or len(server.requests) >= server.expect_requests
            ),
            timeout=10.0,
          )
        try:
          if action == "slow":
            server.release.wait(timeout=server.slow_s)
          else:
            time.sleep(server.delay_s)
        finally:
          # Counted out before the reply is written: a client that has read its reply may
          # send the next request before this thread would otherwise get to the decrement.
          with server.lock:
            server.inflight -= 1
        try:
          if isinstance(action, (int, tuple)):  # (status, Retry-After) or a status alone
            status, after = action if isinstance(action, tuple) else (action, None)
            self.send_response(status)
            if after is not None:
              self.send_header("Retry-After", after)
            self.end_headers()
            self.wfile.write(b'{"error": "scripted failure"}')
            return
          if action == "garbage":
            payload = b"not json"
          elif action in ("parts", "odd"):  # content as a list of parts, or not text at all
            content = (
              [{"type": "text", "text": "re: "}, {"type": "image_url"}, {"text": "parts"}]
              if action == "parts"
              else {"value": 3}
            )
            payload = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
          elif action == "cut":  # the server dies mid-reply: fewer bytes than announced
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.close_connection = True
            return
          else:
            content = body["messages"][-1]["content"]
            reply = (
              random.choice(["alpha", "beta", "gamma", "delta"])
              if server.random_replies
              else f"re: {content}"
            )
            payload = json.dumps(
              {"choices": [{"message": {"role": "assistant", "content": reply}}]}
            ).encode()
          self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
          pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()

  def close(self):
    self.release.set()
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = FakeServer()
  yield s
  s.close()


def client(server, **kw):
  waits = []
  kw = {"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01, "sleep": waits.append, **kw}
  return OpenAIChat(server.url, "tiny", api_key="k123", **kw), waits


def test_http_batch_in_order_with_request_fields(server):
  llm, _ = client(server, concurrency=3)
  assert isinstance(llm, LLM)
  prompts = [f"question {i}" for i in range(7)] + [
    [{"role": "system", "content": "s"}, {"role": "user", "content": "chat"}]
  ]
  replies = llm.complete(prompts, max_new_tokens=17, temperature=0.5, stop=["\n\n"])
  assert replies == [f"re: question {i}" for i in range(7)] + ["re: chat"]
  body = next(r for r in server.requests if r["messages"][-1]["content"] == "chat")
  assert body["model"] == "tiny" and body["max_tokens"] == 17 and body["temperature"] == 0.5
  assert body["stop"] == ["\n\n"] and body["messages"][0] == {"role": "system", "content": "s"}
  assert all(h["Authorization"] == "Bearer k123" for h in server.headers)


def test_http_bounded_concurrency(server):
  # Each request waits (up to 10 s) until a second one is in flight, so a client that keeps
  # two in flight reaches exactly 2 however slow the machine; a third can only be in flight
  # if the client sends more than `concurrency` at once.
  server.delay_s, server.hold_until_inflight, server.expect_requests = 0.1, 2, 6
  llm, _ = client(server, concurrency=2, timeout_s=20.0)
  llm.complete([f"p{i}" for i in range(6)], max_new_tokens=4)
  assert server.max_inflight == 2 and len(server.requests) == 6


def test_http_retries_a_server_error_then_succeeds(server):
  server.script = [500, 503]
  llm, waits = client(server)
  assert llm.complete(["hi"], max_new_tokens=4) == ["re: hi"]
  assert len(server.requests) == 3 and waits == [0.01, 0.02]  # exponential backoff


def test_http_persistent_failure_is_a_clear_error(server):
  server.script = [500] * 10
  llm, waits = client(server)
  with pytest.raises(
    LLMError,
    match=r"POST http://127\.0\.0\.1:\d+/v1/chat/completions "
    r"failed after 3 attempts: HTTP 500",
  ):
    llm.complete(["hi"], max_new_tokens=4)
  assert len(server.requests) == 3 and len(waits) == 2


def test_http_client_errors_are_not_retried(server):
  from aotd_jax.agent.llm import PromptRejected

  server.script = [400]
  llm, _ = client(server)
  with pytest.raises(PromptRejected, match="HTTP 400.*not retried"):  # the prompt is refused
    llm.complete(["hi"], max_new_tokens=4)
  assert len(server.requests) == 1
  server.script = [404]  # another model name: every prompt fails, not one
  with pytest.raises(LLMError, match="HTTP 404.*not retried") as e:
    llm.complete(["hi"], max_new_tokens=4)
  assert not isinstance(e.value, PromptRejected)


def test_http_timeout_is_retried_then_reported(server):
  # A "slow" request is held until the test ends (an event, not a delay), so it times out
  # however fast or loaded the machine is; the retry is answered at once, well inside the 2 s
  # that every test here gives an answered request.
  server.script = ["slow"]
  llm, _ = client(server)
  assert llm.complete(["hi"], max_new_tokens=4) == ["re: hi"]
  assert len(server.requests) == 2  # one held first try + one retry
  server.script = ["slow"] * 3  # every try held: a short timeout cannot flake here
  llm, _ = client(server, timeout_s=0.1)
  with pytest.raises(LLMError, match="failed after 3 attempts: timed out after 0.1 s"):
    llm.complete(["hi"], max_new_tokens=4)
  with server.lock:  # the last try's handler may still be reading it: wait for the count
    server.changed.wait_for(lambda: len(server.requests) >= 5, timeout=30.0)
  assert len(server.requests) == 2 + 3


def test_http_bad_responses_and_unreachable_server(server):
  server.script = ["garbage"] * 3
  llm, _ = client(server)
  with pytest.raises(LLMError, match="failed after 3 attempts: JSONDecodeError"):
    llm.complete(["hi"], max_new_tokens=4)
  dead = OpenAIChat(
    "http://127.0.0.1:9", "tiny", max_retries=1, backoff_s=0, sleep=lambda s: None, timeout_s=1.0
  )
  with pytest.raises(LLMError, match="failed after 2 attempts: connection failed"):
    dead.complete(["hi"], max_new_tokens=4)


def test_http_content_parts_are_joined_and_other_content_is_named(server):
  """A server answering with content parts (the newer chat format) gives their text joined;
  content that is neither text nor parts is an LLMError naming it, not an AttributeError."""
  server.script = ["parts"]
  llm, _ = client(server)
  assert llm.complete(["hi"], max_new_tokens=4) == ["re: parts"]
  server.script = ["odd"] * 3
  with pytest.raises(LLMError, match="unexpected message content"):
    llm.complete(["hi"], max_new_tokens=4)


def test_http_rate_limit_waits_as_long_as_retry_after_asks(server):
  """A rate-limited API (429 with Retry-After: 7) was retried after 0.01, 0.02 s...: every
  attempt spent in a few seconds. The wait is now what the server asks, at most max_backoff_s."""
  server.script = [(429, "7"), (503, "120"), (429, "soon"), 500]
  llm, waits = client(server, max_retries=4, backoff_s=0.5, max_backoff_s=60.0)
  assert llm.complete(["hi"], max_new_tokens=4) == ["re: hi"]
  assert waits == [7.0, 60.0, 2.0, 4.0]  # asked, asked but capped, not seconds, none


def test_http_reply_cut_short_is_retried_then_reported(server):
  """A reply cut short (the server or a proxy dies mid-body) raised http.client.IncompleteRead
  through the CoT job and the judges as a traceback; it is retried like a dropped connection."""
  server.script = ["cut"]
  llm, _ = client(server)
  assert llm.complete(["hi"], max_new_tokens=4) == ["re: hi"]
  assert len(server.requests) == 2
  server.script = ["cut"] * 3
  with pytest.raises(LLMError, match="failed after 3 attempts: IncompleteRead"):
    llm.complete(["hi"], max_new_tokens=4)


def test_http_bad_arguments():
  with pytest.raises(ValueError, match="base_url must start with http"):
    OpenAIChat("127.0.0.1:8000", "m")
  with pytest.raises(ValueError, match="concurrency >= 1"):
    OpenAIChat("http://x", "m", concurrency=0)
  llm = OpenAIChat("http://127.0.0.1:9/v1", "m")
  assert llm.url == "http://127.0.0.1:9/v1/chat/completions"
  with pytest.raises(TypeError, match="prompts must be a sequence"):
    llm.complete("one string", max_new_tokens=4)
  with pytest.raises(TypeError, match="prompt 1 must be a str or a non-empty list"):
    llm.complete(["ok", [{"text": "no role"}]], max_new_tokens=4)


def test_recording_then_replay_reproduces_a_sampled_run_exactly(server, tmp_path):
  server.random_replies = True
  path = str(tmp_path / "replies.jsonl")
  rec = Recording(client(server)[0], path)
  batches = [["q1", "q2", "q1"], [[{"role": "user", "content": "q3"}], "q1"]]
  live = [rec.complete(b, max_new_tokens=8, temperature=1.0) for b in batches]
  n_requests = len(server.requests)
  replay = Replay(path)
  assert len(replay) == 5
  again = [replay.complete(b, max_new_tokens=8, temperature=1.0) for b in batches]
  assert again == live and len(server.requests) == n_requests  # no model needed
  with pytest.raises(LLMError, match=r"no recorded reply #4 for prompt 'q1'"):
    replay.complete(["q1"], max_new_tokens=8, temperature=1.0)
  with pytest.raises(LLMError, match=r"no recorded reply #1 .*max_new_tokens=9"):
    Replay(path).complete(["q1"], max_new_tokens=9, temperature=1.0)  # settings are keyed
  lenient = Replay(path, strict=False, default="?")
  assert lenient.complete(["unseen"], max_new_tokens=8, temperature=1.0) == ["?"]


def test_replay_bad_files_name_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"key": "a", "reply": "x"}\n\n{"key": "b"}\n')
  with pytest.raises(LLMError, match=r"bad\.jsonl line 3: bad record \(KeyError"):
    Replay(str(bad))
  bad.write_text("{not json\n")
  with pytest.raises(LLMError, match=r"bad\.jsonl line 1: bad record \(JSONDecodeError"):
    Replay(str(bad))
  with pytest.raises(LLMError, match=r"missing\.jsonl: cannot open"):
    Replay(str(tmp_path / "missing.jsonl"))


def test_cut_at_stop():
  assert cut_at_stop("a\n\nb###c", ["###", "\n\n"]) == "a"
  assert cut_at_stop("abc", None) == "abc" and cut_at_stop("abc", ["x", ""]) == "abc"


# --- local Flax Llama on a tiny random model with a tiny word-level tokenizer

WORDS = ["user", "assistant", "system"] + [f"w{i}" for i in range(90)]  # 3 + 93 = vocab 96


def make_tokenizer(path):
  """A word-level tokenizer built with `tokenizers`, saved as a transformers tokenizer."""
  import tokenizers
  from tokenizers import models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
  )
  fast.chat_template = (
    "<s>{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
  )
  fast.save_pretrained(str(path))
  return fast


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  path = tmp_path_factory.mktemp("tiny_llama")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
  )
  ref = transformers.LlamaForCausalLM(config).eval()
  ref.save_pretrained(str(path))
  tok = make_tokenizer(path)
  return path, ref, tok


def torch_greedy(ref, tok, text, new, add_special_tokens=True):
  import torch

  ids = tok(text, add_special_tokens=add_special_tokens, return_tensors="pt")["input_ids"]
  with torch.no_grad():
    out = ref.generate(
      input_ids=ids,
      attention_mask=torch.ones_like(ids),
      do_sample=False,
      max_new_tokens=new,
      eos_token_id=2,
      pad_token_id=0,
    )
  return tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def test_local_llama_matches_transformers_greedy(tiny_llama):
  path, ref, tok = tiny_llama
  llm = LocalLlama(str(path), max_batch=4)
  assert isinstance(llm, LLM)
  prompts = [
    "w1 w2 w3",
    "w7",
    "w5 w9 w11 w13 w17 w19 w23",
    "w40 w41",
    "w60 w61 w62",
    [{"role": "user", "content": "w3 w4"}],
  ]
  got = llm.complete(prompts, max_new_tokens=6)
  want = [torch_greedy(ref, tok, p, 6) for p in prompts[:-1]]
  chat = tok.apply_chat_template(prompts[-1], tokenize=False, add_generation_prompt=True)
  want.append(torch_greedy(ref, tok, chat, 6, add_special_tokens=False))
  assert got == want
  assert all(w for w in want)  # something was generated
  stop = want[0].split()[1]
  assert llm.complete(prompts[:1], max_new_tokens=6, stop=[stop]) == [want[0][: want[0].find(stop)]]


def test_local_llama_engine_equals_static_batches_from_several_threads(tiny_llama):
  """The CoT stages' case: three threads (program, rewrite, judge) on one instance, mixed
  prompt lengths, max_new_tokens and stop strings, more prompts than rows."""
  path, _, _ = tiny_llama
  static = LocalLlama(str(path), max_batch=3, batching="static")
  engine = LocalLlama(model=static.model, tokenizer=static.tokenizer, max_batch=3, steps_per_call=2)
  rng = random.Random(0)
  calls = []
  for role in range(3):
    words = [" ".join(f"w{rng.randrange(90)}" for _ in range(rng.randint(1, 14))) for _ in range(4)]
    calls.append((role, words, [9, 4, 9][role]))
  want = [static.complete(p, max_new_tokens=n) for _, p, n in calls]
  stops = [[w.split()[1]] if len(w.split()) > 2 else None for w in (r[0] for r in want)]
  want_stop = [static.complete(p, max_new_tokens=n, stop=s) for (_, p, n), s in zip(calls, stops)]
  got, got_stop = [None] * len(calls), [None] * len(calls)

  def stage(role):
    for i, (r, prompts, new) in enumerate(calls):
      if r == role:
        got[i] = engine.complete(prompts, max_new_tokens=new)
        got_stop[i] = engine.complete(prompts, max_new_tokens=new, stop=stops[i])

  threads = [threading.Thread(target=stage, args=(r,)) for r in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert got == want and got_stop == want_stop
  assert any(s for s in stops) and got_stop != got  # the stops cut something
  assert engine.engine.stats.requests == 2 * sum(len(p) for _, p, _ in calls)
  engine.close()


def test_local_llama_sampling_is_reproducible(tiny_llama):
  path, _, _ = tiny_llama
  a = LocalLlama(str(path), max_batch=2, seed=3)
  b = LocalLlama(model=a.model, tokenizer=a.tokenizer, max_batch=2, seed=3)
  prompts = ["w1 w2 w3", "w7", "w1 w2 w3"]
  first = a.complete(prompts, max_new_tokens=8, temperature=1.0)
  assert first[0] != first[2]  # a repeated prompt draws again
  # another batch (other prompts beside each): the same draws
  assert b.complete(prompts[1::-1], max_new_tokens=8, temperature=1.0) == first[1::-1]
  c = LocalLlama(model=a.model, tokenizer=a.tokenizer, max_batch=2, seed=3)
  assert c.complete(prompts, max_new_tokens=8, temperature=1.0) == first


def test_local_llama_prompt_longer_than_the_cache(tiny_llama):
  path, _, _ = tiny_llama
  llm = LocalLlama(str(path), max_batch=2, max_len=8)
  with pytest.raises(
    ValueError, match="prompt 1: .*the prompt has 9 tokens, longer than the cache"
  ):
    llm.complete(["w1", "w1 w2 w3 w4 w5 w6 w7 w8"], max_new_tokens=1)
  with pytest.raises(ValueError, match="prompt 0: .*3 tokens plus max_new_tokens=7 needs 9 cache"):
    llm.complete(["w1 w2"], max_new_tokens=7)
  with pytest.raises(ValueError, match="max_len=8 .*--config.cot_llm.kwargs.max_len"):
    llm.complete(["w1 w2"], max_new_tokens=7)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
    llm.complete(["w1"], max_new_tokens=0)
  assert llm.engine.stats.requests == 0  # nothing ran
  assert len(llm.complete(["w1 w2"], max_new_tokens=6)) == 1


def test_launcher_shares_one_local_llama_across_roles(tiny_llama):
  import pathlib
  import sys

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from configs.toyworld import cot as toy
  from launch import generate_cots

  path, _, _ = tiny_llama
  shared = {}
  program = generate_cots.make_llm(toy.llm("local", model_dir=str(path)), "program", shared)
  judge = generate_cots.make_llm(toy.llm("local", model_dir=str(path)), "judge", shared)
  other = generate_cots.make_llm(toy.llm("local", model_dir=str(path), max_len=32), "cot", shared)
  assert program is judge and other is not program and other.max_len == 32
  assert program.batching == "continuous" and program.max_len == 64  # max_position_embeddings
  assert generate_cots.make_llm(toy.llm("local", model_dir=str(path)), "cot") is not program


def test_local_llama_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="needs model_dir, or both model and tokenizer"):
    LocalLlama()
  with pytest.raises(ValueError, match="has no config.json"):
    LocalLlama(str(tmp_path))
  with pytest.raises(ValueError, match="max_batch must be >= 1"):
    LocalLlama(model=object(), tokenizer=object(), max_batch=0)
  with pytest.raises(ValueError, match="batching='dynamic': expected one of"):
    LocalLlama(model=object(), tokenizer=object(), batching="dynamic")
  with pytest.raises(ValueError, match="max_len and steps_per_call must be >= 1"):
    LocalLlama(model=object(), tokenizer=object(), max_len=0)
  tok = make_tokenizer(tmp_path)
  tok.chat_template = None
  llm = LocalLlama(model=object(), tokenizer=tok)
  assert llm.encode("w1 w2") == [1, 7, 8]
  with pytest.raises(ValueError, match="need a tokenizer with a chat_template"):
    llm.encode([{"role": "user", "content": "w1"}])
