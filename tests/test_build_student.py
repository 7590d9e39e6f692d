"""`build_student(hf_dir=...)`: the config's training options reach every sub-module of the
loaded model (not only its top-level config), and the weights stay the checkpoint's."""

import jax
import ml_collections
import numpy as np
from flax import nnx

import aotd_jax  # noqa: F401
from aotd_jax import hf, sharding
from aotd_jax.train import build
from configs.toyworld import distill as toy


def test_hf_dir_student_takes_remat_attention_and_freeze_options(tmp_path):
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
  base = ml_collections.ConfigDict(
    {
      "hf_dir": "",
      "architecture": "LlavaNextVideoForConditionalGeneration",
      "init": dict(toy.TINY_LLAVA),
    }
  )
  hf.save_pretrained(build.build_student(base, mesh=mesh), str(tmp_path))
  cfg = ml_collections.ConfigDict(
    {
      "hf_dir": str(tmp_path),
      "compute": {
        "remat": "full",
        "attention_impl": "causal",
        "attention_block_size": 4,
        "cpu_kernels": False,
        "matmul_precision": "high",
        "freeze_vision_tower": True,
      },
    }
  )
  student = build.build_student(cfg, mesh=mesh)
  lm = student.language_model
  for options in (student.options, lm.options, lm.model.layers[0].self_attn.options):
    assert (
      options.remat == "full"
      and options.attention_impl == "causal"
      and options.attention_block_size == 4
    ), options
    assert not options.cpu_kernels and options.matmul_precision == "high", options
  assert lm.model.layers[0].mlp.down_proj.dot_general.max_rows == 0  # the layers were rebuilt too
  # The vision tower and the projector follow the model's matmul precision.
  assert student.options.matmul_precision == "high"
  assert student.vision_tower.options.matmul_precision == "high"
  assert student.multi_modal_projector.linear_1.dot_general.precision == "high"
  assert student.options.freeze_vision_tower
  loaded = hf.from_pretrained(str(tmp_path))
  want = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
  for path, value in nnx.to_flat_state(nnx.state(student, nnx.Param)):
    np.testing.assert_array_equal(
      np.asarray(value[...]), np.asarray(want[path][...]), err_msg=str(path)
    )
