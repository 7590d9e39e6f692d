r"""CoT generation on NExT-QA (multiple choice) with an LLM program writer and judge.

  python -m launch.generate_cots --config=configs/cot/nextqa.py:ann=/data/nextqa/train.csv,videos=/data/nextqa/NExTVideo,map=/data/nextqa/map_vid_vidorID.json,llm=http://localhost:8000/v1

`arg`: `ann` (NExT-QA csv), `videos`, `map` (video id -> path json), `llm`, `model`.
"""
import ml_collections

from configs.cot import toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = toy.parse_arg(arg, ann="data/nextqa/train.csv", videos="data/nextqa/NExTVideo",
                    map="data/nextqa/map_vid_vidorID.json", llm="",
                    model="deepseek-coder-6.7b-instruct")
  c = toy.base_config()
  c.data.format = "nextqa"
  c.data.path = a["ann"]
  c.data.video_dir = a["videos"]
  c.data.read_kwargs = {"map_path": a["map"]} if a["map"] else {}
  c.examples = "nextqa"
  c.out_dir = "workdir/cots/nextqa"
  c.program_source = "llm"
  c.program_llm = toy.llm("openai", base_url=a["llm"] or "http://localhost:8000/v1",
                          model=a["model"])
  c.cot_llm = toy.llm("openai", base_url=a["llm"] or "http://localhost:8000/v1", model=a["model"])
  c.judge_llm = toy.llm("openai", base_url=a["llm"] or "http://localhost:8000/v1",
                        model=a["model"])
  c.logic_judge = "llm"
  import experts
  c.experts = experts.default_config()  # bind real models (the oracle needs ground truth)
  c.batch_size = 32
  c.sandbox.num_workers = 8
  c.sandbox.memory_mb = 1024
  return c
