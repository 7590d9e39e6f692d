r"""LLaVA-NeXT-Video-7B distilled on AoTD's data: QA + filtered CoTs from STAR, NExT-QA, AGQA,
ActivityNet-QA and CLEVRER (the paper's recipe: lr 4e-5, warmup 3 %, one epoch, λ = 1,
frozen vision tower; the official release's data mix, loss, prompt and target).

  arg = "h100x8"       one 8×H100 node: mesh fsdp=8; global batch 64 (grad memory: bf16 + remat).
  arg = "tpu_v5p_128"  64 v5p chips (v5p-128 = 128 TensorCores): mesh fsdp=64; global batch 128.

followed by optional `,key=value` options: `hf_dir=DIR` (the student and its tokenizer),
`datasets=star+nextqa` (a subset by name), `data=DIR` (the root of the default dataset paths
below). Every dataset is a field of `config.data.datasets`, so the command line sets it:

  python -m launch.train --config=configs/distill/lnv7b.py:h100x8,hf_dir=/models/lnv7b,datasets=star \
      --config.data.datasets.star.annotations=/data/star/STAR_train.json \
      --config.data.datasets.star.video_root=/data/star/Charades_v1_480 \
      --config.data.datasets.star.cots='/data/cots/star/cot-*.array_record' --workdir=W

`cots` is the CoT job's kept dataset (a glob of its `cot-*.array_record` shards; "" for a
dataset without CoTs). Nothing is downloaded.
"""
import ml_collections

from configs import common

# name -> (format, annotations, video root, kept CoT shards), under the `data=` root.
DATASETS = {
    "star": ("star", "star/STAR_train.json", "star/Charades_v1_480",
             "cots/star/cot-*.array_record"),
    "nextqa": ("nextqa", "nextqa/train.csv", "nextqa/NExTVideo",
               "cots/nextqa/cot-*.array_record"),
    "agqa": ("agqa", "agqa/train_balanced.txt", "charades/videos", "cots/agqa/cot-*.array_record"),
    "activitynet_qa": ("activitynet_qa", "anetqa/train_q.json", "anetqa/videos",
                       "cots/activitynet_qa/cot-*.array_record"),
    "clevrer": ("clevrer", "clevrer/train.json", "clevrer/videos",
                "cots/clevrer/cot-*.array_record"),
}
MESHES = {
    "tpu_v5p_128": dict(data=1, fsdp=-1, tensor=1),
    "h100x8": dict(data=1, fsdp=-1, tensor=1),
}
GLOBAL_BATCH = {"tpu_v5p_128": 128, "h100x8": 64}
PEAK_FLOPS = {"tpu_v5p_128": 459e12, "h100x8": 989e12}  # bf16 dense, per chip
OPTIONS = ("hf_dir", "datasets", "data")


def parse_arg(arg: str | None) -> tuple[str, dict]:
  """`"h100x8,hf_dir=D,datasets=star+nextqa"` -> ("h100x8", {"hf_dir": "D", ...})."""
  options = common.parse_arg(arg, ("target",) + OPTIONS, where="configs/distill/lnv7b.py",
                             positional="target")
  target = options.pop("target", "h100x8")
  if target not in MESHES:
    raise ValueError(f"configs/distill/lnv7b.py: arg {target!r} not in {sorted(MESHES)}")
  return target, options


def compute_options() -> ml_collections.ConfigDict:
  """The student's `ComputeOptions` (aotd_jax.layers.compute) for every target."""
  return ml_collections.ConfigDict(dict(
      dtype="bfloat16",
      param_dtype="float32",
      remat="full",
      # The pipeline pads on the right, so causal-only attention is exact: cuDNN flash
      # attention on GPUs (benchmarks/RESULTS.md).
      attention_impl="causal",
      freeze_vision_tower=True,
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  target, options = parse_arg(arg)
  names = options.get("datasets", "+".join(DATASETS)).split("+")
  unknown = [n for n in names if n not in DATASETS]
  if unknown:
    raise ValueError(f"configs/distill/lnv7b.py: datasets={options['datasets']!r}: unknown "
                     f"{unknown}; known {list(DATASETS)}")
  root = options.get("data", "/data").rstrip("/")
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
  c.allow_changes = False  # resume even if batch size, λ, total steps or data changed

  c.student = ml_collections.ConfigDict()
  c.student.hf_dir = options.get("hf_dir", "/models/LLaVA-NeXT-Video-7B-hf")
  c.student.architecture = "LlavaNextVideoForConditionalGeneration"
  c.student.init = {}
  c.student.compute = compute_options()
  c.student.freeze_image_newline = True  # the official run freezes it too (docs/fidelity.md)

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=4e-5, warmup_ratio=0.03, weight_decay=0.0, grad_clip=1.0, final_lr_ratio=0.0))

  c.data = ml_collections.ConfigDict()
  c.data.kind = "pipeline"
  c.data.tokenizer = c.student.hf_dir
  c.data.num_frames = 32
  # 32 frames x 144 = 4,608 video tokens: the official run's max length is 8,192
  c.data.seq_len = 8192
  c.data.train_on_prompt = False
  # The official release's recipe (docs/fidelity.md): every example once an epoch, one token
  # mean over the sequence, "Question:/Options:" prompts and the letter as the QA target.
  c.data.mixing = "concat_epoch"
  c.data.prompt_format = "official"
  c.data.answer_style = "letter"
  c.loss = ml_collections.ConfigDict(dict(normalization="sequence"))
  c.neftune_alpha = 0.1  # NEFTune noise on the token embeddings, as the official Trainer
  c.data.datasets = ml_collections.ConfigDict({
      name: dict(format=DATASETS[name][0], annotations=f"{root}/{DATASETS[name][1]}",
                 video_root=f"{root}/{DATASETS[name][2]}", cots=f"{root}/{DATASETS[name][3]}",
                 weight=1.0)
      for name in names})
  c.data.allow_unfiltered_cots = False
  c.data.num_workers = 16
  return c


def with_student(arg: str | None, *, name: str, architecture: str, hf_dir: str,
                 num_frames: int, seq_len: int | None = None) -> ml_collections.ConfigDict:
  """lnv7b's run (data, optimiser, meshes, batch sizes, options) with another student: only
  `c.student`, the frame count and (optionally) the sequence length change. `hf_dir` is the
  default checkpoint; the arg's `hf_dir=` option overrides it (student and tokenizer).

  CoTs for a student of `num_frames` frames are generated with `frames=<num_frames>` (the
  CoT configs' `sampled` frame numbers index the student's own frames).
  """
  c = get_config(arg)
  c.name = c.name.replace("lnv7b", name, 1)
  given = "hf_dir" in parse_arg(arg)[1]
  hf_dir = c.student.hf_dir if given else hf_dir
  c.student = ml_collections.ConfigDict(dict(
      hf_dir=hf_dir,
      architecture=architecture,
      init={},
      compute=compute_options(),
  ))
  c.data.tokenizer = hf_dir
  c.data.num_frames = num_frames
  if seq_len is not None:
    c.data.seq_len = seq_len
  return c

