"""HF adapter for `Qwen2VLForConditionalGeneration`: config.json <-> `Qwen2VLConfig` and the
parameter-name table (the vision tower's, and the Qwen2 (Llama) table for the language model).

Reads both key layouts transformers has written: the current one (`model.visual.*`,
`model.language_model.{embed_tokens,layers,norm}.*`, `lm_head.weight`) and the older one the
released checkpoints (Qwen/Qwen2-VL-*-Instruct) use (`visual.*`, `model.{embed_tokens,layers,
norm}.*`, `lm_head.weight`). Export writes the current layout.
"""
from __future__ import annotations

from aotd_jax.hf.mapping import Rule, Transform, linear, norm
from aotd_jax.models.qwen2_vl import Qwen2VLVisionConfig


def _patch_transform(cfg: Qwen2VLVisionConfig) -> Transform:
  """torch Conv3d weight (embed, C, T, P, P) <-> our (C*T*P*P, embed) matmul kernel."""
  shape = (cfg.embed_dim, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
  return Transform("conv3d_as_matmul", lambda x: x.reshape(shape[0], -1).T,
                   lambda x: x.T.reshape(shape))


def vision_rules(cfg: Qwen2VLVisionConfig, hf: str, fx: str) -> list[Rule]:
  """The vision tower's table: HF names under `hf` (e.g. "model.visual") -> ours under `fx`."""
  out = [Rule(f"{hf}.patch_embed.proj.weight", f"{fx}/patch_embed/proj/kernel", _patch_transform(cfg))]
  for i in range(cfg.depth):
    h, f = f"{hf}.blocks.{i}", f"{fx}/blocks/{i}"
    out += norm(f"{h}.norm1", f"{f}/norm1") + norm(f"{h}.norm2", f"{f}/norm2")
    out += linear(f"{h}.attn.qkv", f"{f}/attn/qkv") + linear(f"{h}.attn.proj", f"{f}/attn/proj")
    out += linear(f"{h}.mlp.fc1", f"{f}/mlp/fc1") + linear(f"{h}.mlp.fc2", f"{f}/mlp/fc2")
  out += norm(f"{hf}.merger.ln_q", f"{fx}/merger/ln_q")
  out += linear(f"{hf}.merger.mlp.0", f"{fx}/merger/mlp/0") + linear(f"{hf}.merger.mlp.2", f"{fx}/merger/mlp/1")
  return out
