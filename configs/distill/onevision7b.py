r"""LLaVA-OneVision-7B (`llava-hf/llava-onevision-qwen2-7b-ov-hf`) distilled with AoTD's recipe.

Everything but the student comes from `configs/distill/lnv7b.py` (data, optimiser, meshes,
batch sizes; same `arg`: `h100x8` | `tpu_v5p_128`, optionally followed by lnv7b's
`,key=value` options such as `hf_dir=DIR`): only `c.student`, the frame count and the sequence
length change. The paper reports this transfer as STAR 75.8 -> 76.6, MVBench 59.2 -> 60.5.

A OneVision clip of T frames takes T x 14 x 14 + 1 visual tokens (27x27 SigLIP patches resized
2x bilinearly, one newline per clip): 32 frames are 6273 tokens, so sequences are 8192 long.

  python -m launch.train --config=configs/distill/onevision7b.py:h100x8 --workdir=W \
      --config.student.hf_dir=/models/llava-onevision-qwen2-7b-ov-hf \
      --config.data.tokenizer=/models/llava-onevision-qwen2-7b-ov-hf
"""
import ml_collections

from configs.distill import lnv7b

HF_DIR = "/models/llava-onevision-qwen2-7b-ov-hf"
NUM_FRAMES = 32
SEQ_LEN = 8192


def _given(arg: str | None, key: str) -> bool:
  return any(part.strip().startswith(f"{key}=") for part in (arg or "").split(",")[1:])


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = lnv7b.get_config(arg)
  c.name = c.name.replace("lnv7b", "onevision7b", 1)
  hf_dir = c.student.hf_dir if _given(arg, "hf_dir") else HF_DIR
  c.student = ml_collections.ConfigDict(dict(
      hf_dir=hf_dir,
      architecture="LlavaOnevisionForConditionalGeneration",
      init={},
      dtype="bfloat16",
      param_dtype="float32",
      remat=True,
      # Right-padded batches: causal-only attention is exact (cuDNN flash attention on GPUs).
      attention_impl="causal",
      freeze_vision_tower=True,
  ))
  if not _given(arg, "hf_dir"):
    c.data.tokenizer = hf_dir
  c.data.num_frames = NUM_FRAMES
  c.data.seq_len = SEQ_LEN
  return c
