"""`ComputeOptions`: validation that names the field, the remat policies by name, and one
options object reaching every sub-module of a model built or rebuilt with it."""

import dataclasses

import jax
import pytest
from flax import nnx

from aotd_jax.layers.compute import REMAT_POLICIES, ComputeOptions
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
from aotd_jax.models.options import with_options

TINY = LlamaConfig(
  vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
)


@pytest.mark.parametrize(
  "field,value",
  [
    ("dtype", "float8"),
    ("param_dtype", "int8"),
    ("remat", True),
    ("remat", "some"),
    ("attention_impl", "flash3"),
    ("matmul_precision", "fast"),
    ("attention_block_size", -1),
    ("cpu_kernels", "yes"),
    ("freeze_vision_tower", 1),
  ],
)
def test_bad_values_name_the_field(field, value):
  with pytest.raises(ValueError, match=f"{field}={value!r}"):
    ComputeOptions(**{field: value})


def test_from_mapping_names_where_and_the_unknown_key():
  assert ComputeOptions.from_mapping(None) == ComputeOptions()
  assert ComputeOptions.from_mapping({"remat": "full"}).remat_enabled
  with pytest.raises(
    ValueError, match=r"student\.compute: unknown compute option\(s\) \['remat_policy'\]"
  ):
    ComputeOptions.from_mapping({"remat_policy": "full"}, where="student.compute")
  with pytest.raises(ValueError, match=r"student\.compute: ComputeOptions: remat='yes'"):
    ComputeOptions.from_mapping({"remat": "yes"}, where="student.compute")


def test_remat_policies_by_name():
  assert (
    not ComputeOptions().remat_enabled and ComputeOptions(remat="full").checkpoint_policy() is None
  )
  for name in REMAT_POLICIES[2:]:
    assert ComputeOptions(remat=name).checkpoint_policy() is getattr(jax.checkpoint_policies, name)


def test_one_options_object_reaches_every_layer_and_with_options_rebuilds():
  model = LlamaForCausalLM(TINY, options=ComputeOptions(remat="dots_saveable"), rngs=nnx.Rngs(0))
  assert all(layer.self_attn.options is model.options for layer in model.model.layers)
  assert "remat" not in {f.name for f in dataclasses.fields(LlamaConfig)}
  other = with_options(model, matmul_precision="high", cpu_kernels=False)
  assert other.options == dataclasses.replace(
    model.options, matmul_precision="high", cpu_kernels=False
  )
  assert other.model.layers[1].self_attn.options == other.options
  assert other.model.layers[0].mlp.up_proj.dot_general.precision == "high"
  with pytest.raises(
    ValueError, match=r"with_options: unknown compute option\(s\) \['precision'\]"
  ):
    with_options(model, precision="high")
