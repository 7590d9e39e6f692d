r"""Llama configs: the tiny default (smoke run, tests' sizes) and the ~30M benchmark size.

  python -m launch.smoke --config=configs/llama_tiny.py            # tiny, random weights
  python -m launch.smoke --config=configs/llama_tiny.py:bench      # ~30M parameters
  python -m launch.smoke --config=configs/llama_tiny.py --config.hf_dir=/path/to/hf_llama

`arg` picks the variant: "tiny" (default) or "bench".
"""

import ml_collections

from configs import common

VARIANTS = {
  "tiny": dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
  ),
  # ~29M parameters (25M in matmuls): the size `benchmarks/llama_cpu.py` measures.
  "bench": dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=7,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=2048,
  ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The smoke-run config; `arg` is the model variant."""
  variant = common.parse_arg(
    arg,
    ("variant",),
    where="configs/llama_tiny.py",
    positional="variant",
    defaults={"variant": "tiny"},
  )["variant"]
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/llama_tiny.py: unknown variant {variant!r}; choose from {sorted(VARIANTS)}"
    )
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.model = dict(
    VARIANTS[variant],
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
  )
  c.compute = dict(dtype="float32", param_dtype="float32")  # `ComputeOptions` fields
  c.hf_dir = ""  # a HF Llama directory to load instead of random weights
  c.seed = 0
  c.batch_size = 2
  c.prompt_lengths = (5, 9)  # left-padded to one bucket
  c.max_new_tokens = 16
  c.temperature = 0.0  # 0: greedy
  c.top_p = 1.0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.distributed = False
  return c
