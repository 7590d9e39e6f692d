"""Hugging Face compatibility: `from_pretrained`, `save_pretrained`, Orbax convert/export."""

from aotd_jax.hf.api import from_pretrained, load_tokenizer, save_pretrained
from aotd_jax.hf.io import CheckpointError

__all__ = ["from_pretrained", "save_pretrained", "load_tokenizer", "CheckpointError"]
