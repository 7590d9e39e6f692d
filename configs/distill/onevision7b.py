r"""LLaVA-OneVision-7B (`llava-hf/llava-onevision-qwen2-7b-ov-hf`) distilled with AoTD's recipe.

The recipe is lnv7b's (`configs/common.py`'s `distill_config`: data, optimiser, meshes,
batch sizes; the same `arg`: `h100x8` | `tpu_v5p_128`, optionally followed by `,key=value`
options such as `hf_dir=DIR`, and `runlocal`): only `c.student`, the frame count and the
sequence length differ. The paper reports this transfer as STAR 75.8 -> 76.6, MVBench 59.2 -> 60.5.

A OneVision clip of T frames takes T x 14 x 14 + 1 visual tokens (27x27 SigLIP patches resized
2x bilinearly, one newline per clip): 32 frames are 6273 tokens, so sequences are 8192 long.

  python -m launch.train --config=configs/distill/onevision7b.py:h100x8 --workdir=W \
      --config.student.hf_dir=/models/llava-onevision-qwen2-7b-ov-hf \
      --config.data.tokenizer=/models/llava-onevision-qwen2-7b-ov-hf
"""

import ml_collections

from configs import common

HF_DIR = "/models/llava-onevision-qwen2-7b-ov-hf"
NUM_FRAMES = 32
SEQ_LEN = 8192


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.distill_config(
    arg,
    where="configs/distill/onevision7b.py",
    name="onevision7b",
    architecture="LlavaOnevisionForConditionalGeneration",
    hf_dir=HF_DIR,
    num_frames=NUM_FRAMES,
    seq_len=SEQ_LEN,
  )
