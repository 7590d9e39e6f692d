r"""CoT generation on the toy world (default): oracle experts, gold or LLM programs, offline.

  python -m launch.generate_cots --config=configs/toyworld/cot.py:world=/tmp/toyworld,split=train \
      --config.out_dir=/tmp/cots

`arg` (comma-separated key=value): `world` (toy-world dir, generated there when missing),
`split` (train|val|test), `clips` (clips to generate), `programs` (gold|llm).
Every field the job reads is set by `configs/common.py`'s `cot_base_config`.
"""

import ml_collections

import experts
from configs import common

# The CoT job's sections, as this config's own (tests and fixtures build on them).
from configs.common import cot_base_config as base_config, llm  # noqa: F401

KEYS = dict(world="workdir/toyworld", split="train", clips="10", programs="gold")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, KEYS, where="configs/toyworld/cot.py", defaults=KEYS)
  c = base_config()
  c.data.path = f"{a['world']}/{a['split']}.json"
  c.data.video_dir = f"{a['world']}/videos"
  c.data.toyworld_seed = 0
  c.data.toyworld_clips = int(a["clips"])
  c.program_source = a["programs"]
  c.experts = experts.default_config()  # the toy world's oracle experts read its ground truth
  c.experts.ground_truth.path = a["world"]
  # a model bound to a role (e.g. --config.experts.detector.kind=owlv2) batches the calls of
  # concurrent programs (docs/experts.md); --config.experts.coalesce=False turns it off
  c.experts.coalesce = True
  c.examples = "toyworld"
  c.out_dir = f"workdir/cots/toy_{a['split']}"
  return c
