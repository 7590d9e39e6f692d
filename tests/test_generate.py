"""Batched KV-cache generation against transformers' `generate` on the same weights."""

import jax
import numpy as np
import pytest
import torch

from aotd_jax import hf
from aotd_jax.models import generate as gen
from test_llama import full_f32_matmuls, left_padded_batch, make_hf_llama  # noqa: F401 (autouse)

NEW = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama")
  ref = make_hf_llama(path, num_key_value_heads=2)
  return ref, hf.from_pretrained(str(path))


def hf_greedy(ref, ids, mask, eos):
  with torch.no_grad():
    out = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      do_sample=False,
      max_new_tokens=NEW,
      eos_token_id=eos,
      pad_token_id=0,
    )
  new = out[:, ids.shape[1] :].numpy()
  return np.pad(new, ((0, 0), (0, NEW - new.shape[1])))  # transformers stops when all rows end


def test_greedy_matches_transformers_with_eos(models):
  ref, model = models
  ids, mask, _ = left_padded_batch(length=10, pads=(4, 0, 6))
  free = hf_greedy(ref, ids, mask, eos=None)
  eos = int(free[0, 4])  # a token row 0 really emits mid-way, so EOS handling is exercised
  want = hf_greedy(ref, ids, mask, eos=eos)
  out = gen.generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(out.sequences), want)
  first = np.argmax(want == eos, axis=1)
  ended = (want == eos).any(axis=1)
  np.testing.assert_array_equal(np.asarray(out.lengths), np.where(ended, first + 1, NEW))
  assert ended[0] and out.lengths[0] <= 5


def test_prompt_buckets_are_powers_of_two_then_four_per_octave():
  assert [gen.prompt_bucket(n) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]
  assert [gen.prompt_bucket(n) for n in (65, 80, 81, 128, 129, 144, 161, 256, 257)] == [
    80,
    80,
    96,
    128,
    160,
    160,
    192,
    256,
    320,
  ]
  assert gen.prompt_bucket(5, minimum=128) == 128
  lengths = np.arange(1, 2049)
  buckets = np.array([gen.prompt_bucket(n) for n in lengths])
  assert np.all(buckets >= lengths) and np.all(np.diff(buckets) >= 0)
  assert np.all(buckets[64:] <= 1.25 * lengths[64:])  # at most 25% padding above 64
  assert len(set(buckets.tolist())) == 3 + 4 * 5  # 16, 32, 64, then 4 per octave up to 2048


def test_compiles_once_per_bucket(models):
  _, model = models
  before = gen.decode_jit._cache_size()
  for length in (5, 9, 13, 16):  # all pad to the 16 bucket
    ids, mask, _ = left_padded_batch(length=length, pads=(2, 0, 1))
    gen.generate(model, ids, mask, max_new_tokens=4, eos_token_id=2, pad_token_id=0)
  assert gen.decode_jit._cache_size() - before == 1
  ids, mask, _ = left_padded_batch(length=17, pads=(2, 0, 1))
  gen.generate(model, ids, mask, max_new_tokens=4, eos_token_id=2, pad_token_id=0)
  assert gen.decode_jit._cache_size() - before == 2  # the 32 bucket


def test_a_kept_static_graphdef_is_hashed_once_and_shares_the_programs(models, monkeypatch):
  """`split=` with a `StaticGraphDef`: the graph is hashed when wrapped, not at every call
  (jit hashes a plain GraphDef's whole node list per call), and a plain split of the same
  model reuses the same compiled program and gives the same tokens."""
  from flax import nnx

  _, model = models
  ids, mask, _ = left_padded_batch(length=9, pads=(2, 0, 1))
  kwargs = dict(max_new_tokens=4, eos_token_id=2, pad_token_id=0)
  plain = gen.generate(model, ids, mask, **kwargs)
  before = gen.decode_jit._cache_size()
  graphdef, state = nnx.split(model)
  kept = (gen.static_graphdef(graphdef), state)
  assert gen.static_graphdef(kept[0]) is kept[0] and gen.plain_graphdef(kept[0]) is graphdef
  hashes = []
  real_hash = type(graphdef).__hash__
  monkeypatch.setattr(type(graphdef), "__hash__", lambda g: hashes.append(1) or real_hash(g))
  outs = [gen.generate(model, ids, mask, split=kept, **kwargs) for _ in range(3)]
  assert not hashes  # a plain graphdef is hashed once per call
  gen.generate(model, ids, mask, split=(graphdef, state), **kwargs)
  assert hashes
  assert gen.decode_jit._cache_size() == before
  for out in outs:
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(plain.sequences))


def test_inputs_embeds_prefill_equals_ids(models):
  _, model = models
  ids, mask, _ = left_padded_batch(length=10, pads=(4, 0, 6))
  a = gen.generate(model, ids, mask, max_new_tokens=6, eos_token_id=[2, 3], pad_token_id=0)
  b = gen.generate(
    model,
    inputs_embeds=model.embed(ids),
    attention_mask=mask,
    max_new_tokens=6,
    eos_token_id=[2, 3],
    pad_token_id=0,
  )
  np.testing.assert_array_equal(a.sequences, b.sequences)


def test_sampling_temperature_top_p(models):
  _, model = models
  ids, mask, _ = left_padded_batch(length=10, pads=(4, 0, 6))
  greedy = gen.generate(model, ids, mask, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
  kw = dict(max_new_tokens=6, eos_token_id=None, pad_token_id=0, temperature=1.0)
  # A vanishing nucleus keeps only the top token: sampling degenerates to greedy.
  tiny = gen.generate(model, ids, mask, top_p=1e-6, rng=jax.random.PRNGKey(3), **kw)
  np.testing.assert_array_equal(tiny.sequences, greedy.sequences)
  a = gen.generate(model, ids, mask, rng=jax.random.PRNGKey(1), **kw)
  b = gen.generate(model, ids, mask, rng=jax.random.PRNGKey(1), **kw)
  c = gen.generate(
    model,
    ids,
    mask,
    rng=jax.random.PRNGKey(2),
    temperature=5.0,
    **{k: v for k, v in kw.items() if k != "temperature"},
  )
  np.testing.assert_array_equal(a.sequences, b.sequences)
  assert not np.array_equal(a.sequences, c.sequences)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=0.5), "needs an `rng`"),
    (dict(top_p=0.0), "top_p"),
    (dict(attention_mask=np.array([[1, 1, 0, 0, 0]] * 3)), "left-padded"),
    (dict(attention_mask=np.ones((3, 4))), "attention_mask shape"),
    (dict(input_ids=None), "exactly one of"),
  ],
)
def test_bad_arguments_are_named(models, kwargs, message):
  _, model = models
  ids, _, _ = left_padded_batch(length=5, pads=(0, 0, 0))
  args = dict(input_ids=ids, max_new_tokens=3, eos_token_id=2, pad_token_id=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    gen.generate(model, **args)


def test_smoke_launcher_prints_generated_tokens():
  """The README's interim main job: tiny config, random weights, generated tokens printed."""
  import ast
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # one host device (no forced 8), LLVM -O0 as the other tests compile (conftest.py)
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.smoke",
      "--config=configs/llama_tiny.py",
      "--config.max_new_tokens=4",
    ],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [l for l in out.stdout.splitlines() if "-> generated" in l]
  assert len(lines) == 2 and all(
    len(ast.literal_eval(l.split("-> generated ")[1])) <= 4 for l in lines
  )


def test_llama_config_rejects_unknown_variant():
  from configs.llama_tiny import get_config

  assert get_config().model["hidden_size"] == 64
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    get_config("huge")
