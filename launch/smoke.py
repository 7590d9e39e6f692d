r"""Smoke run of the Llama decoder: build the model, generate for a left-padded batch, print tokens.

  python -m launch.smoke --config=configs/llama_tiny.py

Random weights from `config.seed` unless `--config.hf_dir` names a Hugging Face Llama directory.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app
from flax import nnx
from flax.core import spmd
from ml_collections import config_flags

from aotd_jax import hf, sharding
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.generate import generate
from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

_CONFIG = config_flags.DEFINE_config_file("config", "configs/llama_tiny.py", "Llama smoke config.")


def main(argv):
  del argv
  cfg = _CONFIG.value
  sharding.maybe_initialize_distributed(cfg)
  mesh = sharding.make_mesh(dict(cfg.mesh))
  options = ComputeOptions.from_mapping(cfg.get("compute"), where="compute")
  if cfg.hf_dir:
    model = hf.from_pretrained(cfg.hf_dir, options=options, mesh=mesh)
  else:
    model = sharding.shard_model(
      LlamaForCausalLM(LlamaConfig(**cfg.model), options=options, rngs=nnx.Rngs(cfg.seed)), mesh
    )
  mc = model.config
  rng = np.random.RandomState(cfg.seed)
  lengths = [cfg.prompt_lengths[i % len(cfg.prompt_lengths)] for i in range(cfg.batch_size)]
  width = max(lengths)
  ids = np.full((cfg.batch_size, width), mc.pad_token_id or 0, np.int32)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    ids[row, width - n :] = rng.randint(3, mc.vocab_size, n)
    mask[row, width - n :] = 1
  eos = mc.eos_token_id
  with jax.set_mesh(mesh), spmd.logical_axis_rules(sharding.DEFAULT_RULES):
    start = time.perf_counter()
    out = generate(
      model,
      ids,
      mask,
      max_new_tokens=cfg.max_new_tokens,
      eos_token_id=eos,
      pad_token_id=mc.pad_token_id or 0,
      temperature=cfg.temperature,
      top_p=cfg.top_p,
      rng=jax.random.PRNGKey(cfg.seed),
    )
    seqs = np.asarray(out.sequences)
    seconds = time.perf_counter() - start
  print(
    f"llama smoke: {sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))):,} params, "
    f"mesh {dict(mesh.shape)}, {seconds:.2f}s including compile"
  )
  for row in range(cfg.batch_size):
    print(
      f"prompt {ids[row][mask[row] > 0].tolist()} -> generated {seqs[row, : int(out.lengths[row])].tolist()}"
    )


if __name__ == "__main__":
  app.run(main)
