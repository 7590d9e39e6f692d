"""LLM backends behind one small interface: local Flax Llama, OpenAI-compatible HTTP, replay.

The same interface serves program generation, trace -> CoT rewriting and the judge:

    replies = llm.complete(prompts, max_new_tokens=256, temperature=0.0, stop=None)

A prompt is a string (sent as one user turn, or encoded as is by a local model) or a list
of chat messages `[{"role": "user", "content": "..."}]`. Replies come back in prompt order.
`Recording(backend, path)` appends every reply to a JSONL file; `Replay(path)` serves them
back, keyed by a hash of the prompt and the generation settings, so a run is reproduced
exactly without the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Protocol, Sequence, Union, runtime_checkable

from aotd_jax.agent.llm_http import LLMError, OpenAIChat, PromptRejected

Prompt = Union[str, list]
BATCHING = ("continuous", "static")  # LocalLlama's batching modes

__all__ = [
  "LLM",
  "LLMError",
  "LocalLlama",
  "OpenAIChat",
  "PromptRejected",
  "Recording",
  "Replay",
  "prompt_key",
]


@runtime_checkable
class LLM(Protocol):
  """Anything that completes a batch of prompts."""

  def complete(
    self,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
  ) -> list[str]:
    """Returns one reply per prompt, in order."""


def check_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
  """Validates a batch: each prompt is a str or a list of {"role", "content"} dicts."""
  if isinstance(prompts, (str, dict)):
    raise TypeError(f"prompts must be a sequence of prompts, not a single {type(prompts).__name__}")
  out = list(prompts)
  for i, p in enumerate(out):
    if isinstance(p, str):
      continue
    if (
      not isinstance(p, list)
      or not p
      or not all(isinstance(m, dict) and "role" in m and "content" in m for m in p)
    ):
      raise TypeError(
        f"prompt {i} must be a str or a non-empty list of "
        f"{{'role', 'content'}} messages, got {str(p)[:100]}"
      )
  return out


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
  """Truncates `text` at the first occurrence of any stop string (the stop excluded)."""
  if not stop:
    return text
  cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
  return text[:cut]


def prompt_key(
  prompt: Prompt, *, max_new_tokens: int, temperature: float, stop: Sequence[str] | None
) -> str:
  """The replay key: sha256 of the prompt and the settings that change the reply."""
  blob = json.dumps(
    {
      "prompt": prompt,
      "max_new_tokens": int(max_new_tokens),
      "temperature": float(temperature),
      "stop": list(stop or []),
    },
    sort_keys=True,
    ensure_ascii=False,
  )
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Recording:
  """Wraps a backend and appends each (prompt, settings, reply) to a JSONL file.

  Lines are written and flushed per batch (under a lock), so a killed run keeps what it
  got; `Replay(path)` reproduces the run. Appends to an existing file.
  """

  def __init__(self, backend: LLM, path: str):
    self.backend, self.path = backend, path
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def complete(
    self,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
  ) -> list[str]:
    """Completes through the wrapped backend and records the replies."""
    prompts = check_prompts(prompts)
    replies = self.backend.complete(
      prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop
    )
    lines = []
    for p, r in zip(prompts, replies):
      key = prompt_key(p, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
      lines.append(
        json.dumps(
          {
            "key": key,
            "prompt": p,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "stop": list(stop or []),
            "reply": r,
          },
          ensure_ascii=False,
        )
        + "\n"
      )
    with self._lock, open(self.path, "a", encoding="utf-8") as f:
      f.writelines(lines)
      f.flush()
      os.fsync(f.fileno())
    return replies


class Replay:
  """Serves replies recorded by `Recording` (JSONL: one {"key", "reply", ...} per line).

  A prompt recorded several times (sampling) gets its replies in recorded order. With
  `strict` (default), a prompt with no reply left raises `LLMError`; otherwise the last
  recorded reply repeats, or `default` is returned for unknown prompts when given.
  """

  def __init__(self, path: str, *, strict: bool = True, default: str | None = None):
    self.path, self.strict, self.default = path, strict, default
    self._replies: dict[str, list[str]] = {}
    self._served: dict[str, int] = {}
    self._lock = threading.Lock()
    try:
      f = open(path, encoding="utf-8")
    except OSError as e:
      raise LLMError(f"replay file {path}: cannot open ({e.strerror})") from None
    with f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
          key, reply = rec["key"], rec["reply"]
          if not isinstance(key, str) or not isinstance(reply, str):
            raise TypeError("'key' and 'reply' must be strings")
        except (ValueError, KeyError, TypeError) as e:
          raise LLMError(
            f"replay file {path} line {lineno}: bad record ({type(e).__name__}: {e})"
          ) from None
        self._replies.setdefault(key, []).append(reply)

  def __len__(self) -> int:
    return sum(len(v) for v in self._replies.values())

  def complete(
    self,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
  ) -> list[str]:
    """The recorded replies for `prompts` (in the order they were recorded)."""
    out = []
    with self._lock:
      for p in check_prompts(prompts):
        key = prompt_key(p, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        replies = self._replies.get(key)
        n = self._served.get(key, 0)
        if replies and n < len(replies):
          out.append(replies[n])
        elif replies and not self.strict:
          out.append(replies[-1])
        elif not self.strict and self.default is not None:
          out.append(self.default)
        else:
          shown = p if isinstance(p, str) else json.dumps(p)
          raise LLMError(
            f"replay file {self.path}: no recorded reply #{n + 1} for prompt "
            f"{shown[:80]!r} (max_new_tokens={max_new_tokens}, temperature={temperature},"
            f" stop={list(stop or [])})"
          )
        self._served[key] = n + 1
    return out


class LocalLlama:
  """Our Flax Llama on this machine, by continuous batching (default) or static batches.

  `batching="continuous"`: one `aotd_jax.models.engine.DecodeEngine` per instance, `max_batch`
  rows of one KV cache of `max_len` slots each: a finished prompt's row takes the next waiting
  prompt while the others decode, and `complete` calls from several threads (the pipelined
  CoT job's program, rewrite and judge stages on one model) share the rows instead of taking
  turns. A row ends at EOS, `max_new_tokens`, or once a stop string appears in the text of
  its tokens before the last.

  Continuous is the default: faster when calls bring more prompts than `max_batch` (or come
  from several threads) and replies vary in length; static is faster when each call fits the
  rows or replies are of near-equal length (docs/agent_sandbox.md, benchmarks/RESULTS.md).

  `batching="static"`: prompts sorted by length and run through
  `aotd_jax.models.generate.generate` `max_batch` at a time (a finished row emits padding until
  its batch ends), one `complete` at a time. It needs no `max_len`, and reproduces the sampled
  replies of runs made before the engine (their keys were per batch).

  Greedy replies are the same both ways (and transformers'). Sampling is reproducible given
  `seed` both ways; with the engine each prompt's draw depends only on (seed, prompt, how
  many times it was sent before), not on the batch or the threads.

  Args:
    model_dir: a Hugging Face directory (config.json + safetensors + tokenizer files).
    model / tokenizer: already-built ones instead (a `LlamaForCausalLM`-like NNX module and
      a transformers tokenizer).
    max_batch: rows decoding at once (the engine's slots; a static batch's rows, padded to
      `max_batch` so shapes and compilations repeat).
    seed: the sampling keys' seed (temperature > 0).
    batching: "continuous" or "static".
    max_len: the most cache slots per row of the engine: a prompt's tokens + max_new_tokens
      - 1 must fit (default: the model's max_position_embeddings, at most 4096). The cache is
      allocated at what the prompts need (the longest prompt + max_new_tokens, rounded up to a
      `prompt_bucket`: slots x that x layers x 2 x kv_heads x head_dim in the compute dtype)
      and grows as longer prompts come, never past max_len.
    steps_per_call: the engine's decode steps per host round trip.
  """

  def __init__(
    self,
    model_dir: str | None = None,
    *,
    model=None,
    tokenizer=None,
    dtype: str = "float32",
    max_batch: int = 8,
    seed: int = 0,
    min_bucket: int = 16,
    batching: str = "continuous",
    max_len: int | None = None,
    steps_per_call: int = 16,
  ):
    if model_dir is None and (model is None or tokenizer is None):
      raise ValueError("LocalLlama needs model_dir, or both model and tokenizer")
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if batching not in BATCHING:
      raise ValueError(f"LocalLlama: batching={batching!r}: expected one of {BATCHING}")
    if (max_len is not None and max_len < 1) or steps_per_call < 1:
      raise ValueError(
        f"LocalLlama: max_len and steps_per_call must be >= 1, got {max_len} and {steps_per_call}"
      )
    if model_dir is not None and not os.path.isfile(os.path.join(model_dir, "config.json")):
      raise ValueError(f"LocalLlama: {model_dir} has no config.json")
    if model is None:
      import jax.numpy as jnp

      from aotd_jax import hf

      model = hf.from_pretrained(model_dir, dtype=getattr(jnp, dtype))
    if tokenizer is None:
      from aotd_jax.hf.api import load_tokenizer

      tokenizer = load_tokenizer(model_dir)
    self.model, self.tokenizer = model, tokenizer
    self.max_batch, self.min_bucket, self.seed = max_batch, min_bucket, seed
    self.batching, self.steps_per_call = batching, steps_per_call
    if max_len is None:
      max_len = min(
        4096, int(getattr(getattr(model, "config", None), "max_position_embeddings", 4096))
      )
    self.max_len = max_len
    self._calls = 0
    # Static batches: one `complete` at a time (stages sharing the model take turns).
    self._lock = threading.Lock()
    self._engine = None  # built at the first continuous `complete`
    cfg = getattr(model, "config", None)
    eos = tokenizer.eos_token_id
    if eos is None:
      eos = getattr(cfg, "eos_token_id", None)
    self.eos_token_id = eos
    pad = tokenizer.pad_token_id
    if pad is None:
      pad = getattr(cfg, "pad_token_id", None)
    self.pad_token_id = (
      pad if pad is not None else (eos if isinstance(eos, int) else (eos[0] if eos else 0))
    )

  def encode(self, prompt: Prompt) -> list[int]:
    """Token ids of one prompt (chat messages through the tokenizer's chat template)."""
    if isinstance(prompt, str):
      return list(self.tokenizer(prompt)["input_ids"])
    if not getattr(self.tokenizer, "chat_template", None):
      raise ValueError(
        "LocalLlama: chat-message prompts need a tokenizer with a chat_template;"
        " this one has none (pass string prompts)"
      )
    text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def complete(
    self,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
  ) -> list[str]:
    """Generates for all prompts (see the class docstring); greedy when temperature is 0.

    Raises:
      ValueError: max_new_tokens < 1, or (continuous) a prompt that does not fit `max_len`
        (naming the prompt).
    """
    if self.batching == "static":
      with self._lock:
        return self._complete_static(
          prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop
        )
    return self._complete_continuous(
      prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop
    )

  @property
  def engine(self):
    """The `DecodeEngine` (continuous batching), built on first use."""
    with self._lock:
      if self._engine is None:
        from aotd_jax.models.engine import DecodeEngine

        self._engine = DecodeEngine(
          self.model,
          slots=self.max_batch,
          max_len=self.max_len,
          eos_token_id=self.eos_token_id,
          pad_token_id=self.pad_token_id,
          min_bucket=self.min_bucket,
          steps_per_call=self.steps_per_call,
          seed=self.seed,
        )
      return self._engine

  def close(self) -> None:
    """Stops the engine (waiting prompts fail); a later `complete` builds a new one."""
    with self._lock:
      engine, self._engine = self._engine, None
    if engine is not None:
      engine.close()

  def _text(self, tokens: Sequence[int]) -> str:
    return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

  def _complete_continuous(self, prompts, *, max_new_tokens, temperature, stop) -> list[str]:
    prompts = check_prompts(prompts)
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    engine = self.engine
    ids = [self.encode(p) for p in prompts]
    for i, row in enumerate(ids):  # the whole call is refused before any prompt runs
      try:
        engine.check(row, max_new_tokens=max_new_tokens, temperature=temperature)
      except ValueError as e:
        where = ""
        if "max_len" in str(e):
          where = (
            "; LocalLlama's max_len is an LLM section's kwargs.max_len in a CoT config"
            " (e.g. --config.cot_llm.kwargs.max_len)"
          )
        raise ValueError(f"LocalLlama: prompt {i}: {e}{where}") from None
    stops = [s for s in stop or () if s]

    def stopped(tokens: list[int]) -> bool:
      # the text before the last token: it no longer changes as tokens follow
      return len(tokens) > 1 and any(s in self._text(tokens[:-1]) for s in stops)

    futures = [
      engine.submit(
        row,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        stop=stopped if stops else None,
      )
      for row in ids
    ]
    return [cut_at_stop(self._text(f.result()), stop) for f in futures]

  def _complete_static(self, prompts, *, max_new_tokens, temperature, stop) -> list[str]:
    import jax
    import numpy as np

    from aotd_jax.models.generate import generate

    prompts = check_prompts(prompts)
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = [self.encode(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), self.max_batch):
      rows = order[start : start + self.max_batch]
      n = len(rows)
      width = max(len(ids[i]) for i in rows)
      batch = np.full((self.max_batch, width), self.pad_token_id, np.int32)
      mask = np.zeros((self.max_batch, width), np.int32)
      for r, i in enumerate(rows + rows[:1] * (self.max_batch - n)):  # pad rows: a repeat
        batch[r, width - len(ids[i]) :] = ids[i]
        mask[r, width - len(ids[i]) :] = 1
      self._calls += 1
      rng = jax.random.PRNGKey(self.seed + self._calls) if temperature > 0 else None
      res = generate(
        self.model,
        batch,
        mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=self.eos_token_id,
        pad_token_id=self.pad_token_id,
        temperature=temperature,
        rng=rng,
        min_bucket=self.min_bucket,
      )
      seqs, lengths = np.asarray(res.sequences), np.asarray(res.lengths)
      for r, i in enumerate(rows):
        text = self.tokenizer.decode(seqs[r, : lengths[r]].tolist(), skip_special_tokens=True)
        out[i] = cut_at_stop(text, stop)
    return out
