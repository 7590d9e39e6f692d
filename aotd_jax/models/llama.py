"""Llama-family decoder LM in Flax NNX (program generator, judge, and the student's LM).

RMSNorm, RoPE (`default`, `linear`, `dynamic`, `llama3`), grouped-query attention, SwiGLU,
tied or untied embeddings, left-padding masks, and a KV cache for generation. Module names
mirror transformers' (`model.layers[i].self_attn.q_proj`) so the HF name table is regular.
Weights and main activations carry logical axis names (`aotd_jax.sharding`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx, struct

from aotd_jax.layers import attention as attention_lib
from aotd_jax.layers import rope
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.layers.dense import dense_for, matmul, tokens
from aotd_jax.layers.norms import RMSNorm
from aotd_jax.models.remat import remat_call
from aotd_jax.sharding import constrain

_INIT = nnx.initializers.normal(0.02)


def _freeze(value):
  """Dicts/lists -> sorted tuples, so configs stay hashable (nnx keeps them in the graphdef)."""
  if isinstance(value, Mapping):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Llama config: transformers' `LlamaConfig` fields (how to compute is `ComputeOptions`).

  `rope_scaling` may be given as a dict; it is stored as sorted (key, value) pairs (hashable),
  read it back with `rope_scaling_dict`. `eos_token_id` may be an int or a list of ints.
  """

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Any = None
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  # Biases on the q/k/v projections only (Qwen2's attention: o_proj has none); attention_bias
  # puts biases on all four.
  qkv_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = 1
  eos_token_id: Any = 2
  pad_token_id: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling) or None)
    object.__setattr__(self, "eos_token_id", _freeze(self.eos_token_id))
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
        f"LlamaConfig: num_attention_heads={self.num_attention_heads} is not a "
        f"multiple of num_key_value_heads={self.num_key_value_heads}"
      )
    rope.validate(self.rope_scaling_dict)

  @property
  def rope_scaling_dict(self) -> dict | None:
    return dict(self.rope_scaling) if self.rope_scaling else None


@struct.dataclass
class KVCache:
  """Per-layer keys/values (B, kv_heads, max_length, head_dim) and the next write slot.

  `index` is one slot for every row (a scalar, `generate`'s left-padded batch), or one per row
  ((B,) int32, `aotd_jax.models.engine`'s slots, each at its own length; decode calls only).
  """

  keys: tuple
  values: tuple
  index: jax.Array


@struct.dataclass
class CausalLMOutput:
  logits: jax.Array
  hidden_states: tuple | None = None
  cache: KVCache | None = None


def write_slots(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """`new` (B, kv_heads, l, head_dim) written into `cache` (B, kv_heads, slots, head_dim) from
  slot `index`: a scalar (every row) or (B,) (each row at its own slot)."""
  new = new.astype(cache.dtype)
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice(cache, new, (0, 0, index, 0))

  def row(c, n, i):
    return jax.lax.dynamic_update_slice(c, n, (0, i, 0))

  return jax.vmap(row)(cache, new, index)


def _dense(
  options: ComputeOptions, din: int, dout: int, axes: tuple[str, str], bias: bool, rngs
) -> nnx.Linear:
  return dense_for(
    options, din, dout, axes, rngs=rngs, bias=bias, decode_kernel=True, kernel_init=_INIT
  )


class LlamaAttention(nnx.Module):
  """Grouped-query self-attention with RoPE and an optional KV cache."""

  def __init__(self, cfg: LlamaConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.config = cfg
    self.options = options
    h, d, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
    qkv_bias = cfg.attention_bias or cfg.qkv_bias
    o = options
    self.q_proj = _dense(o, cfg.hidden_size, h * d, ("embed", "heads"), qkv_bias, rngs)
    self.k_proj = _dense(o, cfg.hidden_size, kv * d, ("embed", "kv_heads"), qkv_bias, rngs)
    self.v_proj = _dense(o, cfg.hidden_size, kv * d, ("embed", "kv_heads"), qkv_bias, rngs)
    self.o_proj = _dense(o, h * d, cfg.hidden_size, ("heads", "embed"), cfg.attention_bias, rngs)

  def __call__(self, x, cos, sin, mask, layer_cache=None, index=None, prefill=False):
    cfg = self.config
    b, l, _ = x.shape
    h, d, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
    x = tokens(x)
    q = rope.apply_rope(self.q_proj(x).reshape(b, l, h, d), cos, sin)
    k = rope.apply_rope(self.k_proj(x).reshape(b, l, kv, d), cos, sin)
    v = self.v_proj(x).reshape(b, l, kv, d)
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", None))
    k = constrain(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
    own_keys = layer_cache is None or prefill
    if layer_cache is not None:
      # The cache is head-major (B, kv_heads, slots, head_dim): both attention dots then read it
      # in place, where a (B, slots, kv_heads, head_dim) cache is transposed at every step.
      ck, cv = layer_cache
      ck = write_slots(ck, k.transpose(0, 2, 1, 3), index)
      cv = write_slots(cv, v.transpose(0, 2, 1, 3), index)
      layer_cache = (ck, cv)
      if prefill:
        mask = mask[:, :, :l]  # slots past the prompt are empty
      else:
        k, v = ck, cv
    # Without a cache, and for a prefill (an empty cache filled from slot 0 with this call's l
    # tokens), the queries meet only this call's keys: the query blocks and the CPU kernel. A
    # prefill takes the query blocks only where they run on the CPU kernel; elsewhere one
    # einsum over the prompt's keys is the better shape (GPUs, TPUs).
    opt = self.options
    out = attention_lib.attention(
      q,
      k,
      v,
      mask,
      implementation=opt.attention_impl if layer_cache is None else "xla",
      causal=True,
      block_size=opt.attention_block_size,
      cpu_kernels=opt.cpu_kernels,
      blocked_jnp=not prefill,
      kv_head_major=not own_keys,
    )
    out = constrain(out, ("activation_batch", "activation_length", "activation_heads"))
    return self.o_proj(tokens(out)).reshape(b, l, -1), layer_cache


class LlamaMLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: LlamaConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    d, m, o = cfg.hidden_size, cfg.intermediate_size, options
    self.gate_proj = _dense(o, d, m, ("embed", "mlp"), cfg.mlp_bias, rngs)
    self.up_proj = _dense(o, d, m, ("embed", "mlp"), cfg.mlp_bias, rngs)
    self.down_proj = _dense(o, m, d, ("mlp", "embed"), cfg.mlp_bias, rngs)

  def __call__(self, x):
    b, l, _ = x.shape
    x = tokens(x)
    h = (jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)).reshape(b, l, -1)
    h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
    return self.down_proj(tokens(h)).reshape(b, l, -1)


class LlamaDecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: LlamaConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    pdt = jnp.dtype(options.param_dtype)
    self.self_attn = LlamaAttention(cfg, options, rngs=rngs)
    self.mlp = LlamaMLP(cfg, options, rngs=rngs)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pdt)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pdt)

  def __call__(self, x, cos, sin, mask, layer_cache=None, index=None, prefill=False):
    attn, layer_cache = self.self_attn(
      self.input_layernorm(x), cos, sin, mask, layer_cache, index, prefill
    )
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x))
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, layer_cache


def _run_layer(layer, x, cos, sin, mask):
  return layer(x, cos, sin, mask)[0]


class LlamaModel(nnx.Module):
  """Embeddings, decoder layers and the final norm (transformers' `LlamaModel`)."""

  def __init__(self, cfg: LlamaConfig, options: ComputeOptions, *, rngs: nnx.Rngs):
    self.config = cfg
    self.embed_tokens = nnx.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      dtype=jnp.dtype(options.dtype),
      param_dtype=jnp.dtype(options.param_dtype),
      embedding_init=nnx.with_partitioning(_INIT, ("vocab", "embed")),
      rngs=rngs,
    )
    self.layers = nnx.List(
      [LlamaDecoderLayer(cfg, options, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
    )
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, jnp.dtype(options.param_dtype))


class LlamaForCausalLM(nnx.Module):
  """Decoder LM with transformers' `LlamaForCausalLM` interface and parameter layout."""

  hf_architecture = "LlamaForCausalLM"

  def __init__(
    self, config: LlamaConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = config
    self.options = options
    self.model = LlamaModel(config, options, rngs=rngs)
    if not config.tie_word_embeddings:
      self.lm_head = _dense(
        options, config.hidden_size, config.vocab_size, ("embed", "vocab"), False, rngs
      )

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings (B, L, hidden) in the compute dtype (LLaVA merges image features into these)."""
    x = self.model.embed_tokens(jnp.asarray(input_ids, jnp.int32))
    return constrain(x, ("activation_batch", "activation_length", "activation_embed"))

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """An empty KV cache with `max_length` slots per sequence."""
    cfg = self.config
    dtype = jnp.dtype(dtype or self.options.dtype)
    shape = (batch_size, cfg.num_key_value_heads, max_length, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
    return KVCache(
      keys=zeros,
      values=tuple(jnp.zeros(shape, dtype) for _ in zeros),
      index=jnp.zeros((), jnp.int32),
    )

  def rope_tables(self, position_ids: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin (B, L, head_dim) for integer positions (B, L); Qwen2-VL's M-RoPE overrides it."""
    cfg = self.config
    inv_freq = rope.inv_frequencies(
      cfg.head_dim,
      cfg.rope_theta,
      cfg.rope_scaling_dict,
      cfg.max_position_embeddings,
      jnp.max(position_ids) + 1,
    )
    return rope.cos_sin(position_ids, inv_freq, dtype)

  def __call__(
    self,
    input_ids=None,
    attention_mask=None,
    *,
    inputs_embeds=None,
    position_ids=None,
    cache: KVCache | None = None,
    output_hidden_states: bool = False,
    logits_to_keep: int = 0,
    prefill: bool = False,
  ) -> CausalLMOutput:
    """Logits (B, L, vocab) for token ids or embeddings.

    Args:
      input_ids / inputs_embeds: (B, L) ids or (B, L, hidden) embeddings (exactly one).
      attention_mask: 1 for real tokens, 0 for (left) padding. Without a cache it is (B, L);
        with a cache it covers every cache slot, (B, max_length). With `position_ids` it may
        be (B, L, L or max_length): per query, the slots it may see (causal still applies).
      position_ids: (B, L); default from the mask as transformers' `generate` does
        (cumsum - 1 over real tokens), i.e. left padding does not shift positions.
      cache: a `KVCache` (from `init_cache`); the new keys/values are written at `cache.index`
        and the returned output carries the advanced cache. A (B,) index (each row at its own
        slot) is for decode calls (not `prefill`); pass `position_ids` with it.
      logits_to_keep: if > 0, only the last that many positions get logits (prefill).
      prefill: the cache is empty (a fresh `init_cache`, index 0) and this call fills it from
        slot 0, as `generate` does with the prompt. Attention then runs over this call's own
        keys, on the query-block path and the CPU attention kernel, instead of over every cache
        slot (whose (B, heads, L, slots) scores a long prompt cannot afford). Same outputs.
    """
    cfg = self.config
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("LlamaForCausalLM: pass exactly one of input_ids and inputs_embeds")
    if prefill and cache is None:
      raise ValueError("LlamaForCausalLM: prefill=True needs a cache (the one it fills)")
    opt = self.options
    x = (
      self.embed(input_ids)
      if inputs_embeds is None
      else jnp.asarray(inputs_embeds, jnp.dtype(opt.dtype))
    )
    b, l, _ = x.shape
    total = l if cache is None else cache.keys[0].shape[2] if cfg.num_hidden_layers else l
    if attention_mask is None:
      attention_mask = jnp.ones((b, total), jnp.int32)
    attention_mask = jnp.asarray(attention_mask)
    seen = None
    if attention_mask.shape == (b, l, total) and position_ids is not None:
      # which slots each query may see besides the causal rule (several continuations of one
      # prompt side by side in one row, each hidden from the others)
      seen, attention_mask = attention_mask.astype(bool), jnp.any(attention_mask, axis=1)
    if attention_mask.shape != (b, total):
      raise ValueError(
        f"LlamaForCausalLM: attention_mask has shape {attention_mask.shape}, expected "
        f"{(b, total)} ({'cache slots' if cache is not None else 'input length'}) or, with "
        f"position_ids, {(b, l, total)}"
      )
    start = jnp.zeros((), jnp.int32) if cache is None else cache.index
    per_row = jnp.ndim(start) == 1
    if per_row and (prefill or position_ids is None):
      raise ValueError(
        "LlamaForCausalLM: a per-row cache index is for decode calls with position_ids"
        " (not prefill)"
      )
    valid = attention_mask.astype(bool)
    if position_ids is None:
      pos_all = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
      pos_all = jnp.where(valid, pos_all, 1)
      position_ids = jax.lax.dynamic_slice_in_dim(pos_all, start, l, axis=1)
    cos, sin = self.rope_tables(jnp.asarray(position_ids, jnp.int32), x.dtype)
    # Query i (cache slot start + i, per row with a per-row index) sees real key slots
    # j <= start + i.
    q_slot = jnp.expand_dims(start, -1) + jnp.arange(l)  # (l,) or (B, l)
    causal = (jnp.arange(total) <= q_slot[..., None]).reshape(-1, l, total)
    mask = causal & (valid[:, None, :] if seen is None else seen)
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    hidden_states = [x] if output_hidden_states else None
    new_k, new_v = [], []
    for i, layer in enumerate(self.model.layers):
      if cache is not None:
        x, (k, v) = layer(x, cos, sin, mask, (cache.keys[i], cache.values[i]), cache.index, prefill)
        new_k.append(k)
        new_v.append(v)
      elif opt.remat_enabled:
        x = remat_call(_run_layer, layer, x, cos, sin, mask, policy=opt.checkpoint_policy())
      else:
        x = layer(x, cos, sin, mask)[0]
      if output_hidden_states:
        hidden_states.append(x)
    x = self.model.norm(x)
    if output_hidden_states:
      hidden_states[-1] = x  # transformers reports the normed output as the last hidden state
    if logits_to_keep:
      x = x[:, -logits_to_keep:]
    if cfg.tie_word_embeddings:
      dot = matmul(opt.matmul_precision, cpu_kernel_rows=opt.cpu_kernel_rows)
      logits = dot(
        tokens(x), self.model.embed_tokens.embedding[...].astype(x.dtype), (((1,), (1,)), ((), ()))
      )  # x @ embedding^T
    else:
      logits = self.lm_head(tokens(x))
    logits = logits.reshape(*x.shape[:2], -1)
    logits = constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    new_cache = None
    if cache is not None:
      new_cache = KVCache(keys=tuple(new_k), values=tuple(new_v), index=cache.index + l)
    return CausalLMOutput(
      logits=logits, hidden_states=tuple(hidden_states) if hidden_states else None, cache=new_cache
    )
