r"""CoT generation on NExT-QA (multiple choice) with the real experts and LLMs.

  python -m launch.generate_cots --config=configs/cot/nextqa.py:\
ann=nextqa/train.csv,videos=NExTVideo,map=nextqa/map_vid_vidorID.json,\
owlv2=owlv2-base-patch16-ensemble,univtg=univtg/model_best.ckpt,clip=clip-vit-base-patch32,\
llava=LLaVA-NeXT-Video-7B-DPO-hf,llm=http://localhost:8000/v1,model=deepseek-coder-6.7b-instruct

`arg`: as `star.py` (experts, LLMs, `out`, `frames`, `frame_sampling`; NExT-QA has no question
window, so its videos are always whole), with `map` (video id -> path JSON) and
`vocab` ("open": the detector looks for the phrase a program names, the default; or a file
with one object name per line), and `runlocal` (4 questions in batches of 2). NExT-QA has no
scene graphs, so there is no oracle.
"""

import ml_collections

from configs import common

KEYS = dict(
  ann="",
  videos="",
  map="",
  vocab="open",
  out="workdir/cots/nextqa",
  experts="real",
  owlv2="",
  univtg="",
  clip="",
  llava="",
  llm="",
  model="deepseek-coder-6.7b-instruct",
  judge="",
  judge_model="",
  rewrite="",
  rewrite_model="",
  selector="",
  selector_model="",
  frames="32",
  frame_sampling="official",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(
    arg, KEYS, where="configs/cot/nextqa.py", defaults=KEYS, switches=(common.RUNLOCAL,)
  )
  for key in ("ann", "videos", "llm"):
    if not a[key]:
      raise ValueError(f"configs/cot/nextqa.py: {key}= is required (see the module docstring)")
  if a["experts"] != "real":
    raise ValueError(
      f"configs/cot/nextqa.py: experts={a['experts']!r}: NExT-QA has no scene "
      "graphs to build an oracle from; only experts=real"
    )
  c = common.cot_base_config()
  c.data.format = "nextqa"
  c.data.path = a["ann"]
  c.data.video_dir = a["videos"]
  if a["map"]:
    c.data.read_kwargs.map_path = a["map"]
  c.examples = "nextqa"
  c.examples_package = ""  # data/prompts/examples/nextqa.txt
  c.out_dir = a["out"]
  c.max_frames = int(a["frames"])  # = the student's data.num_frames (lnv7b: 32)
  c.frame_numbers = "sampled"  # traces name the student's frames 0..frames-1 (official)
  # which frames, as the student's data.frame_sampling: "official" (the release's
  # linspace(0, vlen, frames, endpoint=False)) or "ours" (both ends taken)
  c.frame_sampling = common.frame_sampling(a, "configs/cot/nextqa.py")
  vocab = a["vocab"]
  c.experts = common.bind_experts(
    "nextqa", a, vocabulary="open" if vocab == "open" else f"file:{vocab}"
  )
  common.bind_llms(c, a)
  c.batch_size = 32
  c.pipeline.llm_workers = 2  # the LLMs are servers (or greedy local models)
  c.sandbox.num_workers = 8
  c.sandbox.memory_mb = 1024
  if a[common.RUNLOCAL]:
    common.shrink_cot(c)
  return c
