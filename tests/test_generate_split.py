"""Decoding with dense kernels held as column blocks (`generate(weight_split=...)`): same tokens
as transformers and as whole kernels, the automatic choice, and the refused arguments."""
import jax
import numpy as np
import pytest
import torch
from flax import nnx

from aotd_jax import hf, sharding
from aotd_jax.models import generate as gen
from test_llama import full_f32_matmuls, left_padded_batch, make_hf_llama  # noqa: F401 (autouse)

NEW = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama_bias")
  ref = make_hf_llama(path, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
  return ref, hf.from_pretrained(str(path))


def test_split_kernels_decode_the_tokens_of_transformers(models):
  ref, model = models
  ids, mask, _ = left_padded_batch(length=10, pads=(4, 0, 6))
  with torch.no_grad():
    want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=NEW, eos_token_id=2, pad_token_id=0)[:, ids.shape[1]:].numpy()
  want = np.pad(want, ((0, 0), (0, NEW - want.shape[1])))  # transformers stops when all rows end
  kw = dict(max_new_tokens=NEW, eos_token_id=2, pad_token_id=0)
  for parts in (1, 2, 4):
    out = gen.generate(model, ids, mask, weight_split=parts, **kw)
    np.testing.assert_array_equal(np.asarray(out.sequences), want, err_msg=f"weight_split={parts}")


def test_split_kernels_keep_the_logits(models):
  _, model = models
  ids, mask, _ = left_padded_batch(length=12)
  graphdef, state = nnx.split(model)

  @jax.jit
  def logits(state, ids, mask):
    m = nnx.merge(graphdef, state)
    gen._split_dense_kernels(m, 2)
    blocks = m.model.layers[0].mlp.gate_proj.kernel.get_value()
    assert isinstance(blocks, tuple) and len(blocks) == 2  # the split path really runs
    return m(ids, mask).logits

  np.testing.assert_allclose(np.asarray(logits(state, ids, mask)), np.asarray(model(ids, mask).logits),
                             atol=1e-5, rtol=1e-5)
  assert not isinstance(model.model.layers[0].mlp.gate_proj.kernel.get_value(), tuple)  # caller's model intact


def test_split_columns_refuses_blocks_that_do_not_divide(models):
  _, model = models
  layer = nnx.clone(model.model.layers[0].self_attn.k_proj)  # 64 -> 32 columns
  assert not layer.split_columns(3) and not layer.split_columns(1)
  assert layer.split_columns(2) and not layer.split_columns(2)  # already split: unchanged


def test_auto_weight_split(models, tmp_path):
  _, model = models
  _, small = nnx.split(model)
  assert gen._auto_weight_split(small, 64) == 1  # tiny model: the extra ops cost more
  make_hf_llama(tmp_path, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, vocab_size=1024)
  big = hf.from_pretrained(str(tmp_path))
  _, state = nnx.split(big)
  assert gen._auto_weight_split(state, 64) == (2 if jax.default_backend() == "cpu" else 1)
  assert gen._auto_weight_split(state, 8) == 1  # a short loop does not pay back the copy
  mesh = sharding.make_mesh({"tensor": 2}, jax.devices()[:2])
  _, sharded = nnx.split(hf.from_pretrained(str(tmp_path), mesh=mesh))
  assert gen._auto_weight_split(sharded, 64) == 1  # weights on a mesh stay as they are


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_weight_split_is_refused(models, bad):
  _, model = models
  ids, mask, _ = left_padded_batch(length=8, pads=(0,))
  with pytest.raises(ValueError, match=r"generate: weight_split must be None or an int >= 1"):
    gen.generate(model, ids, mask, max_new_tokens=4, eos_token_id=None, pad_token_id=0, weight_split=bad)
