r"""CoT generation on STAR with the real experts and an LLM program writer, rewriter and judge.

  python -m launch.generate_cots --config=configs/cot/star.py:\
ann=STAR_train.json,videos=Charades_v1_480,classes=STAR/annotations/STAR_classes,\
owlv2=owlv2-base-patch16-ensemble,univtg=univtg/model_best.ckpt,clip=clip-vit-base-patch32,\
llava=LLaVA-NeXT-Video-7B-DPO-hf,llm=http://localhost:8000/v1,model=deepseek-coder-6.7b-instruct \
      --shard_index=0 --num_shards=8

`arg` (comma-separated key=value):
- data: `ann` (STAR JSON), `videos` (Charades mp4 dir), `classes` (STAR's class-list dir: object
  names become the detector's vocabulary), `out` (output dir).
- experts (`experts=real`, the default): `owlv2`, `univtg`, `clip`, `llava` checkpoint paths.
  `experts=oracle` reads STAR's annotated scene graphs instead (an upper bound, not AoTD);
  the run's `manifest.json` says which.
- LLMs: `llm` (OpenAI-compatible base URL, or a local Llama dir) with `model`; optional
  `judge`/`judge_model`, `rewrite`/`rewrite_model` and `selector`/`selector_model`
  (`selector=keyword`: the offline word-overlap heuristic instead of an LLM).
- frames: `frames` (32, the student's), `window` (`whole`: the whole video, as the official
  release; `question`: STAR's question window) and `frame_sampling` (`official`: the release's
  `linspace(0, vlen, frames, endpoint=False)`; `ours`: both ends taken), as the student's
  `data.window` / `data.frame_sampling` (docs/fidelity.md, "which frames").
- `runlocal`: 4 questions in batches of 2 (the plumbing, before the sharded run).
STAR's `question_program` is a list of functions, not Python: programs always come from the LLM.
"""

import ml_collections

import experts
from configs import common

KEYS = dict(
  ann="",
  videos="",
  classes="",
  out="workdir/cots/star",
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
  window="whole",
  frame_sampling="official",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(
    arg, KEYS, where="configs/cot/star.py", defaults=KEYS, switches=(common.RUNLOCAL,)
  )
  for key in ("ann", "videos", "llm"):
    if not a[key]:
      raise ValueError(f"configs/cot/star.py: {key}= is required (see the module docstring)")
  c = common.cot_base_config()
  c.data.format = "star"
  c.data.path = a["ann"]
  c.data.video_dir = a["videos"]
  # "whole": the experts see the whole video, as the official release; "question": the
  # question's window (ours; docs/fidelity.md, "which frames"). The student must train the
  # same way (configs/common.py's distill_config: data.window)
  c.data.read_kwargs.window = a["window"]
  c.examples = "star"
  c.examples_package = ""  # data/prompts/examples/star.txt
  c.out_dir = a["out"]
  c.max_frames = int(a["frames"])  # = the student's data.num_frames (lnv7b: 32)
  c.frame_numbers = "sampled"  # traces name the student's frames 0..frames-1 (official)
  # which frames, as the student's data.frame_sampling: "official" (the release's
  # linspace(0, vlen, frames, endpoint=False)) or "ours" (both ends taken)
  c.frame_sampling = common.frame_sampling(a, "configs/cot/star.py")
  vocabulary = f"star:{a['classes']}" if a["classes"] else "open"
  if a["experts"] == "real":
    c.experts = common.bind_experts("star", a, vocabulary=vocabulary)
  elif a["experts"] == "oracle":
    c.experts = experts.default_config()
    c.experts.ground_truth = {"kind": "star", "path": a["ann"], "classes_dir": a["classes"]}
    c.experts.object_vocabulary = vocabulary
    c.experts.selector = common.selector_section(
      a["selector"] or a["llm"], a["selector_model"] or a["model"]
    )
  else:
    raise ValueError(f"configs/cot/star.py: experts={a['experts']!r}: expected real or oracle")
  common.bind_llms(c, a)
  c.batch_size = 32
  c.pipeline.llm_workers = 2  # the LLMs are servers (or greedy local models)
  c.sandbox.num_workers = 8
  c.sandbox.memory_mb = 1024
  if a[common.RUNLOCAL]:
    common.shrink_cot(c)
  return c
