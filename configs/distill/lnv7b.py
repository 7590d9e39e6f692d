r"""LLaVA-NeXT-Video-7B distilled on AoTD's data: QA from STAR, NExT-QA, AGQA, ActivityNet-QA
and CLEVRER, filtered CoTs from STAR and NExT-QA (configs/cot/; the others' `cots` default to
none) (the paper's recipe: lr 4e-5, warmup 3 %, one epoch, λ = 1, frozen vision tower; the
official release's data mix, loss, prompt and target).

  arg = "h100x8"       one 8×H100 node: mesh fsdp=8; global batch 64 (grad memory: bf16 + remat).
  arg = "tpu_v5p_128"  64 v5p chips (v5p-128 = 128 TensorCores): mesh fsdp=64; global batch 128.

followed by optional `,key=value` options: `hf_dir=DIR` (the student and its tokenizer),
`datasets=star+nextqa` (a subset by name), `data=DIR` (the root of the default dataset paths,
`configs/common.py`'s DATASETS), and the switch `runlocal` (batch 2, 4 steps: the plumbing on
one machine). Every dataset is a field of `config.data.datasets`, so the command line sets it:

  python -m launch.train --config=configs/distill/lnv7b.py:h100x8,hf_dir=/models/lnv7b,datasets=star \
      --config.data.datasets.star.annotations=/data/star/STAR_train.json \
      --config.data.datasets.star.video_root=/data/star/Charades_v1_480 \
      --config.data.datasets.star.cots='/data/cots/star/cot-*.array_record' --workdir=W

`cots` is the CoT job's kept dataset (a glob of its `cot-*.array_record` shards; "" for a
dataset without CoTs). Nothing is downloaded.
"""

import ml_collections

from configs import common

HF_DIR = "/models/LLaVA-NeXT-Video-7B-hf"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.distill_config(
    arg,
    where="configs/distill/lnv7b.py",
    name="lnv7b",
    architecture="LlavaNextVideoForConditionalGeneration",
    hf_dir=HF_DIR,
    num_frames=32,
    seq_len=8192,
  )
