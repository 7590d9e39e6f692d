r"""LLaVA-NeXT-Video-7B distilled on AoTD's data: QA + filtered CoTs from STAR, NExT-QA, AGQA,
ActivityNet-QA and CLEVRER (the paper's recipe: lr 4e-5, warmup 3 %, one epoch, λ = 1,
frozen vision tower).

  arg = "tpu_v5p_128"  64 v5p chips (v5p-128 = 128 TensorCores): mesh fsdp=64; global batch 128.
  arg = "h100x8"       one 8×H100 node: mesh fsdp=8; global batch 64 (grad memory: bf16 + remat).

Paths are placeholders: point `hf_dir` at a local copy of
`llava-hf/LLaVA-NeXT-Video-7B-hf` and each dataset at its annotations, videos and the CoT
JSONL written by `launch/generate_cots.py`. Nothing is downloaded.
"""
import ml_collections

# (format, annotation path, video root): the QA half of the dual-mode data.
DATASETS = (
    ("star", "/data/star/STAR_train.json", "/data/star/Charades_v1_480"),
    ("nextqa", "/data/nextqa/train.csv", "/data/nextqa/NExTVideo"),
    ("agqa", "/data/agqa/train_balanced.txt", "/data/charades/videos"),
    ("activitynet_qa", "/data/anetqa/train_q.json", "/data/anetqa/videos"),
    ("clevrer", "/data/clevrer/train.json", "/data/clevrer/videos"),
)
MESHES = {
    "tpu_v5p_128": dict(data=1, fsdp=-1, tensor=1),
    "h100x8": dict(data=1, fsdp=-1, tensor=1),
}
GLOBAL_BATCH = {"tpu_v5p_128": 128, "h100x8": 64}
PEAK_FLOPS = {"tpu_v5p_128": 459e12, "h100x8": 989e12}  # bf16 dense, per chip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  target = arg or "h100x8"
  if target not in MESHES:
    raise ValueError(f"configs/distill/lnv7b.py: arg {target!r} not in {sorted(MESHES)}")
  c = ml_collections.ConfigDict()
  c.name = f"lnv7b_aotd_{target}"
  c.seed = 0
  c.distributed = target.startswith("tpu")
  c.mesh = ml_collections.ConfigDict(MESHES[target])
  c.batch_size = GLOBAL_BATCH[target]
  # one epoch of ~158.6K QA + ~32.3K CoT samples
  c.total_steps = (158_600 + 32_300) // c.batch_size
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.log_every = 10
  c.rationale_weight = 1.0
  c.peak_flops = PEAK_FLOPS[target]
  c.nan_at_step = -1
  c.kill_at_step = -1

  c.student = ml_collections.ConfigDict()
  c.student.hf_dir = "/models/LLaVA-NeXT-Video-7B-hf"
  c.student.architecture = "LlavaNextVideoForConditionalGeneration"
  c.student.init = {}
  c.student.dtype = "bfloat16"
  c.student.param_dtype = "float32"
  c.student.remat = True
  # The pipeline pads on the right, so causal-only attention is exact: cuDNN flash attention
  # on GPUs (54 % MFU for a 1B Llama on one H200 vs 18 % with the einsum path; RESULTS.md).
  c.student.attention_impl = "causal"
  c.student.freeze_vision_tower = True

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=4e-5, warmup_ratio=0.03, weight_decay=0.0, grad_clip=1.0, final_lr_ratio=0.0))

  c.data = ml_collections.ConfigDict()
  c.data.kind = "pipeline"
  c.data.tokenizer = c.student.hf_dir
  c.data.num_frames = 32
  # 32 frames x 144 = 4,608 video tokens: the official run's max length is 8,192
  c.data.seq_len = 8192
  c.data.train_on_prompt = False
  c.data.qa = [dict(format=f, path=p, video_root=v, weight=1.0) for f, p, v in DATASETS]
  c.data.cot = [dict(path=f"/data/aotd_cots/{f}.jsonl", video_root=v, weight=1.0)
                for f, _, v in DATASETS]
  c.data.num_workers = 16
  return c
