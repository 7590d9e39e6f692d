"""HF import/export for Llama, Orbax convert/export, and every handled bad-checkpoint error."""

import json
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from aotd_jax import hf
from aotd_jax.hf import __main__ as cli
from aotd_jax.hf import io, orbax_io
from aotd_jax.hf.llama import config_from_hf
from test_llama import CONFIGS, left_padded_batch, make_hf_llama, torch_forward


def _logits(torch_model, ids, mask, pos):
  return torch_forward(torch_model, ids, mask, pos).logits.numpy()


@pytest.mark.parametrize("name", ["gqa", "tied_mha", "llama3"])
def test_save_pretrained_loads_in_transformers_with_same_logits(tmp_path, name):
  ref = make_hf_llama(tmp_path / "src", **CONFIGS[name])
  model = hf.from_pretrained(str(tmp_path / "src"))
  hf.save_pretrained(model, str(tmp_path / "out"))
  back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert back.config.rope_parameters == ref.config.rope_parameters
  ids, mask, pos = left_padded_batch()
  np.testing.assert_array_equal(_logits(back, ids, mask, pos), _logits(ref, ids, mask, pos))


def test_sharded_safetensors_round_trip(tmp_path):
  ref = make_hf_llama(tmp_path / "src")
  model = hf.from_pretrained(str(tmp_path / "src"))
  hf.save_pretrained(model, str(tmp_path / "out"), max_shard_bytes=20_000)
  index = json.load(open(tmp_path / "out" / io.SAFE_INDEX))
  assert len(set(index["weight_map"].values())) > 2
  back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  ids, mask, pos = left_padded_batch()
  np.testing.assert_array_equal(_logits(back, ids, mask, pos), _logits(ref, ids, mask, pos))
  again = hf.from_pretrained(str(tmp_path / "out"))
  np.testing.assert_array_equal(again(ids, mask).logits, model(ids, mask).logits)


def test_dtype_on_load(tmp_path):
  make_hf_llama(tmp_path)
  f32 = hf.from_pretrained(str(tmp_path))
  bf16 = hf.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
  kernel = bf16.model.layers[0].self_attn.q_proj.kernel
  assert kernel.get_value().dtype == jnp.bfloat16 and bf16.options.dtype == "bfloat16"
  ids, mask, _ = left_padded_batch()
  a, b = f32(ids, mask).logits, bf16(ids, mask).logits
  np.testing.assert_allclose(np.asarray(b, np.float32), a, atol=0.1 * float(np.abs(a).max()))


def test_transformers4_config_fields_are_read():
  cfg = config_from_hf(
    {
      "hidden_size": 32,
      "num_attention_heads": 4,
      "rope_theta": 500000.0,
      "rope_scaling": {"type": "linear", "factor": 4.0},
      "eos_token_id": [2, 7],
    }
  )
  assert cfg.rope_theta == 500000.0 and cfg.rope_scaling_dict == {"type": "linear", "factor": 4.0}
  assert cfg.eos_token_id == (2, 7) and cfg.head_dim == 8


# --- errors: each names the file and the tensor -------------------------------------------------


def _rewrite(path, change):
  fpath = os.path.join(path, io.SAFE_WEIGHTS)
  tensors = load_file(fpath)
  change(tensors)
  save_file(tensors, fpath, metadata={"format": "pt"})
  return fpath


def test_missing_config_json(tmp_path):
  with pytest.raises(io.CheckpointError, match=f"{tmp_path}/config.json: no config.json"):
    hf.from_pretrained(str(tmp_path))


def test_unsupported_architecture(tmp_path):
  make_hf_llama(tmp_path)
  cfg = json.load(open(tmp_path / "config.json"))
  cfg["architectures"] = ["GPT2LMHeadModel"]
  json.dump(cfg, open(tmp_path / "config.json", "w"))
  with pytest.raises(
    io.CheckpointError, match="config.json: unsupported architecture 'GPT2LMHeadModel'"
  ):
    hf.from_pretrained(str(tmp_path))


def test_missing_tensor(tmp_path):
  make_hf_llama(tmp_path)
  _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(io.CheckpointError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
    hf.from_pretrained(str(tmp_path))


def test_unexpected_tensor(tmp_path):
  make_hf_llama(tmp_path)
  fpath = _rewrite(
    tmp_path, lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)})
  )
  with pytest.raises(
    io.CheckpointError, match=f"{fpath}: unexpected tensor model.layers.0.extra.weight"
  ):
    hf.from_pretrained(str(tmp_path))


def test_misshaped_tensor(tmp_path):
  make_hf_llama(tmp_path)
  fpath = _rewrite(tmp_path, lambda t: t.update({"model.norm.weight": np.ones(31, np.float32)}))
  with pytest.raises(
    io.CheckpointError, match=f"{fpath}: tensor model.norm.weight has shape \\(31,\\)"
  ):
    hf.from_pretrained(str(tmp_path))


# --- Orbax -----------------------------------------------------------------------------------


def test_orbax_convert_export_round_trip_is_exact(tmp_path):
  make_hf_llama(tmp_path / "src", **CONFIGS["llama3"])
  assert (
    cli.main(["convert", "--hf_dir", str(tmp_path / "src"), "--orbax_dir", str(tmp_path / "ckpt")])
    == 0
  )
  assert os.path.isdir(tmp_path / "ckpt" / "0" / "model")
  assert (
    cli.main(["export", "--orbax_dir", str(tmp_path / "ckpt"), "--hf_dir", str(tmp_path / "out")])
    == 0
  )
  a, _ = io.read_tensors(str(tmp_path / "src"))
  b, _ = io.read_tensors(str(tmp_path / "out"))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert config_from_hf(io.read_config(str(tmp_path / "out"))) == config_from_hf(
    io.read_config(str(tmp_path / "src"))
  )


def test_export_restores_only_model_of_trainer_layout(tmp_path):
  """A trainer checkpoint (model + opt_state, later step) exports its latest model."""
  make_hf_llama(tmp_path / "src")
  orbax_io.convert(str(tmp_path / "src"), str(tmp_path / "ckpt"))
  model = orbax_io.restore_model(str(tmp_path / "ckpt"))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  params["model"]["norm"]["scale"] = params["model"]["norm"]["scale"] * 2
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
    mngr.save(
      7,
      args=ocp.args.Composite(
        model=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave({"mu": jnp.zeros(5)})
      ),
    )
    mngr.wait_until_finished()
  orbax_io.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
  src, _ = io.read_tensors(str(tmp_path / "src"))
  out, _ = io.read_tensors(str(tmp_path / "out"))
  np.testing.assert_array_equal(out["model.norm.weight"], src["model.norm.weight"] * 2)


def test_orbax_errors_name_the_directory(tmp_path, capsys):
  assert cli.main(["export", "--orbax_dir", str(tmp_path), "--hf_dir", str(tmp_path / "o")]) == 2
  assert f"{tmp_path}/hf_config.json: missing" in capsys.readouterr().err
  make_hf_llama(tmp_path / "src")
  orbax_io.convert(str(tmp_path / "src"), str(tmp_path / "ckpt"))
  with pytest.raises(io.CheckpointError, match="no checkpoint step 3"):
    orbax_io.restore_model(str(tmp_path / "ckpt"), step=3)
  assert (
    cli.main(["convert", "--hf_dir", str(tmp_path / "nothing"), "--orbax_dir", str(tmp_path / "c")])
    == 2
  )
  assert "no config.json" in capsys.readouterr().err
