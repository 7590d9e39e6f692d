r"""Toy distillation run: a tiny LLaVA-NeXT-Video student on tiny synthetic data, ~1 min on a CPU.

  python -m launch.train --config=configs/toyworld/distill.py --workdir=/tmp/toy \
      --config.total_steps=20 --config.checkpoint_every=5 --config.seed=0

`arg` picks the student: "llava" (default, LLaVA-NeXT-Video), "onevision" (LLaVA-OneVision),
"qwen2vl" (Qwen2-VL) or "llama" (text-only, fastest).
"""

import ml_collections

from aotd_jax.projects.toyworld.tiny_models import TINY_LLAMA, TINY_LLAVA
from configs import common

# A tiny LLaVA-OneVision: SigLIP tower (no class token, 'full' features), Qwen2 LM (q/k/v biases).
TINY_ONEVISION = dict(
  architectures=["LlavaOnevisionForConditionalGeneration"],
  model_type="llava_onevision",
  text_config={
    **{k: v for k, v in TINY_LLAMA.items() if k != "architectures"},
    "model_type": "qwen2",
    "rope_theta": 1e6,
  },
  vision_config=dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=False,
  ),
  video_token_index=4,
  image_token_index=5,
  vision_feature_layer=-1,
  vision_feature_select_strategy="full",
  projector_hidden_act="gelu",
  image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
  vision_aspect_ratio="anyres_max_9",
  tie_word_embeddings=False,
)
# A tiny Qwen2-VL: 2-D rotary ViT on 4x4 patches of 2 frames, 2x2 merger, M-RoPE Qwen2 LM; frames
# are 16x16 (`image_size`, the pipeline's square frame size), so 4 frames make 2 x 2 x 2 = 8 tokens.
TINY_QWEN2VL = dict(
  architectures=["Qwen2VLForConditionalGeneration"],
  model_type="qwen2_vl",
  text_config={
    **{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "rope_theta")},
    "model_type": "qwen2_vl_text",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]},
  },
  vision_config=dict(
    model_type="qwen2_vl",
    depth=2,
    embed_dim=32,
    hidden_size=32,
    num_heads=4,
    mlp_ratio=2,
    patch_size=4,
    spatial_merge_size=2,
    temporal_patch_size=2,
    hidden_act="quick_gelu",
    image_size=16,
  ),
  video_token_id=4,
  image_token_id=5,
  vision_start_token_id=6,
  vision_end_token_id=7,
  tie_word_embeddings=False,
)
STUDENTS = {
  "llava": ("LlavaNextVideoForConditionalGeneration", TINY_LLAVA),
  "onevision": ("LlavaOnevisionForConditionalGeneration", TINY_ONEVISION),
  "qwen2vl": ("Qwen2VLForConditionalGeneration", TINY_QWEN2VL),
  "llama": ("LlamaForCausalLM", TINY_LLAMA),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  student = common.parse_arg(
    arg,
    ("student",),
    where="configs/toyworld/distill.py",
    positional="student",
    defaults={"student": "llava"},
  )["student"]
  c = ml_collections.ConfigDict()
  c.name = f"toy_{student}"
  c.seed = 0
  c.total_steps = 20
  c.checkpoint_every = 5
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.log_every = 5
  c.batch_size = 8
  c.rationale_weight = 1.0  # λ in L = L_label + λ·L_rationale
  # "per_part": mean(answer) + λ·mean(rationale), prompt masked (ours); "sequence": one token
  # mean over the whole sequence, as the official release (docs/fidelity.md)
  c.loss = ml_collections.ConfigDict(dict(normalization="per_part"))
  # NEFTune noise on the token embeddings (official: 0.1, lnv7b's default); 0: none
  c.neftune_alpha = 0.0
  c.peak_flops = 0.0  # set to the hardware's peak (FLOP/s) for an MFU estimate
  c.allow_changes = False  # resume even if batch size, λ, total steps or data changed
  c.distributed = False
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.student = ml_collections.ConfigDict()
  c.student.hf_dir = ""
  if student not in STUDENTS:
    raise ValueError(f"configs/toyworld/distill.py: arg {student!r} not in {sorted(STUDENTS)}")
  c.student.architecture, c.student.init = STUDENTS[student]
  # `ComputeOptions` (aotd_jax/layers/compute.py): remat "none" | "full" | a jax policy name;
  # attention_impl "causal": flash attention (right-padded batches); matmul_precision "high":
  # bf16x3 dense-layer matmuls.
  c.student.compute = ml_collections.ConfigDict(
    dict(
      dtype="float32",
      param_dtype="float32",
      remat="none",
      attention_impl="xla",
      attention_block_size=64,
      matmul_precision="default",
      cpu_kernels=True,
      freeze_vision_tower=True,
    )
  )

  c.optim = ml_collections.ConfigDict(
    dict(learning_rate=3e-3, warmup_ratio=0.1, weight_decay=0.0, grad_clip=1.0, final_lr_ratio=0.1)
  )

  c.data = ml_collections.ConfigDict()
  c.data.kind = "synthetic"
  c.data.seq_len = 48
  c.data.num_frames = 4
  return c


def get_hyper(h, arg=None):
  """A small sweep for `launch/sweep.py`: λ × seed."""
  del arg
  return h.product([h.sweep("rationale_weight", [0.0, 1.0]), h.sweep("seed", [0, 1])])
