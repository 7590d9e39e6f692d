"""Continuous batching for a `LlamaForCausalLM`-like model: a fixed set of slots, one KV cache.

`DecodeEngine(model, slots=8, max_len=2048, ...)` keeps one KV cache of `slots` rows by at
most `max_len` cache slots (below). Each row holds one request at its own length (the model's per-row
`KVCache.index` and position ids). The engine's worker thread loops:

  1. admit: every free row takes the next waiting request (first come, first served); the new
     prompts are prefilled into their rows in one call, left-padded to the longest one's
     `prompt_bucket` width, so compilations repeat (one per (width, rows padded to a power of
     two));
  2. decode: `steps_per_call` jitted decode steps for all rows at once (one host round trip);
     a row that ends (EOS, its `max_new_tokens`) stops advancing within the call;
  3. finish: rows that ended (or whose `stop` callback says so) resolve their futures and
     free their row for step 1, while the other rows keep decoding.

A decode call attends over a window of the cache (the smallest `prompt_bucket` that holds
every active row's next tokens in the call), so short requests do not pay for the longest
one; each (window, greedy/sampling) pair compiles once (with the whole cache as the window
the loop updates the donated cache in place, no window copied out and back).

The cache is as long as the requests need, not `max_len`: it is allocated at the first
request with `prompt_bucket(prompt + max_new_tokens - 1)` slots per row and grows (to the
next bucket, the rows in flight copied) when a longer request is admitted; `max_len` only
caps it (a request past it is refused by `submit`). Llama-2-7B's cache of 8 rows at 4096
would be 17 GB in bf16 (32 layers x 2 x 32 kv heads x 128 x 2 bytes per slot and row); a
CoT job's 2k-token prompts and 512 new tokens take 2560 slots: 10.7 GB.

Requests come from any thread: `submit(ids, max_new_tokens=...)` returns a
`concurrent.futures.Future` of the new token ids (up to and including EOS); `generate(list)`
submits several and waits. Greedy tokens equal `aotd_jax.models.generate.generate`'s for the
same prompt (the same left-padded prefill and decode, per row). Sampling draws each token from
a key derived from (`seed`, the prompt's ids, how many times the prompt was submitted before,
the token's index), so a request's sample does not depend on which other requests share the
batch or on thread timing.

The engine takes the model's weights (`nnx.split`) when it first allocates its cache, at the
first request: a model changed afterwards needs a new engine.

The worker thread runs only while there is work (it is started by `submit` and ends when the
queue is empty), so an idle engine holds no thread; `close()` fails waiting requests.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import threading
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aotd_jax.models.generate import argmax_first, flat_state, merged, pick_tokens, prompt_bucket
from aotd_jax.models.llama import KVCache

StopFn = Callable[[list[int]], bool]


class EngineClosed(RuntimeError):
  """The engine was closed before the request finished."""


@dataclasses.dataclass
class _Request:
  ids: list[int]
  max_new_tokens: int
  temperature: float
  top_p: float
  key: np.ndarray  # (2,) uint32: the request's sampling key
  stop: StopFn | None
  future: concurrent.futures.Future
  tokens: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EngineStats:
  """Counts since the engine was built (for benchmarks and tests; no timing)."""

  requests: int = 0
  tokens: int = 0
  prefill_calls: int = 0
  decode_calls: int = 0
  max_active: int = 0  # the most rows decoding at once
  cache_grows: int = 0  # times the cache grew to a longer bucket


def _pick_rows(logits, keys, steps, temperature, top_p, sample: bool):
  """One token per row: greedy, or (sample) each row from its own key folded with its step."""
  logits = logits.astype(jnp.float32)
  greedy = argmax_first(logits)
  if not sample:
    return greedy

  def one(row_logits, key, step, t, p):
    key = jax.random.fold_in(jax.random.wrap_key_data(key), step)
    return pick_tokens(row_logits[None], key, jnp.maximum(t, 1e-6), p, True)[0]

  drawn = jax.vmap(one)(logits, keys, steps, temperature, top_p)
  return jnp.where(temperature > 0, drawn, greedy)


def _prefill(graphdef, state, cache, ids, mask, rows, keys, temperature, top_p, *, sample: bool):
  """Prefills left-padded prompts (n, w) into the cache rows `rows` (a row index past the cache
  drops that prompt: batch padding); returns the cache and each prompt's first token."""
  model = merged(graphdef, state)
  n, w = mask.shape
  positions = jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 1)
  out = model(
    ids,
    mask,
    position_ids=positions,
    cache=model.init_cache(n, w),
    logits_to_keep=1,
    prefill=True,
  )
  zeros = jnp.zeros((n,), jnp.int32)
  tok = _pick_rows(out.logits[:, -1], keys, zeros, temperature, top_p, sample)

  # Each prompt's keys/values move to the front of its row (real tokens at slots [0, length),
  # position = slot); the left padding wraps to [length, w), past the row's index, unseen and
  # overwritten by the tokens generated next.
  lengths = jnp.sum(mask, axis=-1)
  src = (jnp.arange(w)[None, :] + (w - lengths)[:, None]) % w

  def put(full, part):
    part = jax.vmap(lambda p, s: jnp.take(p, s, axis=1))(part, src)
    return full.at[rows, :, :w, :].set(part.astype(full.dtype), mode="drop")

  cache = KVCache(
    keys=tuple(put(f, p) for f, p in zip(cache.keys, out.cache.keys)),
    values=tuple(put(f, p) for f, p in zip(cache.values, out.cache.values)),
    index=cache.index,
  )
  return cache, tok


def _decode(
  graphdef,
  state,
  cache,
  rows_state,
  keys,
  temperature,
  top_p,
  eos,
  pad,
  *,
  steps: int,
  window: int,
  sample: bool,
):
  """Up to `steps` decode steps for every row over the first `window` cache slots.

  `rows_state` (4, rows) int32, per row: the last token (fed next), its cache slot (= its
  position: a row's tokens fill its slots from 0), tokens still to generate (0: idle), tokens
  generated so far (one array: one transfer a call). Returns the cache and one (rows, steps + 1)
  int32 array (one transfer back): the new tokens (pad after a row ends), then how many each
  row emitted; the host derives the rows' next state from them (`DecodeEngine._decode`).
  """
  model = merged(graphdef, state)
  tok, index, left, step = rows_state
  rows = tok.shape[0]
  full = cache
  whole = window >= cache.keys[0].shape[2]  # the loop updates the (donated) cache in place
  win = KVCache(
    keys=tuple(k if whole else k[:, :, :window] for k in cache.keys),
    values=tuple(v if whole else v[:, :, :window] for v in cache.values),
    index=index,
  )
  attention_mask = jnp.ones((rows, window), jnp.int32)  # the causal mask stops at each index
  out = jnp.full((rows, steps), pad, jnp.int32)
  emitted = jnp.zeros((rows,), jnp.int32)

  def cond(carry):
    i, _, _, _, left, *_ = carry
    return (i < steps) & jnp.any(left > 0)

  def body(carry):
    i, win, tok, index, left, step, out, emitted = carry
    active = left > 0
    slot = jnp.minimum(index, window - 1)  # idle rows write (harmlessly) inside the window
    res = model(
      tok[:, None],
      attention_mask,
      position_ids=slot[:, None],
      cache=dataclasses.replace(win, index=slot),
    )
    new = _pick_rows(res.logits[:, -1], keys, step, temperature, top_p, sample)
    new = jnp.where(active, new, pad)
    out = jax.lax.dynamic_update_slice(out, new[:, None], (0, i))
    grow = active.astype(jnp.int32)
    ended = jnp.isin(new, eos) | (left == 1)
    left = jnp.where(active & ended, 0, left - grow)
    return (
      i + 1,
      res.cache,
      jnp.where(active, new, tok),
      index + grow,
      left,
      step + grow,
      out,
      emitted + grow,
    )

  carry = (jnp.zeros((), jnp.int32), win, tok, index, left, step, out, emitted)
  _, win, _, _, _, _, out, emitted = jax.lax.while_loop(cond, body, carry)
  out = jnp.concatenate([out, emitted[:, None]], axis=1)
  if whole:
    return dataclasses.replace(win, index=full.index), out
  full = KVCache(
    keys=tuple(
      jax.lax.dynamic_update_slice(f, w, (0, 0, 0, 0)) for f, w in zip(full.keys, win.keys)
    ),
    values=tuple(
      jax.lax.dynamic_update_slice(f, w, (0, 0, 0, 0)) for f, w in zip(full.values, win.values)
    ),
    index=full.index,
  )
  return full, out


def _grow(cache: KVCache, length: int) -> KVCache:
  """The cache with `length` slots per row: the old slots first, zeros after."""

  def pad(a):
    return jnp.pad(a, ((0, 0), (0, 0), (0, length - a.shape[2]), (0, 0)))

  return KVCache(
    keys=tuple(map(pad, cache.keys)), values=tuple(map(pad, cache.values)), index=cache.index
  )


_grow_jit = jax.jit(_grow, static_argnums=(1,))  # the old cache is freed once replaced


@functools.lru_cache(maxsize=16)
def _programs(graphdef) -> tuple[Callable, Callable]:
  """The jitted prefill and decode for one model structure (engines on the same structure share
  their compilations). The graphdef is bound here, not passed as a static argument: jit would
  hash and compare it at every call (~0.5 ms of Python per decode call at 4 layers)."""
  prefill = jax.jit(
    functools.partial(_prefill, graphdef),
    static_argnames=("sample",),
    donate_argnames=("cache",),
  )
  decode = jax.jit(
    functools.partial(_decode, graphdef),
    static_argnames=("steps", "window", "sample"),
    donate_argnames=("cache",),
  )
  return prefill, decode


def _request_key(seed: int, ids: Sequence[int], occurrence: int) -> np.ndarray:
  """The (2,) uint32 key data of a request: a hash of (seed, ids, occurrence)."""
  blob = np.asarray([seed, occurrence, *ids], np.int64).tobytes()
  return np.frombuffer(hashlib.sha256(blob).digest()[:8], np.uint32).copy()


class DecodeEngine:
  """Continuous batching over `slots` rows of one KV cache (see the module docstring).

  Args:
    model: a `LlamaForCausalLM`-like NNX module (`init_cache`, a per-row `KVCache.index`).
    slots: rows decoding at once.
    max_len: the most cache slots per row (the cache grows to what the requests need, up to
      this): a request needs its prompt's length + `max_new_tokens` - 1.
    eos_token_id: id(s) that end a request (None: only `max_new_tokens` does).
    pad_token_id: the prompt padding id (and what `generate` writes after EOS).
    min_bucket: the smallest prompt bucket (`prompt_bucket`), as `generate`'s.
    steps_per_call: decode steps per host round trip (a finished row's slot is refilled after
      the call it finished in).
    seed: the sampling keys' seed.
  """

  def __init__(
    self,
    model,
    *,
    slots: int = 8,
    max_len: int = 2048,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    min_bucket: int = 16,
    steps_per_call: int = 16,
    seed: int = 0,
  ):
    if slots < 1 or max_len < 1 or steps_per_call < 1:
      raise ValueError(
        f"DecodeEngine: slots, max_len and steps_per_call must be >= 1, got {slots}, "
        f"{max_len} and {steps_per_call}"
      )
    self.model, self.slots, self.max_len = model, slots, max_len
    self.min_bucket, self.steps_per_call, self.seed = min_bucket, steps_per_call, seed
    self.pad_token_id = int(pad_token_id)
    eos = [] if eos_token_id is None else np.atleast_1d(np.asarray(eos_token_id)).tolist()
    self._eos = np.asarray(eos or [-1], np.int32)
    self.stats = EngineStats()
    self._cond = threading.Condition()
    self._waiting: collections.deque[_Request] = collections.deque()
    self._rows: list[_Request | None] = [None] * slots
    self._occurrences: dict[bytes, int] = {}
    self._worker: threading.Thread | None = None
    self._closed = False
    self._cache: KVCache | None = None
    # the model's weights and its (prefill, decode) programs, taken with the cache
    self._state = self._programs = None
    # per-row state, host side (the source of truth; sent with each decode call)
    self._tok = np.zeros(slots, np.int32)
    self._index = np.zeros(slots, np.int32)
    self._left = np.zeros(slots, np.int32)
    self._step = np.zeros(slots, np.int32)
    self._keys = np.zeros((slots, 2), np.uint32)
    self._temp = np.zeros(slots, np.float32)
    self._top_p = np.ones(slots, np.float32)

  @property
  def cache_length(self) -> int:
    """Cache slots per row allocated now (0 before the first request)."""
    return 0 if self._cache is None else int(self._cache.keys[0].shape[2])

  # -- the caller's side --

  def submit(
    self,
    ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: StopFn | None = None,
  ) -> concurrent.futures.Future:
    """Queues one prompt; the future's result is its new token ids (EOS included when hit).

    `stop(tokens)`, when given, is called with the request's tokens so far after each decode
    call; True ends the request there (its tokens so far are the result).

    Raises:
      ValueError: empty ids, max_new_tokens < 1, a bad temperature/top_p, or a prompt (with
        its generation) that does not fit the cache (`max_len`).
      EngineClosed: after `close()`.
    """
    ids = self.check(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._cond:
      if self._closed:
        raise EngineClosed("DecodeEngine: closed")
      occurrence = 0
      if temperature > 0:  # only sampled requests need their own key
        digest = hashlib.sha256(np.asarray(ids, np.int64).tobytes()).digest()
        occurrence = self._occurrences.get(digest, 0)
        self._occurrences[digest] = occurrence + 1
      self._waiting.append(
        _Request(
          ids=ids,
          max_new_tokens=int(max_new_tokens),
          temperature=float(temperature),
          top_p=float(top_p),
          key=_request_key(self.seed, ids, occurrence),
          stop=stop,
          future=future,
        )
      )
      self.stats.requests += 1
      if self._worker is None:
        # not a daemon: interpreter exit waits for the requests in flight (a daemon thread
        # inside an XLA call at exit aborts the process); the thread ends when idle
        self._worker = threading.Thread(target=self._run, name="decode-engine")
        self._worker.start()
      self._cond.notify_all()
    return future

  def check(
    self, ids: Sequence[int], *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0
  ) -> list[int]:
    """The request's ids as ints; raises `ValueError` if `submit` would refuse them (the
    reasons `submit` lists)."""
    ids = [int(t) for t in ids]
    if not ids:
      raise ValueError("DecodeEngine: the prompt has no tokens")
    if int(max_new_tokens) < 1:
      raise ValueError(f"DecodeEngine: max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
      raise ValueError(
        f"DecodeEngine: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
      )
    if len(ids) > self.max_len:
      raise ValueError(
        f"DecodeEngine: the prompt has {len(ids)} tokens, longer than the cache "
        f"(max_len={self.max_len})"
      )
    if len(ids) + max_new_tokens - 1 > self.max_len:
      raise ValueError(
        f"DecodeEngine: a prompt of {len(ids)} tokens plus max_new_tokens={max_new_tokens} "
        f"needs {len(ids) + max_new_tokens - 1} cache slots; "
        f"the cache has max_len={self.max_len} (raise max_len or lower max_new_tokens)"
      )
    return ids

  def generate(
    self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int], **kwargs
  ) -> list[list[int]]:
    """Submits every prompt (one `max_new_tokens` or one per prompt) and waits for all."""
    if isinstance(max_new_tokens, int):
      max_new_tokens = [max_new_tokens] * len(prompts)
    if len(max_new_tokens) != len(prompts):
      raise ValueError(
        f"DecodeEngine: {len(max_new_tokens)} max_new_tokens for {len(prompts)} prompts"
      )
    futures = [self.submit(p, max_new_tokens=m, **kwargs) for p, m in zip(prompts, max_new_tokens)]
    return [f.result() for f in futures]

  def close(self) -> None:
    """Fails the waiting requests (`EngineClosed`), lets the running ones finish, and refuses
    new ones."""
    with self._cond:
      self._closed = True
      while self._waiting:
        self._waiting.popleft().future.set_exception(EngineClosed("DecodeEngine: closed"))
      worker = self._worker
    if worker is not None and worker is not threading.current_thread():
      worker.join()

  def __enter__(self) -> "DecodeEngine":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- the worker's side --

  def _bucket(self, length: int) -> int:
    return min(prompt_bucket(length, self.min_bucket), self.max_len)

  def _run(self) -> None:
    while True:
      with self._cond:
        free = [r for r in range(self.slots) if self._rows[r] is None]
        admitted = []
        for r in free:
          if not self._waiting:
            break
          self._rows[r] = self._waiting.popleft()
          admitted.append(r)
        if not admitted and all(q is None for q in self._rows):
          self._worker = None  # a later submit starts a new worker
          return
      try:
        if admitted:
          self._admit(admitted)
        if any(q is not None for q in self._rows):
          self._decode()
      except BaseException as e:  # noqa: BLE001 - each request in flight gets the error
        self._fail_rows(e)

  def _fail_rows(self, error: BaseException) -> None:
    self._cache = None  # donated buffers may be gone: rebuilt for the next request
    for r, q in enumerate(self._rows):
      if q is not None:
        q.future.set_exception(error)
        self._rows[r] = None
    self._left[:] = 0

  def _finish(self, r: int) -> None:
    q = self._rows[r]
    self._rows[r] = None
    self._left[r] = 0
    self.stats.tokens += len(q.tokens)
    q.future.set_result(list(q.tokens))

  def _admit(self, admitted: list[int]) -> None:
    need = max(len(q.ids) + q.max_new_tokens - 1 for q in self._rows if q is not None)
    length = self._bucket(need)
    if self._cache is None:
      cache = self.model.init_cache(self.slots, length)
      self._cache = dataclasses.replace(cache, index=jnp.zeros((self.slots,), jnp.int32))
      graphdef, state = nnx.split(self.model)
      # flattened once: jit would flatten an nnx.State in Python at every call (~0.4 ms at
      # a 7B's 291 weight arrays, benchmarks/engine_host.py)
      self._state = flat_state(state)
      self._programs = _programs(graphdef)
    elif length > self.cache_length:
      self._cache = _grow_jit(self._cache, length)
      self.stats.cache_grows += 1
    # One prefill for the round's new prompts, left-padded to the longest one's bucket (as a
    # static batch is): fewer, larger calls than one per bucket.
    width = max(self._bucket(len(self._rows[r].ids)) for r in admitted)
    n = max(min(1 << (len(admitted) - 1).bit_length(), self.slots), len(admitted))
    ids = np.full((n, width), self.pad_token_id, np.int32)
    mask = np.zeros((n, width), np.int32)
    target = np.full((n,), self.slots, np.int32)  # past the cache: dropped
    keys = np.zeros((n, 2), np.uint32)
    temp = np.zeros((n,), np.float32)
    top_p = np.ones((n,), np.float32)
    for i, r in enumerate(admitted + admitted[:1] * (n - len(admitted))):
      q = self._rows[r]
      ids[i, width - len(q.ids) :] = q.ids
      mask[i, width - len(q.ids) :] = 1
      keys[i], temp[i], top_p[i] = q.key, q.temperature, q.top_p
      if i < len(admitted):
        target[i] = r
    # numpy arguments: jit sends them from C++ (jnp.asarray: ~20 us of Python each)
    self._cache, tok = self._programs[0](
      self._state, self._cache, ids, mask, target, keys, temp, top_p,
      sample=bool(np.any(temp > 0)),
    )  # fmt: skip
    self.stats.prefill_calls += 1
    tok = np.asarray(tok)
    for i, r in enumerate(admitted):
      q = self._rows[r]
      q.tokens.append(int(tok[i]))
      self._tok[r], self._index[r] = tok[i], len(q.ids)
      self._step[r] = 1
      self._keys[r], self._temp[r], self._top_p[r] = q.key, q.temperature, q.top_p
      self._left[r] = q.max_new_tokens - 1
      if tok[i] in self._eos or self._left[r] == 0 or (q.stop and q.stop(q.tokens)):
        self._finish(r)

  def _decode(self) -> None:
    active = self._left > 0
    if not active.any():
      return
    self.stats.max_active = max(self.stats.max_active, int(active.sum()))
    # the slots this call may write: each active row's next min(steps, left) tokens
    need = int(
      np.max(np.where(active, self._index + np.minimum(self._left, self.steps_per_call), 0))
    )
    window = min(prompt_bucket(need, self.min_bucket), self.cache_length)
    steps = self.steps_per_call
    self._cache, out = self._programs[1](
      self._state,
      self._cache,
      np.stack([self._tok, self._index, self._left, self._step]),
      self._keys, self._temp, self._top_p, self._eos, np.int32(self.pad_token_id),
      steps=steps, window=window, sample=bool(np.any(self._temp[active] > 0)),
    )  # fmt: skip
    self.stats.decode_calls += 1
    out = np.asarray(out)
    out, emitted = out[:, :steps], out[:, steps]
    # the rows' next state, as the call's loop left it: every active row emitted >= 1 token;
    # a row ended in the call when its last token is EOS or it reached its max_new_tokens
    last = out[np.arange(self.slots), np.maximum(emitted - 1, 0)]
    self._tok = np.where(emitted > 0, last, self._tok)
    self._index = self._index + emitted
    self._step = self._step + emitted
    is_eos = (last[:, None] == self._eos).any(axis=1)  # np.isin: ~30 us, this ~4 us
    ended = ((emitted > 0) & is_eos) | (self._left <= emitted)
    self._left = np.where(ended, 0, self._left - emitted).astype(np.int32)
    for r in np.flatnonzero(active):
      q = self._rows[r]
      q.tokens.extend(out[r, : emitted[r]].tolist())
      if self._left[r] == 0 or (q.stop is not None and q.stop(q.tokens)):
        self._finish(r)
