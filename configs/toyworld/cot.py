r"""CoT generation on the toy world (default): oracle experts, gold or LLM programs, offline.

  python -m launch.generate_cots --config=configs/toyworld/cot.py:world=/tmp/toyworld,split=train \
      --config.out_dir=/tmp/cots

`arg` (comma-separated key=value): `world` (toy-world dir, generated there when missing),
`split` (train|val|test), `clips` (clips to generate), `programs` (gold|llm).
Also the base of `star.py` and `nextqa.py`: every field the job reads is set here.
"""
import ml_collections


def parse_arg(arg: str | None, **defaults) -> dict:
  """`"a=1,b=x"` -> {"a": "1", "b": "x"} over `defaults`; a key not in defaults is an error."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key.strip() not in defaults:
      raise ValueError(f"config arg {item!r}: expected key=value with key in {sorted(defaults)}")
    out[key.strip()] = value.strip()
  return out


# Every backend setting an LLM section can take (`aotd_jax.agent.llm`'s LocalLlama, OpenAIChat,
# Replay), declared unset so the command line can set any of them on any section, e.g.
# `--config.program_llm.kind=local --config.program_llm.kwargs.model_dir=DIR`. The launcher
# passes a backend only the set ones it takes.
LLM_KWARGS = {"model_dir": str, "dtype": str, "max_batch": int, "base_url": str, "model": str,
              "api_key_env": str, "timeout_s": float, "concurrency": int, "path": str}


def llm(kind: str = "none", factory: str = "", **kwargs) -> ml_collections.ConfigDict:
  """An LLM section: kind none | replay | local | openai | factory; kwargs go to the backend."""
  fields = {k: ml_collections.config_dict.placeholder(t) for k, t in LLM_KWARGS.items()}
  for key, value in kwargs.items():
    fields[key] = value
  return ml_collections.ConfigDict({"kind": kind, "factory": factory, "kwargs": fields})


def base_config() -> ml_collections.ConfigDict:
  """Every field of the job, with offline defaults."""
  c = ml_collections.ConfigDict()
  c.out_dir = "workdir/cots"
  c.data = ml_collections.ConfigDict({
      "format": "star",           # aotd_jax.data.annotations.read format
      "path": "",                 # the annotation file
      "video_dir": "",            # videos are <video_dir>/<meta video_path or video_id+ext>
      "video_ext": ".mp4",
      # format options for annotations.read (unset ones are not passed)
      "read_kwargs": {"map_path": ml_collections.config_dict.placeholder(str)},
      "toyworld_seed": None,      # set: generate the toy world at dirname(path) if missing
      "toyworld_clips": 10,
  })
  c.max_questions = 0             # 0: all
  c.max_frames = 32               # frames decoded per question (uniform over its window)
  # "source": traces number frames as the source video; "sampled": the student's own frames,
  # 0..max_frames-1 (set max_frames to the student's data.num_frames), the official numbering
  c.frame_numbers = "source"
  # few-shot programs: <examples_package's folder, else data/prompts>/examples/<examples>.txt
  c.examples = "toyworld"
  c.examples_package = "aotd_jax.projects.toyworld"
  c.program_source = "gold"       # gold (annotation's program) | llm
  c.gold_program_key = "question_program"
  c.program_llm = llm()
  c.cot_llm = llm()               # none: the deterministic verbaliser writes rationales
  c.judge_llm = llm()             # open-ended answer check; logic check if logic_judge=llm
  c.logic_judge = "rule"          # rule (offline) | llm
  c.judge_parse = "lenient"       # lenient (Yes/No anywhere) | exact_true (official)
  c.rewrite_prompt = "ours"       # ours | official (the program in the prompt)
  c.rewrite_fallback = "verbaliser"  # verbaliser (ours) | none (official: reply kept as is)
  c.tools_factory = "experts:make_tools"
  c.experts = ml_collections.ConfigDict()
  c.make_args = ""                # "" decodes a VideoClip per question; or a dotted factory
  c.batch_size = 8
  c.fail_fast_min = 4             # stop when a batch of >= this many programs all hit one broken backend
  c.timeout_s = 30.0
  c.max_new_tokens = 512
  c.temperature = 0.0
  c.progress_every_s = 10.0
  c.report_samples = 20           # questions in report-*.html (0: no report)
  c.use_jax_processes = True      # also split by jax.process_index() (multi-host)
  c.distributed = False           # jax.distributed.initialize() first (set by launch.tpu.pod)
  c.sandbox = ml_collections.ConfigDict({"num_workers": 2, "memory_mb": 512})
  # Stages overlap across batches (programs of batch k+1 written while batch k runs, its
  # rationales judged after); the same records as enabled=False (one batch at a time).
  # max_batches_in_flight bounds the decoded clips in memory (STAR: 32 frames of 480p per
  # question, batch 32: about 1 GB a batch); decode_workers threads decode the clips ahead of
  # execution (0: in the execution threads); llm_workers: batches each LLM stage works on at
  # once (2 keeps an HTTP server busy past a batch's slowest reply; keep 1 for a local model
  # that samples, temperature > 0, whose keys follow its call order).
  c.pipeline = ml_collections.ConfigDict(
      {"enabled": True, "max_batches_in_flight": 4, "decode_workers": 2, "llm_workers": 1})
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, world="workdir/toyworld", split="train", clips="10", programs="gold")
  c = base_config()
  c.data.path = f"{a['world']}/{a['split']}.json"
  c.data.video_dir = f"{a['world']}/videos"
  c.data.toyworld_seed = 0
  c.data.toyworld_clips = int(a["clips"])
  c.program_source = a["programs"]
  import experts  # the toy world's oracle experts read its ground truth
  c.experts = experts.default_config()
  c.experts.ground_truth.path = a["world"]
  # a model bound to a role (e.g. --config.experts.detector.kind=owlv2) batches the calls of
  # concurrent programs (docs/experts.md); --config.experts.coalesce=False turns it off
  c.experts.coalesce = True
  c.examples = "toyworld"
  c.out_dir = f"workdir/cots/toy_{a['split']}"
  return c
