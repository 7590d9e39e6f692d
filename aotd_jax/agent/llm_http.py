"""`OpenAIChat`: an OpenAI-compatible `/v1/chat/completions` client (vLLM, SGLang, ...).

Standard library only (urllib): per-request timeouts, retries with exponential backoff on
5xx / 429 / timeouts / refused connections / replies cut short, and a bounded thread pool so a batch of prompts
is sent `concurrency` at a time. Other 4xx answers are not retried (the request is wrong).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# answers that refuse the request itself (e.g. a prompt longer than the model's context): the
# same prompt is refused again, the server's other prompts may pass
REJECT_STATUS = frozenset({400, 413, 422})


class LLMError(RuntimeError):
  """A backend could not produce a reply; the message names the endpoint or file."""


class PromptRejected(LLMError):
  """The server refused a request (HTTP 400 / 413 / 422), not retried: the prompt, or the
  request's settings, is what it refuses. `stage` names the CoT job's stage when known."""

  stage = ""


def retry_after(headers) -> float:
  """The seconds a 429 / 503 answer's `Retry-After` header asks to wait (0: none, or a date,
  which servers of this API do not send)."""
  try:
    return max(0.0, float((headers or {}).get("Retry-After", "")))
  except (TypeError, ValueError):
    return 0.0


class OpenAIChat:
  """Chat completions over HTTP.

  Args:
    base_url: the server, e.g. "http://127.0.0.1:8000" or ".../v1".
    model: the model name the server serves.
    api_key: sent as a Bearer token when given; `api_key_env` names an environment
      variable to read it from instead.
    timeout_s: per-request socket timeout.
    max_retries: retries after the first attempt (so max_retries + 1 attempts).
    backoff_s / max_backoff_s: the wait before retry k is min(max, backoff * 2**k), or the
      answer's `Retry-After` seconds when longer (a rate-limited API says how long), still
      at most max_backoff_s.
    concurrency: requests in flight at once for a batch.
    extra_body: merged into every request body (e.g. {"top_p": 0.9, "seed": 0}).
    sleep: the wait function (tests pass a fake).
  """

  def __init__(
    self,
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    api_key_env: str | None = None,
    timeout_s: float = 120.0,
    max_retries: int = 4,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    concurrency: int = 8,
    extra_body: dict | None = None,
    sleep: Callable[[float], None] = time.sleep,
  ):
    if not base_url.startswith(("http://", "https://")):
      raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
      raise ValueError(
        f"need concurrency >= 1, max_retries >= 0, timeout_s > 0; got "
        f"{concurrency}, {max_retries}, {timeout_s}"
      )
    base = base_url.rstrip("/")
    self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
    self.model = model
    if api_key is None and api_key_env:
      api_key = os.environ.get(api_key_env)
    self._headers = {"Content-Type": "application/json"}
    if api_key:
      self._headers["Authorization"] = f"Bearer {api_key}"
    self.timeout_s, self.max_retries = timeout_s, max_retries
    self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
    self.concurrency, self.extra_body, self.sleep = concurrency, dict(extra_body or {}), sleep

  def _body(self, prompt, max_new_tokens, temperature, stop) -> bytes:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    body = {
      "model": self.model,
      "messages": messages,
      "max_tokens": int(max_new_tokens),
      "temperature": float(temperature),
    }
    if stop:
      body["stop"] = list(stop)
    body.update(self.extra_body)
    return json.dumps(body).encode("utf-8")

  def _post_once(self, data: bytes) -> str:
    req = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
    with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
      payload = json.loads(resp.read().decode("utf-8"))
    try:
      content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
      raise LLMError(f"POST {self.url}: unexpected response {str(payload)[:200]}") from None
    if content is None:
      return ""
    if isinstance(content, list):  # content parts ([{"type": "text", "text": ...}, ...])
      try:
        return "".join(part["text"] for part in content if part.get("type", "text") == "text")
      except (KeyError, TypeError, AttributeError):
        pass
    elif isinstance(content, str):
      return content
    raise LLMError(f"POST {self.url}: unexpected message content {str(content)[:200]}")

  def _post(self, data: bytes) -> str:
    last, asked = "", 0.0
    for attempt in range(self.max_retries + 1):
      if attempt:
        wait = max(self.backoff_s * 2 ** (attempt - 1), asked)
        self.sleep(min(self.max_backoff_s, wait))
      asked = 0.0
      try:
        return self._post_once(data)
      except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode("utf-8", "replace")
        last = f"HTTP {e.code} {detail}".strip()
        if e.code in REJECT_STATUS:
          raise PromptRejected(f"POST {self.url}: {last} (not retried)") from None
        if e.code not in RETRY_STATUS:
          raise LLMError(f"POST {self.url}: {last} (not retried)") from None
        asked = retry_after(e.headers)
      except (TimeoutError, socket.timeout) as e:
        last = f"timed out after {self.timeout_s:g} s ({e})"
      except urllib.error.URLError as e:
        last = f"connection failed ({e.reason})"
      except (ConnectionError, json.JSONDecodeError, UnicodeDecodeError) as e:
        last = f"{type(e).__name__}: {e}"
      except http.client.HTTPException as e:  # a reply cut short (IncompleteRead), a bad status
        last = f"{type(e).__name__}: {e}"
    raise LLMError(f"POST {self.url} failed after {self.max_retries + 1} attempts: {last}")

  def complete(
    self,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
  ) -> list[str]:
    """One chat completion per prompt, `concurrency` requests at a time, in order."""
    from aotd_jax.agent.llm import check_prompts, cut_at_stop

    bodies = [self._body(p, max_new_tokens, temperature, stop) for p in check_prompts(prompts)]
    if len(bodies) <= 1:
      replies = [self._post(b) for b in bodies]
    else:
      with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(bodies))) as pool:
        replies = list(pool.map(self._post, bodies))
    # Servers apply `stop` themselves; cutting again makes replay and local runs agree.
    return [cut_at_stop(r, stop) for r in replies]
