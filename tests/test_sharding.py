"""Mesh construction and a Llama sharded over (data=2, fsdp=2, tensor=2) on 8 forced CPU devices."""

import jax
import numpy as np
import pytest
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec as P

from aotd_jax import hf, sharding
from aotd_jax.models import generate as gen
from test_llama import left_padded_batch, make_hf_llama

AXES = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize(
  "sizes, n, want",
  [
    ({"data": -1}, 8, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 8, (2, 2, 2)),
    ({"data": 1, "fsdp": 1, "tensor": -1}, 4, (1, 1, 4)),
    ({"fsdp": 4}, 4, (1, 4, 1)),
  ],
)
def test_mesh_shape(sizes, n, want):
  assert sharding.mesh_shape(sizes, n) == want


@pytest.mark.parametrize(
  "sizes, n, message",
  [
    ({"data": -1, "fsdp": -1}, 8, "at most one axis may be -1"),
    ({"data": 3, "tensor": -1}, 8, "do not divide by 3"),
    ({"data": 2, "fsdp": 2}, 8, "needs 4 devices, have 8"),
  ],
)
def test_mesh_shape_rejects_bad_configs(sizes, n, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(sizes, n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  assert jax.device_count() == 8, "conftest should force 8 host devices"
  path = str(tmp_path_factory.mktemp("llama"))
  make_hf_llama(path)
  mesh = sharding.make_mesh(AXES)
  return path, mesh, hf.from_pretrained(path), hf.from_pretrained(path, mesh=mesh)


def test_params_carry_rules_table_shardings(setup):
  _, mesh, _, model = setup
  assert dict(mesh.shape) == AXES
  layer = model.model.layers[0]
  expected = [
    (model.model.embed_tokens.embedding, P("tensor", "fsdp")),  # (vocab, embed)
    (layer.self_attn.q_proj.kernel, P("fsdp", "tensor")),  # (embed, heads)
    (layer.self_attn.k_proj.kernel, P("fsdp", "tensor")),  # (embed, kv_heads)
    (layer.self_attn.o_proj.kernel, P("tensor", "fsdp")),  # (heads, embed)
    (layer.mlp.gate_proj.kernel, P("fsdp", "tensor")),  # (embed, mlp)
    (layer.mlp.down_proj.kernel, P("tensor", "fsdp")),  # (mlp, embed)
    (layer.input_layernorm.scale, P(None)),
    (model.lm_head.kernel, P("fsdp", "tensor")),  # (embed, vocab)
  ]
  for var, spec in expected:
    got = var.get_value().sharding
    assert got.mesh.shape == mesh.shape and got.spec == spec, (var, got.spec, spec)
  assert sharding.logical_to_spec(
    ("activation_batch", "activation_length", "activation_vocab")
  ) == P(("data", "fsdp"), None, "tensor")


def test_sharded_forward_equals_single_device(setup):
  _, mesh, single, model = setup
  ids, mask, _ = left_padded_batch(pads=(5, 0, 11, 2))
  want = single(ids, mask).logits

  @nnx.jit
  def forward(m, ids, mask):
    return m(ids, mask).logits

  with jax.set_mesh(mesh), spmd.logical_axis_rules(sharding.DEFAULT_RULES):
    got = forward(model, ids, mask)
  assert got.sharding.spec == P(("data", "fsdp"), None, "tensor")
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)


def test_sharded_generate_equals_single_device(setup):
  _, mesh, single, model = setup
  ids, mask, _ = left_padded_batch(length=10, pads=(4, 0, 6, 1))
  want = gen.generate(single, ids, mask, max_new_tokens=5, eos_token_id=2, pad_token_id=0)
  with jax.set_mesh(mesh), spmd.logical_axis_rules(sharding.DEFAULT_RULES):
    got = gen.generate(model, ids, mask, max_new_tokens=5, eos_token_id=2, pad_token_id=0)
  np.testing.assert_array_equal(got.sequences, want.sequences)
