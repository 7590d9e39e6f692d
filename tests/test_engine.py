"""Continuous batching (`aotd_jax.models.engine`) against `generate` and transformers' greedy."""

import threading

import numpy as np
import pytest
import torch

from aotd_jax import hf
from aotd_jax.models import generate as gen
from aotd_jax.models.engine import DecodeEngine, EngineClosed
from test_llama import full_f32_matmuls, make_hf_llama  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama")
  ref = make_hf_llama(path, num_key_value_heads=2, max_position_embeddings=128)
  return ref, hf.from_pretrained(str(path))


def workload(n=10, seed=0):
  """Prompts of mixed lengths (1..30 tokens: two buckets) and mixed max_new_tokens (a few
  values: `generate` compiles once per value)."""
  rng = np.random.RandomState(seed)
  prompts = [rng.randint(3, 96, rng.randint(1, 31)).tolist() for _ in range(n)]
  return prompts, [int(rng.choice([1, 5, 9, 14])) for _ in prompts]


def generate_one(model, ids, new, eos):
  out = gen.generate(model, np.array([ids]), max_new_tokens=new, eos_token_id=eos, pad_token_id=0)
  return np.asarray(out.sequences)[0, : int(out.lengths[0])].tolist()


def test_greedy_equals_generate_from_several_threads(models):
  _, model = models
  prompts, news = workload()
  eos = generate_one(model, prompts[0], 4, None)[2]  # a token really emitted: EOS is exercised
  want = [generate_one(model, p, n, eos) for p, n in zip(prompts, news)]
  assert any(w[-1] == eos and len(w) < n for w, n in zip(want, news))
  engine = DecodeEngine(
    model, slots=4, max_len=64, eos_token_id=eos, pad_token_id=0, steps_per_call=3
  )
  got = [None] * len(prompts)

  def client(rows):
    futures = [(i, engine.submit(prompts[i], max_new_tokens=news[i])) for i in rows]
    for i, f in futures:
      got[i] = f.result()

  threads = [threading.Thread(target=client, args=(range(k, len(prompts), 3),)) for k in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert got == want
  stats = engine.stats
  assert stats.requests == len(prompts) and stats.tokens == sum(map(len, want))
  assert stats.max_active == 4  # more prompts than slots: rows were refilled
  # far fewer decode calls than one static batch per 4 prompts run to its longest row
  assert stats.decode_calls < sum(max(news[i : i + 4]) for i in range(0, len(news), 4))
  engine.close()


def test_greedy_matches_transformers(models):
  ref, model = models
  prompts, news = workload(n=5, seed=1)
  engine = DecodeEngine(model, slots=2, max_len=64, eos_token_id=None, pad_token_id=0)
  got = engine.generate(prompts, max_new_tokens=news)
  for ids, new, tokens in zip(prompts, news, got):
    with torch.no_grad():
      out = ref.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
        do_sample=False,
        max_new_tokens=new,
        eos_token_id=None,
        pad_token_id=0,
      )
    assert tokens == out[0, len(ids) :].tolist()


def test_sampling_is_reproducible_given_the_seed(models):
  _, model = models
  prompts, news = workload(n=6, seed=2)
  prompts.append(prompts[0])  # the same prompt twice: two different draws
  news.append(news[0] + 8)
  kwargs = dict(max_new_tokens=news, temperature=1.0, top_p=0.9)

  def run(seed, slots, steps, order):
    engine = DecodeEngine(
      model,
      slots=slots,
      max_len=64,
      eos_token_id=None,
      pad_token_id=0,
      steps_per_call=steps,
      seed=seed,
    )
    got = engine.generate(
      [prompts[i] for i in order], **{**kwargs, "max_new_tokens": [news[i] for i in order]}
    )
    return {i: g for i, g in zip(order, got)}

  first = run(0, 3, 4, list(range(len(prompts))))
  # another submission order: other rows share each batch (prompt 0 still before its repeat)
  assert run(0, 3, 4, [1, 0, 3, 2, 5, 4, 6]) == first
  assert run(1, 3, 4, list(range(len(prompts)))) != first
  assert first[6][: news[0]] != first[0]
  assert [len(first[i]) for i in range(len(prompts))] == news
  greedy = DecodeEngine(model, slots=3, max_len=64, eos_token_id=None, pad_token_id=0)
  mixed = greedy.generate(prompts[:2], max_new_tokens=14)
  # a greedy request batched next to sampled ones stays greedy
  f0 = greedy.submit(prompts[0], max_new_tokens=14, temperature=1.0)
  f1 = greedy.submit(prompts[1], max_new_tokens=14)
  assert f1.result() == mixed[1] and f0.result() != mixed[0]


def test_stop_callback_ends_a_request_early(models):
  _, model = models
  prompts, _ = workload(n=1, seed=3)
  engine = DecodeEngine(
    model, slots=2, max_len=64, eos_token_id=None, pad_token_id=0, steps_per_call=2
  )
  full = engine.generate(prompts, max_new_tokens=20)[0]
  calls = engine.stats.decode_calls
  cut = engine.submit(prompts[0], max_new_tokens=20, stop=lambda t: len(t) >= 5).result()
  assert cut == full[: len(cut)] and 5 <= len(cut) < 20
  assert engine.stats.decode_calls - calls < calls


def test_the_cache_is_as_long_as_the_requests_need(models):
  _, model = models
  engine = DecodeEngine(
    model, slots=2, max_len=128, eos_token_id=None, pad_token_id=0, steps_per_call=3
  )
  assert engine.cache_length == 0  # nothing allocated before a request
  short, brief, long = [5, 6, 7, 8, 9], [10, 11, 12], list(range(3, 43))
  with engine._cond:  # all three queued before the worker admits: short and brief first
    futures = [
      engine.submit(short, max_new_tokens=20),  # 24 slots: bucket 32
      engine.submit(brief, max_new_tokens=2),
      engine.submit(long, max_new_tokens=5),  # 44 slots: bucket 64, admitted mid-flight
    ]
  got = [f.result() for f in futures]
  want = [generate_one(model, p, n, None) for p, n in ((short, 20), (brief, 2), (long, 5))]
  assert got == want  # the row in flight kept its keys/values through the growth
  assert engine.cache_length == 64 and engine.stats.cache_grows == 1
  engine.close()


def test_bad_input_is_a_clear_error(models):
  _, model = models
  engine = DecodeEngine(model, slots=2, max_len=32, eos_token_id=2, pad_token_id=0)
  with pytest.raises(ValueError, match="33 tokens, longer than the cache \\(max_len=32\\)"):
    engine.submit(list(range(3, 36)), max_new_tokens=1)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
    engine.submit([5, 6], max_new_tokens=0)
  with pytest.raises(ValueError, match="20 tokens plus max_new_tokens=14 needs 33 cache slots"):
    engine.submit(list(range(3, 23)), max_new_tokens=14)
  assert len(engine.submit(list(range(3, 23)), max_new_tokens=13).result()) == 13
  with pytest.raises(ValueError, match="no tokens"):
    engine.submit([], max_new_tokens=3)
  with pytest.raises(ValueError, match="temperature >= 0 and 0 < top_p <= 1"):
    engine.submit([5], max_new_tokens=3, top_p=0.0)
  with pytest.raises(ValueError, match="2 max_new_tokens for 1 prompts"):
    engine.generate([[5]], max_new_tokens=[1, 2])
  with pytest.raises(ValueError, match="slots, max_len and steps_per_call must be >= 1"):
    DecodeEngine(model, slots=0, eos_token_id=2, pad_token_id=0)
  engine.close()
  with pytest.raises(EngineClosed):
    engine.submit([5], max_new_tokens=3)


def test_a_failing_model_fails_its_requests_and_the_engine_recovers(models):
  _, model = models
  engine = DecodeEngine(model, slots=2, max_len=32, eos_token_id=None, pad_token_id=0)
  calls = {"n": 0}

  def stop(tokens):
    calls["n"] += 1
    raise RuntimeError("stop callback broke")

  with pytest.raises(RuntimeError, match="stop callback broke"):
    engine.submit([5, 6], max_new_tokens=4, stop=stop).result()
  assert calls["n"] == 1
  assert engine.generate([[5, 6]], max_new_tokens=3) == [generate_one(model, [5, 6], 3, None)]
