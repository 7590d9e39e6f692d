"""Greedy generation on a 2-device mesh (how a CPU host uses both cores for decoding, see
docs/llama.md): the same tokens as transformers and as one device, weights really split."""

import jax
import numpy as np
import pytest
import torch
from flax.core import spmd

from aotd_jax import hf, sharding
from aotd_jax.models import generate as gen
from test_llama import full_f32_matmuls, left_padded_batch, make_hf_llama  # noqa: F401 (autouse)

NEW = 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama_mesh")
  return str(path), make_hf_llama(path, num_key_value_heads=2)


@pytest.mark.parametrize("axes", [{"tensor": 2}, pytest.param({"data": 2}, marks=pytest.mark.slow)])
def test_two_device_mesh_decodes_the_tokens_of_transformers(checkpoint, axes):
  path, ref = checkpoint
  ids, mask, _ = left_padded_batch(length=9, pads=(3, 0))
  with torch.no_grad():
    want = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      do_sample=False,
      max_new_tokens=NEW,
      eos_token_id=2,
      pad_token_id=0,
    )[:, ids.shape[1] :].numpy()
  want = np.pad(want, ((0, 0), (0, NEW - want.shape[1])))  # transformers stops when all rows end
  kw = dict(max_new_tokens=NEW, eos_token_id=2, pad_token_id=0)
  one = gen.generate(hf.from_pretrained(path), ids, mask, **kw).sequences
  mesh = sharding.make_mesh(axes, jax.devices()[:2])
  model = hf.from_pretrained(path, mesh=mesh)
  kernel = model.model.layers[0].mlp.gate_proj.kernel[...]
  assert len(kernel.sharding.device_set) == 2
  if "tensor" in axes:  # each device holds half of the matrix
    assert kernel.sharding.spec[1] == "tensor"
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0], kernel.shape[1] // 2)
  with jax.set_mesh(mesh), spmd.logical_axis_rules(sharding.DEFAULT_RULES):
    out = gen.generate(model, ids, mask, **kw)
  np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(one))
  np.testing.assert_array_equal(np.asarray(out.sequences), want)
