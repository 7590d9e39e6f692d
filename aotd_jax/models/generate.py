"""Batched generation for left-padded prompts: jitted prefill + KV-cache decode loop.

Works for any model with the `LlamaForCausalLM` call signature (`input_ids`/`inputs_embeds`,
`attention_mask` over cache slots, `position_ids`, `cache`, `logits_to_keep`, `prefill`) and
`init_cache`;
LLaVA passes its language model with merged `inputs_embeds`. Prompts are left-padded to a
length bucket, so the loop compiles once per (batch, bucket, max_new_tokens, greedy/sample),
never per step or per prompt length. `prefill_prefix` + `generate_after_prefix` split a prompt
whose prefix is shared by many calls (LLaVA's video tokens): the prefix's keys and values are
kept, and a call prefills only its suffix against them. A batch of kept prefixes may come as
the rows' own arrays (`prefix_rows`): they are joined inside the jitted call, in the same XLA
fusion that writes them into the batch's larger cache, so the kept bytes are copied once.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct


@struct.dataclass
class GenerateOutput:
  sequences: jax.Array  # (B, max_new_tokens) int32 new tokens, pad after EOS
  lengths: jax.Array  # (B,) new tokens up to and including EOS


def prompt_bucket(length: int, minimum: int = 16) -> int:
  """The padded prompt length: a bucket of at least `minimum` and `length`.

  Up to 64 the buckets are powers of two; above, each octave (p/2, p] has four buckets in
  steps of p/8 (80, 96, 112, 128, 160, 192, ...), so a long prompt (a video's 144 tokens, say)
  pads by at most 25% instead of up to 2x, at four compilations per octave.
  """
  length = max(int(length), 1)
  power = 1 << (length - 1).bit_length()
  if power <= 64:
    return max(minimum, power)
  step = power // 8
  return max(minimum, -(-length // step) * step)


def _left_pad(x: np.ndarray, width: int, value=0) -> np.ndarray:
  pad = [(0, 0)] * x.ndim
  pad[1] = (width - x.shape[1], 0)
  return np.pad(x, pad, constant_values=value)


def argmax_first(logits: jax.Array) -> jax.Array:
  """The first index of the maximum (jnp.argmax) as two plain reductions: XLA CPU runs argmax's
  (value, index) pair reduction serially, ~0.5 ms per decode step over an 8k vocabulary."""
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  top = jnp.max(logits, axis=-1, keepdims=True)
  nan = jnp.isnan(logits)
  hit = jnp.where(
    jnp.any(nan, axis=-1, keepdims=True), nan, logits == top
  )  # argmax: NaN is the max
  return jnp.min(jnp.where(hit, iota, logits.shape[-1]), axis=-1)


def pick_tokens(logits, rng, temperature, top_p, sample: bool) -> jax.Array:
  """Greedy argmax, or sampling at `temperature` from the top-p nucleus."""
  logits = logits.astype(jnp.float32)
  if not sample:
    return argmax_first(logits)
  logits = logits / temperature
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
  drop = (jnp.cumsum(probs, axis=-1) - probs) >= top_p
  sorted_logits = jnp.where(drop, -jnp.inf, sorted_logits)
  choice = jax.random.categorical(rng, sorted_logits, axis=-1)
  return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


class StaticGraphDef:
  """An `nnx.GraphDef` as a jit static argument, its hash computed once.

  jit hashes its static arguments at every call, and `GraphDef.__hash__` walks the whole node
  list in Python under the GIL: ~0.9 ms per call for the cpu benchmark's 2-layer LLaVA graph
  (213 nodes), ~6.6 ms at 32 layers (2,249 nodes), twice per LLaVA generation (merge and
  decode). A caller that generates many times keeps one (`static_graphdef`); equal graphs
  still share compiled programs (equality is the graphdef's own).
  """

  __slots__ = ("graphdef", "_hash")

  def __init__(self, graphdef):
    self.graphdef = graphdef
    self._hash = hash(graphdef)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return self is other or (
      isinstance(other, StaticGraphDef)
      and self._hash == other._hash
      and self.graphdef == other.graphdef
    )


def static_graphdef(graphdef) -> StaticGraphDef:
  """`graphdef` wrapped as a `StaticGraphDef` (unchanged when it is one already)."""
  return graphdef if isinstance(graphdef, StaticGraphDef) else StaticGraphDef(graphdef)


def plain_graphdef(graphdef):
  """The `nnx.GraphDef` of a `StaticGraphDef`, or `graphdef` itself."""
  return graphdef.graphdef if isinstance(graphdef, StaticGraphDef) else graphdef


@jax.tree_util.register_pytree_node_class
class FlatState:
  """An `nnx.State` flattened once, for jitted calls on fixed weights.

  jit flattens its arguments at every call, and an `nnx.State` flattens in Python, node by
  node: ~0.1-0.16 ms a call for the cpu benchmark's LLaVA (65 leaves), growing with the leaves
  (LLaVA-NeXT-Video-7B: 684; benchmarks/jit_call_overhead.py). A `FlatState` is a pytree node
  whose children are the leaves (a tuple, flattened in C++) and whose aux data is the state's
  treedef; `merged` rebuilds the state inside the trace. The same values reach the model and
  programs compile as often as with the state (once per treedef and shapes).
  """

  __slots__ = ("leaves", "treedef")

  def __init__(self, leaves, treedef):
    self.leaves, self.treedef = tuple(leaves), treedef

  def state(self):
    """The `nnx.State` (inside a trace: of tracers)."""
    return jax.tree.unflatten(self.treedef, self.leaves)

  def tree_flatten(self):
    return self.leaves, self.treedef

  @classmethod
  def tree_unflatten(cls, treedef, leaves):
    return cls(leaves, treedef)


def flat_state(state) -> FlatState:
  """`state` (an `nnx.State`) flattened once as a `FlatState` (unchanged when it is one)."""
  return state if isinstance(state, FlatState) else FlatState(*jax.tree.flatten(state))


def merged(graphdef, state):
  """`nnx.merge` of a graphdef (or `StaticGraphDef`) and an `nnx.State` (or `FlatState`)."""
  if isinstance(state, FlatState):
    state = state.state()
  return nnx.merge(plain_graphdef(graphdef), state)


def _decode(
  graphdef,
  state,
  input_ids,
  inputs_embeds,
  mask,
  eos,
  pad,
  temperature,
  top_p,
  rng,
  prompt_positions=None,
  deltas=None,
  *,
  max_new_tokens: int,
  sample: bool,
):
  model = merged(graphdef, state)
  b, prompt_len = mask.shape
  total = prompt_len + max_new_tokens
  full_mask = jnp.concatenate([mask, jnp.zeros((b, max_new_tokens), mask.dtype)], axis=1)
  positions = jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 1)
  if prompt_positions is not None:
    positions = prompt_positions
  cache = model.init_cache(b, total)
  out = model(
    input_ids,
    full_mask,
    inputs_embeds=inputs_embeds,
    position_ids=positions,
    cache=cache,
    logits_to_keep=1,
    prefill=True,
  )
  next_pos = jnp.sum(mask, axis=-1).astype(jnp.int32)
  if deltas is not None:
    next_pos = next_pos + deltas
  return _decode_loop(
    model, out, full_mask, prompt_len, next_pos, eos, pad, temperature, top_p, rng,
    max_new_tokens=max_new_tokens, sample=sample,
  )  # fmt: skip


def _decode_loop(
  model,
  out,
  full_mask,
  prompt_len,
  next_pos,
  eos,
  pad,
  temperature,
  top_p,
  rng,
  *,
  max_new_tokens: int,
  sample: bool,
) -> GenerateOutput:
  """The greedy/sampled decode loop after a prefill whose output `out` holds the prompt's last
  logits and the cache (the prompt in slots [0, prompt_len), `full_mask` over every slot);
  `next_pos` (B,): the position of each row's first generated token."""
  b = full_mask.shape[0]
  rng, sub = jax.random.split(rng)
  tok = pick_tokens(out.logits[:, -1], sub, temperature, top_p, sample)
  seqs = jnp.full((b, max_new_tokens), pad, jnp.int32).at[:, 0].set(tok)
  done = jnp.isin(tok, eos)
  lengths = jnp.ones((b,), jnp.int32)

  def cond(carry):
    step, _, done, *_ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, tok, done, seqs, lengths, cache, full_mask, rng = carry
    full_mask = jax.lax.dynamic_update_slice(
      full_mask, jnp.ones((b, 1), full_mask.dtype), (0, prompt_len + step - 1)
    )
    out = model(tok[:, None], full_mask, position_ids=(next_pos + step - 1)[:, None], cache=cache)
    rng, sub = jax.random.split(rng)
    new = pick_tokens(out.logits[:, -1], sub, temperature, top_p, sample)
    new = jnp.where(done, pad, new)
    seqs = jax.lax.dynamic_update_slice(seqs, new[:, None], (0, step))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(new, eos)
    return step + 1, new, done, seqs, lengths, out.cache, full_mask, rng

  carry = (jnp.ones((), jnp.int32), tok, done, seqs, lengths, out.cache, full_mask, rng)
  carry = jax.lax.while_loop(cond, body, carry)
  return GenerateOutput(sequences=carry[3], lengths=carry[4])


def prefill_prefix(model, inputs_embeds: jax.Array) -> tuple[tuple, tuple]:
  """The KV cache of unpadded prompt prefixes (B, P, hidden) (positions 0..P-1): (keys, values),
  each a tuple of (B, kv_heads, P, head_dim) per layer, what `generate_after_prefix` continues
  from. Traced (call it inside jit)."""
  b, p = inputs_embeds.shape[:2]
  out = model(
    None,
    jnp.ones((b, p), jnp.int32),
    inputs_embeds=inputs_embeds,
    cache=model.init_cache(b, p),
    logits_to_keep=1,
    prefill=True,
  )
  return out.cache.keys, out.cache.values


def prefix_rows(layer) -> tuple:
  """One layer's kept keys or values as row blocks: a (B, kv_heads, P, head_dim) array is one
  block; a tuple or list of such arrays (the rows of several requests, a block possibly
  repeated as padding) is its blocks, to be joined along the batch inside the jitted call."""
  return tuple(layer) if isinstance(layer, (tuple, list)) else (layer,)


def prefix_shape(layer) -> tuple:
  """The (B, kv_heads, P, head_dim) shape of one layer's kept keys or values (`prefix_rows`);
  raises if its blocks differ past the batch axis."""
  shapes = {tuple(np.shape(a)) for a in prefix_rows(layer)}
  rest = {s[1:] for s in shapes}
  if len(rest) != 1:
    raise ValueError(f"prefix cache: a layer's row blocks differ in shape, {sorted(shapes)}")
  blocks = prefix_rows(layer)
  return (sum(int(np.shape(a)[0]) for a in blocks), *rest.pop())


def prefill_suffix(model, keys, values, input_ids, mask, extra_slots: int):
  """The language model on left-padded prompt suffixes (B, W) after cached prefixes `keys` /
  `values` ((B, kv_heads, P, head_dim) per layer, from `prefill_prefix`, or per layer the rows'
  blocks, `prefix_rows`): the output (logits of the last position, the cache with
  `extra_slots` free slots after the suffix) and the mask over every slot. Positions continue
  from P (the suffix's left padding does not shift them, as `generate`'s left padding does
  not). Traced (call it inside jit): the blocks' join and the padding to the cache's slots are
  one XLA fusion, one copy of the kept bytes."""
  b, width = mask.shape
  p = prefix_rows(keys[0])[0].shape[2]
  total = p + width + extra_slots

  def slots(layer):
    blocks = prefix_rows(layer)
    a = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)
    return jnp.pad(a, ((0, 0), (0, 0), (0, total - p), (0, 0)))

  cache = model.init_cache(b, total).replace(
    keys=tuple(map(slots, keys)),
    values=tuple(map(slots, values)),
    index=jnp.asarray(p, jnp.int32),
  )
  full_mask = jnp.concatenate(
    [jnp.ones((b, p), mask.dtype), mask, jnp.zeros((b, extra_slots), mask.dtype)], axis=1
  )
  positions = jnp.where(mask > 0, p + jnp.cumsum(mask, axis=-1) - 1, 1)
  out = model(input_ids, full_mask, position_ids=positions, cache=cache, logits_to_keep=1)
  return out, full_mask


def _decode_after_prefix(
  graphdef,
  state,
  keys,
  values,
  input_ids,
  mask,
  eos,
  pad,
  temperature,
  top_p,
  rng,
  *,
  max_new_tokens: int,
  sample: bool,
):
  model = merged(graphdef, state)
  out, full_mask = prefill_suffix(model, keys, values, input_ids, mask, max_new_tokens)
  p, width = prefix_rows(keys[0])[0].shape[2], mask.shape[1]
  next_pos = p + jnp.sum(mask, axis=-1).astype(jnp.int32)
  return _decode_loop(
    model, out, full_mask, p + width, next_pos, eos, pad, temperature, top_p, rng,
    max_new_tokens=max_new_tokens, sample=sample,
  )  # fmt: skip


# One jitted program per (graphdef, shapes, max_new_tokens, sample); `_cache_size()` counts them.
decode_jit = jax.jit(_decode, static_argnums=(0,), static_argnames=("max_new_tokens", "sample"))
decode_after_prefix_jit = jax.jit(
  _decode_after_prefix, static_argnums=(0,), static_argnames=("max_new_tokens", "sample")
)


def _sampling(caller: str, max_new_tokens: int, temperature: float, top_p: float, rng) -> bool:
  """Checks the decoding settings; whether they sample (temperature > 0) or not (greedy)."""
  if max_new_tokens < 1:
    raise ValueError(f"{caller}: max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(
      f"{caller}: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
    )
  if temperature > 0 and rng is None:
    raise ValueError(f"{caller}: sampling (temperature > 0) needs an `rng` key")
  return temperature > 0


def generate(
  model,
  input_ids=None,
  attention_mask=None,
  *,
  inputs_embeds=None,
  max_new_tokens: int,
  eos_token_id: int | Sequence[int] | None,
  pad_token_id: int,
  temperature: float = 0.0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  min_bucket: int = 16,
  position_ids=None,
  position_deltas=None,
  split: tuple | None = None,
) -> GenerateOutput:
  """Generates up to `max_new_tokens` tokens for a batch of left-padded prompts.

  Args:
    model: a `LlamaForCausalLM`-like NNX module.
    input_ids / inputs_embeds: (B, L) prompt ids or (B, L, hidden) prompt embeddings (one of them).
    attention_mask: (B, L), 1 for real tokens; padding must be on the left. Default: all ones.
    max_new_tokens: decode steps (a static size: one compilation per value).
    eos_token_id: id(s) that end a sequence; later positions get `pad_token_id`.
    temperature: 0 for greedy decoding; > 0 samples (needs `rng`).
    top_p: nucleus mass kept when sampling.
    min_bucket: the smallest prompt bucket (`prompt_bucket`); prompts are left-padded to it.
    position_ids: the prompt's positions, (..., B, L) (Qwen2-VL's M-RoPE: (3, B, L)); default
      from the mask. position_deltas: (B,) added to every generated token's position (Qwen2-VL's
      rope deltas); default 0.
    split: `nnx.split(model)`, kept by a caller that generates many times on fixed weights
      (splitting a 7B-shaped graph costs milliseconds of Python per call), its graphdef best
      a `StaticGraphDef` (hashed once, not at every call) and its state a `FlatState`
      (flattened once); default: split now.
  Returns:
    `GenerateOutput(sequences (B, max_new_tokens) int32, lengths (B,))`.
  """
  if (input_ids is None) == (inputs_embeds is None):
    raise ValueError("generate: pass exactly one of input_ids and inputs_embeds")
  sample = _sampling("generate", max_new_tokens, temperature, top_p, rng)
  b, length = np.shape(input_ids if inputs_embeds is None else inputs_embeds)[:2]
  mask = (
    np.ones((b, length), np.int32)
    if attention_mask is None
    else np.asarray(attention_mask, np.int32)
  )
  if mask.shape != (b, length):
    raise ValueError(
      f"generate: attention_mask shape {mask.shape} does not match the prompt {(b, length)}"
    )
  if np.any(np.diff(mask, axis=1) < 0):
    raise ValueError("generate: attention_mask must be left-padded (0s before 1s in every row)")
  width = prompt_bucket(length, min_bucket)
  mask = _left_pad(mask, width)
  ids = embeds = None
  if inputs_embeds is None:
    ids = jnp.asarray(_left_pad(np.asarray(input_ids, np.int32), width, pad_token_id))
  else:
    embeds = jnp.pad(jnp.asarray(inputs_embeds), ((0, 0), (width - length, 0), (0, 0)))
  eos = jnp.asarray(
    np.atleast_1d(-1 if eos_token_id is None else np.asarray(eos_token_id)), jnp.int32
  )
  if position_ids is not None:
    position_ids = np.asarray(position_ids, np.int32)
    if position_ids.shape[-2:] != (b, length):
      raise ValueError(
        f"generate: position_ids shape {position_ids.shape} does not end in the "
        f"prompt's {(b, length)}"
      )
    pad = [(0, 0)] * (position_ids.ndim - 1) + [(width - length, 0)]
    position_ids = jnp.asarray(np.pad(position_ids, pad, constant_values=1))
  if position_deltas is not None:
    position_deltas = jnp.asarray(np.asarray(position_deltas, np.int32).reshape(b))
  graphdef, state = nnx.split(model) if split is None else split
  return decode_jit(
    static_graphdef(graphdef),
    state,
    ids,
    embeds,
    jnp.asarray(mask),
    eos,
    jnp.int32(pad_token_id),
    jnp.float32(max(temperature, 1e-6)),
    jnp.float32(top_p),
    jax.random.PRNGKey(0) if rng is None else rng,
    position_ids,
    position_deltas,
    max_new_tokens=int(max_new_tokens),
    sample=sample,
  )


def generate_after_prefix(
  model,
  prefix: tuple[Sequence, Sequence],
  input_ids,
  attention_mask=None,
  *,
  max_new_tokens: int,
  eos_token_id: int | Sequence[int] | None,
  pad_token_id: int,
  temperature: float = 0.0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  min_bucket: int = 16,
  split: tuple | None = None,
) -> GenerateOutput:
  """`generate` for prompts whose unpadded prefixes were prefilled before (`prefill_prefix`):
  only the suffixes run through the model, against the kept keys and values.

  Args:
    model: a `LlamaForCausalLM`-like NNX module (the one whose cache `prefix` is).
    prefix: (keys, values), each a tuple of (B, kv_heads, P, head_dim) per layer: the
      prefixes' cache, every row P tokens long (positions 0..P-1, no padding); a layer may be
      a tuple of row blocks (`prefix_rows`: several requests' kept caches as they are, joined
      inside the jitted call, not before).
    input_ids: (B, S) suffix ids, left-padded (`attention_mask` 0 there; default all ones);
      they are padded further to a `prompt_bucket` of S. The tokens take positions from P on,
      as in the whole prompt, so the greedy tokens are `generate`'s on prefix + suffix (the
      split changes matmul shapes, so logits may differ in the last bits).
    Others as `generate`.
  Returns:
    `GenerateOutput(sequences (B, max_new_tokens) int32, lengths (B,))`.
  """
  sample = _sampling("generate_after_prefix", max_new_tokens, temperature, top_p, rng)
  keys, values = prefix
  ids = np.asarray(input_ids, np.int32)
  b, length = ids.shape
  if length < 1:
    raise ValueError("generate_after_prefix: the suffix is empty (keep at least one token)")
  shapes = {prefix_shape(a) for a in (*keys, *values)}
  if len(shapes) != 1 or next(iter(shapes))[0] != b or len(next(iter(shapes))) != 4:
    raise ValueError(
      f"generate_after_prefix: the prefix cache must be (B={b}, kv_heads, P, head_dim) arrays "
      f"of one shape, got {sorted(shapes)}"
    )
  mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
  if mask.shape != ids.shape:
    raise ValueError(
      f"generate_after_prefix: attention_mask shape {mask.shape} does not match {ids.shape}"
    )
  if np.any(np.diff(mask, axis=1) < 0):
    raise ValueError("generate_after_prefix: attention_mask must be left-padded")
  width = prompt_bucket(length, min_bucket)
  eos = jnp.asarray(
    np.atleast_1d(-1 if eos_token_id is None else np.asarray(eos_token_id)), jnp.int32
  )
  graphdef, state = nnx.split(model) if split is None else split
  return decode_after_prefix_jit(
    static_graphdef(graphdef),
    state,
    tuple(map(prefix_rows, keys)),
    tuple(map(prefix_rows, values)),
    jnp.asarray(_left_pad(ids, width, pad_token_id)),
    jnp.asarray(_left_pad(mask, width)),
    eos,
    jnp.int32(pad_token_id),
    jnp.float32(max(temperature, 1e-6)),
    jnp.float32(top_p),
    jax.random.PRNGKey(0) if rng is None else rng,
    max_new_tokens=int(max_new_tokens),
    sample=sample,
  )
