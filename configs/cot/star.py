r"""CoT generation on STAR with real experts and an LLM program writer and judge.

  python -m launch.generate_cots --config=configs/cot/star.py:ann=/data/star/STAR_train.json,videos=/data/star/Charades_v1_480,llm=http://localhost:8000/v1 \
      --shard_index=0 --num_shards=8

`arg`: `ann`, `videos`, `llm` (OpenAI-compatible base URL of e.g. a vLLM server; empty: gold
programs, the verbaliser and the rule judge), `model` (served model name), `classes` (STAR's class-list dir).
"""
import ml_collections

from configs.cot import toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = toy.parse_arg(arg, ann="data/star/STAR_train.json", videos="data/star/Charades_v1_480",
                    llm="", model="deepseek-coder-6.7b-instruct", classes="")
  c = toy.base_config()
  c.data.format = "star"
  c.data.path = a["ann"]
  c.data.video_dir = a["videos"]
  c.examples = "star"
  c.out_dir = "workdir/cots/star"
  if a["llm"]:
    c.program_source = "llm"
    c.program_llm = toy.llm("openai", base_url=a["llm"], model=a["model"])
    c.cot_llm = toy.llm("openai", base_url=a["llm"], model=a["model"])
    c.judge_llm = toy.llm("openai", base_url=a["llm"], model=a["model"])
    c.logic_judge = "llm"
  import experts
  c.experts = experts.default_config()  # edit roles to bind OWLv2 / UniVTG / LLaVA weights
  c.experts.ground_truth.kind = "star"
  c.experts.ground_truth.path = a["ann"]
  c.experts.ground_truth.classes_dir = a["classes"]  # STAR's class lists: o012 -> names
  if a["classes"]:
    c.experts.object_vocabulary = "star:" + a["classes"]
  c.batch_size = 32
  c.sandbox.num_workers = 8
  c.sandbox.memory_mb = 1024
  return c
