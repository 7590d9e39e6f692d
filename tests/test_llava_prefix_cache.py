"""LLaVA-NeXT-Video's KV prefix cache (`LlavaVideoQA(prefix_cache_mb=...)`, issue 22): a prompt's
prefix (the template up to and including the video tokens) prefilled once per clip and kept on
the device; a generation then prefills only its question. References are the whole-prompt
path (`generate`, prefix cache off) on tiny random float32 models (experts/random_weights.py)."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experts import random_weights as rw
from tests.test_coalesce_experts import _clips, _together


@pytest.fixture(scope="module")
def llava():
  return rw.llava(rw.LLAVA_TINY, seed=2)


def test_generate_after_prefix_gives_generate_tokens_and_logits():
  """A Llama batch whose rows share no prefix (other ids per row) and whose suffixes differ in
  length (left padding between the prefix and the suffix): the greedy tokens are `generate`'s
  on the whole prompts, and the suffix's last logits agree with the whole prompt's to 1e-5
  (float32; the split prefill runs other matmul shapes, so bits can move)."""
  from aotd_jax.models import generate as g
  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

  cfg = LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
  )
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  p, lengths = 37, (5, 9, 1)
  prefix = rng.integers(3, 64, (3, p)).astype(np.int32)
  suffixes = [rng.integers(3, 64, n).astype(np.int32) for n in lengths]
  whole = [np.concatenate([prefix[i], s]) for i, s in enumerate(suffixes)]

  def left_padded(rows, width):
    ids, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
      ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask

  ids, mask = left_padded(whole, p + max(lengths))
  kw = dict(max_new_tokens=8, eos_token_id=None, pad_token_id=0)
  want = g.generate(model, ids, mask, **kw)
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefix_kv(state, ids):
    m = nnx.merge(graphdef, state)
    return g.prefill_prefix(m, m.embed(ids))

  kv = prefix_kv(state, jnp.asarray(prefix))
  assert kv[0][0].shape == (3, cfg.num_key_value_heads, p, cfg.head_dim)
  s_ids, s_mask = left_padded(suffixes, max(lengths))
  got = g.generate_after_prefix(model, kv, s_ids, s_mask, **kw)
  np.testing.assert_array_equal(np.asarray(got.sequences), np.asarray(want.sequences))
  np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
  full = model(jnp.asarray(ids), jnp.asarray(mask)).logits[:, -1]
  out, _ = g.prefill_suffix(model, *kv, jnp.asarray(s_ids), jnp.asarray(s_mask), 0)
  np.testing.assert_allclose(np.asarray(out.logits[:, -1]), np.asarray(full), rtol=0, atol=1e-5)
  # the rows' own caches as blocks (several requests' kept prefixes, the last repeated as
  # padding), joined inside the jitted call: the same tokens
  rows = [0, 1, 2, 2]
  blocks = tuple(tuple(tuple(layer[i : i + 1] for i in rows) for layer in part) for part in kv)
  padded = np.concatenate([s_ids, s_ids[2:]]), np.concatenate([s_mask, s_mask[2:]])
  got = g.generate_after_prefix(model, blocks, *padded, **kw)
  np.testing.assert_array_equal(np.asarray(got.sequences)[:3], np.asarray(want.sequences))
  np.testing.assert_array_equal(np.asarray(got.sequences)[3], np.asarray(want.sequences)[2])
  odd = (tuple((k[:1], k[1:, :1]) for k in kv[0]), kv[1])
  with pytest.raises(ValueError, match="row blocks differ in shape"):
    g.generate_after_prefix(model, odd, s_ids, s_mask, **kw)
  with pytest.raises(ValueError, match="the suffix is empty"):
    g.generate_after_prefix(model, kv, s_ids[:, :0], **kw)
  with pytest.raises(ValueError, match=r"must be \(B=2, kv_heads, P, head_dim\)"):
    g.generate_after_prefix(model, kv, s_ids[:2], s_mask[:2], **kw)
  with pytest.raises(ValueError, match="must be left-padded"):
    g.generate_after_prefix(model, kv, s_ids, s_mask[:, ::-1], **kw)


def _calls(qa, clip):
  """Every generation of the CoT job's LLaVA calls (the official prompts' multiple choice is
  a generation: `choice_scoring="generate"`)."""
  return (
    qa.generate_ids(clip, "what happens").tolist(),
    qa.generate_ids(clip, "describe it in more words").tolist(),
    qa.answer(clip, "what did the person do?", ["a cup", "the dog", "opens the box"]),
    qa.summarize(clip),
    qa.recognize(clip),
  )


def test_llava_prefix_cache_gives_the_whole_prompt_tokens(llava):
  """With the prefix cache, every generation on a clip's frames (questions of every length,
  summaries, actions, answers) gives the whole-prompt path's greedy tokens: one call at a time,
  and coalesced from many threads with hits and misses in one batch of the language model;
  the prefix is prefilled once per clip."""
  from experts.backends.llava import LlavaVideoQA

  model, tok = llava
  kw = dict(num_frames=2, max_new_tokens=4, choice_scoring="generate", action_prompt="official")
  off = LlavaVideoQA(model, tok, **kw)
  assert off.prefix_cache is None
  clips = _clips(5, [3, 6], seed=4)
  want = [_calls(off, c) for c in clips]
  on = LlavaVideoQA(model, tok, prefix_cache_mb=64, **kw)
  assert [_calls(on, c) for c in clips[:3]] == want[:3]
  s = on.prefix_cache.stats
  assert (s.misses, s.hits, s.entries) == (3, 3 * 4, 3), s
  on.coalesce, on.coalesce_wait_s = True, 0.05
  try:
    # clips 0-2 kept, 3-4 new; the first questions of all five share batches
    got = _together(lambda c: _calls(on, c), clips)
    assert got == want
    assert s.misses == 5 and s.entries == 5
    batched = on.coalescers["generate-prefix4"].stats
    assert batched.requests_per_batch > 1, batched
  finally:
    on.close()
  p = on.prefix_length(on.prompt_ids("what happens"))
  layers, text = model.config.text_config.num_hidden_layers, model.config.text_config
  assert s.bytes == 5 * 2 * layers * text.num_key_value_heads * p * text.head_dim * 4


def test_llava_prefix_cache_is_bounded_by_bytes(llava):
  """The cache holds at most `prefix_cache_mb`: older clips are evicted (and recomputed with the
  same tokens when asked again)."""
  from experts.backends.llava import LlavaVideoQA

  model, tok = llava
  on = LlavaVideoQA(model, tok, num_frames=2, max_new_tokens=3, prefix_cache_mb=1)
  ids = on.prompt_ids("what happens")
  one = on.prefix_kv(_clips(1, [4], seed=9)[0], ids[:, : on.prefix_length(ids)])
  per_clip = sum(a.nbytes for part in one for a in part)
  on.prefix_cache.max_bytes = 2 * per_clip + per_clip // 2  # room for two clips
  on.clear_features()
  off = LlavaVideoQA(model, tok, num_frames=2, max_new_tokens=3)
  clips = _clips(4, [4], seed=5)
  want = [off.generate_ids(c, "what happens").tolist() for c in clips]
  assert [on.generate_ids(c, "what happens").tolist() for c in clips] == want
  s = on.prefix_cache.stats
  assert (s.misses, s.entries, s.evictions, s.bytes) == (5, 2, 2, 2 * per_clip), s
  assert on.generate_ids(clips[0], "what happens").tolist() == want[0]  # evicted: recomputed
  assert (s.misses, s.hits, s.evictions) == (6, 0, 3), s


def test_llava_prefix_key_separates_frames_prompts_and_dtypes(llava):
  """The key names what the kept keys/values depend on: another video, other sampled frames,
  another prefix (template or frame count), another dtype give other keys; the same clip and
  prefix the same key."""
  from experts.backends.llava import LlavaVideoQA

  model, tok = llava
  qa = LlavaVideoQA(model, tok, num_frames=2, prefix_cache_mb=64)
  clip, other = _clips(2, [6], seed=6)
  idx = np.array([0, 3])
  ids = qa.prompt_ids("what happens")
  prefix = ids[:, : qa.prefix_length(ids)]
  assert qa.prefix_length(qa.prompt_ids("a longer question than the first")) == prefix.shape[1]
  key = qa.prefix_key(clip, idx, prefix)
  assert key == qa.prefix_key(clip, idx, prefix.copy())
  changed = prefix.copy()
  changed[0, 0] += 1
  bf16, _ = rw.llava(dict(rw.LLAVA_TINY, dtype="bfloat16"), seed=2)
  others = [
    qa.prefix_key(other, idx, prefix),  # another video
    qa.prefix_key(clip, np.array([1, 3]), prefix),  # other frames
    qa.prefix_key(clip, idx, changed),  # another template token
    qa.prefix_key(clip, idx, prefix[:, 1:]),  # another length
    LlavaVideoQA(bf16, tok, num_frames=2).prefix_key(clip, idx, prefix),  # another dtype
    LlavaVideoQA(model, tok, num_frames=3).prefix_key(clip, idx, prefix),  # frame count
  ]
  assert len({key, *others}) == 1 + len(others)
  with pytest.raises(ValueError, match="prefix_cache_mb must be >= 0"):
    LlavaVideoQA(model, tok, prefix_cache_mb=-1)
  with pytest.raises(ValueError, match="no video token"):
    qa.prefix_length(np.array([[1, 5, 6]]))
  text = dataclasses.replace(
    model.config.text_config, rope_scaling={"rope_type": "dynamic", "factor": 2.0}
  )
  dynamic = types.SimpleNamespace(config=dataclasses.replace(model.config, text_config=text))
  with pytest.raises(ValueError, match="cannot serve 'dynamic' RoPE"):
    LlavaVideoQA(dynamic, tok, prefix_cache_mb=64)


def test_llava_prefix_cache_scores_as_the_whole_prompts(llava):
  """Likelihood scoring after the kept prefix (every reply in one row after the question, each
  hidden from the others) gives the whole prompts' log-likelihoods to 1e-5 (float32) and the
  same choices: replies of different lengths, PMI's blank video, one call at a time and
  coalesced with hits and misses in one batch."""
  from experts.backends.llava import LlavaVideoQA

  model, tok = llava
  kw = dict(num_frames=2, max_new_tokens=3, choice_scoring="pmi")
  off = LlavaVideoQA(model, tok, **kw)
  on = LlavaVideoQA(model, tok, prefix_cache_mb=64, **kw)
  clips = _clips(4, [3, 5], seed=8)
  choices = ["a red cup on the table", "the dog", "opens the box slowly", "sits"]

  def calls(qa, clip):
    return (
      qa.score_choices(clip, "what happens", choices),
      qa.score_choices(clip, "what does the person hold in the end?", choices[:3]),
      qa.score_choices(clip, "what happens", choices, blank=True),
      qa.answer(clip, "what happens", choices),
    )

  want = [calls(off, c) for c in clips]
  for got in ([calls(on, c) for c in clips[:2]], None):
    if got is None:
      on.coalesce, on.coalesce_wait_s = True, 0.05
      try:
        got = _together(lambda c: calls(on, c), clips)  # clips 0-1 kept, 2-3 new
        assert on.coalescers["score-prefix"].stats.requests_per_batch > 1
      finally:
        on.close()
    for g, w in zip(got, want):
      for a, b in zip(g[:3], w[:3]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        assert np.argmax(a) == np.argmax(b)
      assert g[3] == w[3]
  s = on.prefix_cache.stats
  assert (s.misses, s.entries) == (4 + 1, 5), s  # a prefix per clip, one of the blank video
