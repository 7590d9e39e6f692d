r"""Qwen2-VL-7B (`Qwen/Qwen2-VL-7B-Instruct`) distilled with AoTD's recipe.

The recipe is lnv7b's (`configs/common.py`'s `distill_config`: data, optimiser, meshes, batch
sizes, sequence length; the same `arg`: `h100x8` | `tpu_v5p_128`, optionally followed by
`,key=value` options such as `hf_dir=DIR`, and `runlocal`): only `c.student` and the frame
count differ.
The paper reports this transfer as STAR 71.4 -> 73.1, MVBench 65.6 -> 66.5.

Frames are resized to 336 x 336 (the student's `vision_config.image_size`; a fixed size keeps
batch shapes static, where transformers' processor picks one per video): each pair of frames
is 24 x 24 patches, merged 2 x 2 into 144 tokens, so 16 frames are 8 x 144 = 1152 `<|video_pad|>`
tokens between `<|vision_start|>` and `<|vision_end|>`, well inside lnv7b's 8192. Generate its
CoTs with `frames=16` in the CoT config string, so their frame numbers index these 16 frames.

  python -m launch.train --config=configs/distill/qwen2vl7b.py:h100x8 --workdir=W \
      --config.student.hf_dir=/models/Qwen2-VL-7B-Instruct \
      --config.data.tokenizer=/models/Qwen2-VL-7B-Instruct
"""

import ml_collections

from configs import common

HF_DIR = "/models/Qwen2-VL-7B-Instruct"
NUM_FRAMES = 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.distill_config(
    arg,
    where="configs/distill/qwen2vl7b.py",
    name="qwen2vl7b",
    architecture="Qwen2VLForConditionalGeneration",
    hf_dir=HF_DIR,
    num_frames=NUM_FRAMES,
  )
