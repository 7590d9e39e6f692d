r"""LLaVA-OneVision on CPU: our jitted train step and video-conditioned greedy decoding vs
transformers' PyTorch `LlavaOnevisionForConditionalGeneration` (eager), same random weights,
same inputs, one run. The harness is `llava_cpu.py`'s (rows, meshes, precision rows, the
interleaved timing and the token check); only the model and its FLOP count differ.

  python benchmarks/onevision_cpu.py                 # ~40M params, 8 frames of 112x112, f32, AdamW
  python benchmarks/onevision_cpu.py --variant=tiny  # seconds, for a quick check

The bench student: SigLIP tower 4 x 384 (8x8 patches of 14 px, no class token), Qwen2 LM
6 x 512 with q/k/v biases; each frame's 64 projected patches are resized to 4x4 = 16 tokens,
8 frames + the clip's newline = 129 video tokens.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llava_cpu  # noqa: E402

VARIANTS = {
  "bench": dict(
    vision=dict(
      hidden_size=384,
      intermediate_size=1536,
      num_hidden_layers=4,
      num_attention_heads=6,
      image_size=112,
      patch_size=14,
    ),
    text=dict(
      vocab_size=14000,
      hidden_size=512,
      intermediate_size=1408,
      num_hidden_layers=6,
      num_attention_heads=8,
      num_key_value_heads=4,
    ),
    frames=8,
    batch=4,
    text_tokens=64,
    prompt_text=16,
    new_tokens=64,
  ),
  "tiny": dict(
    vision=dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=28,
      patch_size=7,
    ),
    text=dict(
      vocab_size=128,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
    ),
    frames=4,
    batch=2,
    text_tokens=16,
    prompt_text=8,
    new_tokens=8,
  ),
}


def hf_model(v):
  import torch
  import transformers

  vision = transformers.SiglipVisionConfig(vision_use_head=False, **v["vision"])
  text = transformers.Qwen2Config(
    max_position_embeddings=1024,
    pad_token_id=0,
    eos_token_id=2,
    rope_parameters=dict(rope_type="default", rope_theta=1e6),
    **v["text"],
  )
  vocab = v["text"]["vocab_size"]
  cfg = transformers.LlavaOnevisionConfig(
    vision_config=vision.to_dict(),
    text_config=text.to_dict(),
    video_token_index=vocab - 1,
    image_token_index=vocab - 2,
  )
  torch.manual_seed(0)
  return transformers.LlavaOnevisionForConditionalGeneration(cfg)


def step_flops(model, batch: int, seq: int, frames: int) -> float:
  """Train-step FLOPs: 6 x (matmul params x tokens through them) + attention (x3 for backward).
  The projector runs on every patch (it precedes the 2x resize)."""
  from flax import nnx

  cfg = model.config
  vc, tc = cfg.vision_config, cfg.text_config

  def matmul_params(module, skip=()):
    n = 0
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
      name = "/".join(map(str, path))
      if var.get_value().ndim >= 2 and not any(s in name for s in skip):
        n += var.get_value().size
    return n

  images = batch * frames
  patches = (vc.image_size // vc.patch_size) ** 2
  tower = matmul_params(model.vision_tower, ("position_embedding",)) * images * patches
  tower_attn = 4 * vc.num_hidden_layers * vc.hidden_size * patches**2 * images
  proj = matmul_params(model.multi_modal_projector) * images * patches
  lm = matmul_params(model.language_model, ("embed_tokens",)) * batch * seq
  lm_attn = 4 * tc.num_hidden_layers * tc.num_attention_heads * tc.head_dim * seq * seq * batch
  return 6 * (tower + proj + lm) + 3 * (tower_attn + lm_attn)


def main(argv=None):
  llava_cpu.main(argv, variants=VARIANTS, make_hf_model=hf_model, flops=step_flops)


if __name__ == "__main__":
  main()
