"""The pieces config files share; a config file imports this module and no other config.

- `parse_arg` reads the string after a config file's `:` (`--config=configs/x.py:ARG`) for
  every `get_config(arg)`: a comma list of `key=value` items, optionally led by one bare value
  (a preset such as `h100x8`), and bare switches such as `runlocal` (big_vision's: a run
  shrunk to check the plumbing on one machine). A malformed or unknown item fails the same way
  everywhere, naming the config file, the item and the keys it accepts.
- `llm`, `cot_base_config` and the `bind_*` helpers: the CoT job's sections (the toy world's,
  STAR's and NExT-QA's configs).
- `distill_config`: the paper's distillation recipe for a 7B student (lnv7b, onevision7b,
  qwen2vl7b).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import ml_collections

import experts

RUNLOCAL = "runlocal"


def parse_arg(
  arg: str | None,
  keys: Iterable[str],
  *,
  where: str,
  positional: str | None = None,
  defaults: Mapping[str, str] | None = None,
  switches: Iterable[str] = (),
) -> dict:
  """`"h100x8,hf_dir=D,datasets=star+nextqa"` -> {"target": "h100x8", "hf_dir": "D", ...}.

  Args:
    arg: the config arg (None or "": no items).
    keys: the accepted keys.
    where: the config file, for messages (`configs/distill/lnv7b.py`).
    positional: the key that a leading item without `=` sets (None: every item needs `key=`).
    defaults: values for keys not given (keys neither given nor defaulted are absent).
    switches: bare words an item may be (e.g. `runlocal`); each is a key of the result, True
      when given, else False.
  Returns:
    key -> value (a string; a switch: a bool).
  Raises:
    ValueError naming `where` and the item: an unknown key, an item without `=` (other than a
    leading positional one or a switch), or a key given twice.
  """
  keys, switches = list(keys), list(switches)
  known = [k for k in keys if k != positional]
  out, given = dict(defaults or {}), set()
  out.update({s: False for s in switches})
  items = [i.strip() for i in (arg or "").split(",") if i.strip()]
  for n, item in enumerate(items):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep and item in switches:
      key, value = item, True
    elif not sep and n == 0 and positional is not None:
      key, value = positional, item
    elif not known and not switches and positional is not None:
      raise ValueError(
        f"{where}: option {item!r}: the arg is one value ({positional}), "
        f"with no key=value options (config arg {arg!r})"
      )
    elif not sep or key not in keys:
      unknown = f"; unknown key {key!r}" if sep else ""
      tail = f" (config arg {arg!r}; defaults {dict(defaults)})" if defaults else ""
      raise ValueError(
        f"{where}: option {item!r}: expected key=value with key in {known}"
        + (f" or one of {switches}" if switches else "")
        + unknown
        + tail
      )
    if key in given:
      raise ValueError(f"{where}: option {key!r} given twice in {arg!r}")
    given.add(key)
    out[key] = value.strip() if isinstance(value, str) else value
  return out


# ---------------------------------------------------------------------------------- CoT job

# Every backend setting an LLM section can take (`aotd_jax.agent.llm`'s LocalLlama, OpenAIChat,
# Replay), declared unset so the command line can set any of them on any section, e.g.
# `--config.program_llm.kind=local --config.program_llm.kwargs.model_dir=DIR`. The launcher
# passes a backend only the set ones it takes.
LLM_KWARGS = {
  "model_dir": str,
  "dtype": str,
  "max_batch": int,
  "batching": str,
  "max_len": int,
  "base_url": str,
  "model": str,
  "api_key_env": str,
  "timeout_s": float,
  "concurrency": int,
  "path": str,
}


def llm(kind: str = "none", factory: str = "", **kwargs) -> ml_collections.ConfigDict:
  """An LLM section: kind none | replay | local | openai | factory; kwargs go to the backend."""
  fields = {k: ml_collections.config_dict.placeholder(t) for k, t in LLM_KWARGS.items()}
  for key, value in kwargs.items():
    fields[key] = value
  return ml_collections.ConfigDict({"kind": kind, "factory": factory, "kwargs": fields})


def cot_base_config() -> ml_collections.ConfigDict:
  """Every field of the CoT job (`launch.generate_cots`), with offline defaults (the toy world's)."""
  c = ml_collections.ConfigDict()
  c.out_dir = "workdir/cots"
  c.data = ml_collections.ConfigDict(
    {
      "format": "star",  # aotd_jax.data.annotations.read format
      "path": "",  # the annotation file
      "video_dir": "",  # videos are <video_dir>/<meta video_path or video_id+ext>
      "video_ext": ".mp4",
      # format options for annotations.read (unset ones are not passed)
      "read_kwargs": {"map_path": ml_collections.config_dict.placeholder(str)},
      "toyworld_seed": None,  # set: generate the toy world at dirname(path) if missing
      "toyworld_clips": 10,
    }
  )
  c.max_questions = 0  # 0: all
  c.max_frames = 32  # frames decoded per question (uniform over its window)
  # "source": traces number frames as the source video; "sampled": the student's own frames,
  # 0..max_frames-1 (set max_frames to the student's data.num_frames), the official numbering
  c.frame_numbers = "source"
  # which frames of the window: "ours" (both ends) or "official" (the release's
  # linspace(0, vlen, max_frames, endpoint=False)); as the student's data.frame_sampling
  c.frame_sampling = "ours"
  # few-shot programs: <examples_package's folder, else data/prompts>/examples/<examples>.txt
  c.examples = "toyworld"
  c.examples_package = "aotd_jax.projects.toyworld"
  c.program_source = "gold"  # gold (annotation's program) | llm
  c.gold_program_key = "question_program"
  c.program_llm = llm()
  c.cot_llm = llm()  # none: the deterministic verbaliser writes rationales
  c.judge_llm = llm()  # open-ended answer check; logic check if logic_judge=llm
  c.logic_judge = "rule"  # rule (offline) | llm
  c.judge_parse = "lenient"  # lenient (Yes/No anywhere) | exact_true (official)
  c.rewrite_prompt = "ours"  # ours | official (the program in the prompt)
  c.rewrite_fallback = "verbaliser"  # verbaliser (ours) | none (official: reply kept as is)
  c.tools_factory = "experts:make_tools"
  c.experts = ml_collections.ConfigDict()
  c.make_args = ""  # "" decodes a VideoClip per question; or a dotted factory
  c.batch_size = 8
  c.fail_fast_min = 4  # stop when a batch of >= this many programs all hit one broken backend
  c.timeout_s = 30.0
  c.max_new_tokens = 512
  c.temperature = 0.0
  c.progress_every_s = 10.0
  c.report_samples = 20  # questions in report-*.html (0: no report)
  c.use_jax_processes = True  # also split by jax.process_index() (multi-host)
  c.distributed = False  # jax.distributed.initialize() first (set by launch.tpu.pod)
  c.sandbox = ml_collections.ConfigDict({"num_workers": 2, "memory_mb": 512})
  # Stages overlap across batches (programs of batch k+1 written while batch k runs, its
  # rationales judged after); the same records as enabled=False (one batch at a time).
  # max_batches_in_flight bounds the decoded clips in memory (STAR: 32 frames of 480p per
  # question, batch 32: about 1 GB a batch); decode_workers threads decode the clips ahead of
  # execution (0: in the execution threads); llm_workers: batches each LLM stage works on at
  # once (2 keeps an HTTP server busy past a batch's slowest reply; keep 1 for a local model
  # that samples, temperature > 0, whose keys follow its call order).
  c.pipeline = ml_collections.ConfigDict(
    {"enabled": True, "max_batches_in_flight": 4, "decode_workers": 2, "llm_workers": 1}
  )
  return c


def frame_sampling(a: Mapping[str, str], where: str) -> str:
  """The `frame_sampling=` of a CoT config string, checked (`video_processing.FRAME_SAMPLINGS`)."""
  from aotd_jax.data import video_processing

  value = a["frame_sampling"]
  if value not in video_processing.FRAME_SAMPLINGS:
    raise ValueError(
      f"{where}: frame_sampling={value!r}: expected one of {video_processing.FRAME_SAMPLINGS}"
    )
  return value


def shrink_cot(c: ml_collections.ConfigDict) -> None:
  """`runlocal`: a few questions in small batches, to check a real-data CoT config's plumbing
  (paths, experts, LLM endpoints) on one machine before the sharded run."""
  c.max_questions = 4
  c.batch_size = 2
  c.sandbox.num_workers = 2
  c.report_samples = 4


# ------------------------------------------------------------------- real-data CoT configs

EXPERT_KEYS = ("owlv2", "univtg", "clip", "llava")
EXPERT_HELP = (
  "owlv2=<HF OWLv2 dir>,univtg=<official UniVTG .ckpt>,clip=<HF CLIP ViT-B/32 dir>,"
  "llava=<HF LLaVA-NeXT-Video dir>"
)


# the CoT configs' LLaVA request buckets: what fits an 80 GB H100 (see `bind_experts`)
LLAVA_BUCKETS = (1, 2)


def llm_section(value: str, model: str) -> ml_collections.ConfigDict:
  """`http(s)://...` -> an OpenAI-compatible server serving `model`; a path -> a local Flax
  Llama directory; "" -> none."""
  if not value:
    return llm()
  if value.startswith(("http://", "https://")):
    return llm("openai", base_url=value, model=model)
  return llm("local", model_dir=value)


def selector_section(value: str, model: str) -> dict:
  """The answer selector (the paper: an LLM choosing a letter, with the release's prompt
  structure) on a server or a local dir; `keyword` for the offline word-overlap heuristic (a
  documented deviation)."""
  if value == "keyword":
    return experts.selector_section("keyword")
  if value.startswith(("http://", "https://")):
    return experts.selector_section("openai", base_url=value, model=model, prompt="official")
  return experts.selector_section("llama", path=value, prompt="official")


def bind_experts(name: str, a: dict, *, vocabulary: str) -> ml_collections.ConfigDict:
  """The experts section: real models from `a`'s paths (`experts=real`, the default)."""
  missing = [k for k in EXPERT_KEYS if not a.get(k)]
  if missing:
    raise ValueError(
      f"configs/cot/{name}.py: experts=real needs the checkpoints "
      f"{EXPERT_HELP}; missing: {', '.join(k + '=' for k in missing)}"
    )
  selector = a.get("selector") or a.get("llm")
  if not selector:
    raise ValueError(
      f"configs/cot/{name}.py: select_answer needs an LLM: give llm= (or "
      "selector=<url or dir>, or selector=keyword for the offline heuristic)"
    )
  c = experts.default_config()
  # The official AoTD's detector settings (docs/fidelity.md): "a photo of a <name>" queries,
  # score threshold 0.2, no NMS; Find returns crops, exist asks the video QA model to confirm.
  c.detector = {
    "kind": "owlv2",
    "path": a["owlv2"],
    "threshold": 0.2,
    "query_template": "a photo of a {}",
    "nms_threshold": 0.0,
    "buckets": tuple(c.detector.buckets),  # a tuple: the command line can override it
  }
  # concurrent programs' calls to every model expert share batches (docs/experts.md);
  # --config.experts.coalesce=False runs each call on its own
  c.coalesce = True
  c.tools = {"find": "crops", "exist": "detector+qa"}
  c.grounder = {
    "kind": "univtg",
    "path": a["univtg"],
    "clip_path": a["clip"],
    "features_path": "",
    # the official AoTD's UniVTG features: each frame squashed to 224 x 224 (bilinear), not
    # CLIP's processor's resize and centre crop (docs/fidelity.md)
    "frame_preprocess": "official",
    "buckets": tuple(c.grounder.buckets),
  }
  # LLaVA-NeXT-Video-DPO as the official AoTD asks it: 32 frames, a greedy reply (the letter
  # parsed and snapped to an option), "Question:/Options:" prompts, its Video_summary request.
  llava = {
    "kind": "llava",
    "path": a["llava"],
    "num_frames": 32,
    "choice_scoring": "generate",
    "max_new_tokens": 100,
    "prompt_format": "official",
    "summary_prompt": "official",
    "action_prompt": "official",
    # weights and computation in bf16: the official AoTD runs LLaVA-NeXT-Video in half
    # precision (float16), and a float32 7B (28 GB) leaves no room for a request on an 80 GB
    # H100 under JAX's default 75 % (docs/experts.md); "float32" or "float16" on the command line
    "dtype": "bfloat16",
    # the video features of a clip's 32 frames, kept between its Query_Actions, Video_summary
    # and QA calls and the video's other questions: 4,608 x 4,096 values a clip (75.5 MB in
    # float32, 37.7 MB in bf16), so ~108 clips in bf16 (docs/experts.md)
    "feature_cache_mb": 4096,
    # the language model's keys/values of each clip's prompt prefix (template + 4,608 video
    # tokens) kept on the device, so a call prefills only its question: ~2.4 GB a clip at 7B in
    # bf16 (~4.8 GB in float32), so 16 GiB keeps 7 clips (3 in float32),
    # beside the 7B's weights, OWLv2's 8 GB feature cache and generation batches
    # (docs/experts.md)
    "prefix_cache_mb": 16384,
    # request batches of at most 2: a coalesced batch of n clips' prefix prefills holds n
    # prefixes' keys/values and their attention scores (~8.3 GB a request in bf16, ~10.6 GB in
    # float32), so 2 is what fits an 80 GB H100 beside the resident experts and caches (in
    # float32 only with XLA_PYTHON_CLIENT_MEM_FRACTION=0.95; 16 would need ~132 GB more in
    # bf16: past even a 141 GB H200; benchmarks/llava_batch_memory.py, docs/experts.md). A
    # tuple, so that a larger device raises it from the command line, in both roles alike
    # (then they share one backend):
    # --config.experts.video_qa.buckets=1,2,4,8 --config.experts.action_recognizer.buckets=1,2,4,8
    "buckets": LLAVA_BUCKETS,
  }
  c.action_recognizer = dict(llava)
  c.video_qa = dict(llava)
  c.selector = selector_section(selector, a.get("selector_model") or a.get("model", ""))
  c.ground_truth = {"kind": "none", "path": "", "classes_dir": ""}
  c.object_vocabulary = vocabulary
  return c


def bind_llms(c: ml_collections.ConfigDict, a: dict) -> None:
  """Program, CoT and judge LLMs: `llm=` (and `model=`) for all three, `judge=` (and
  `judge_model=`) for a separate judge, as the paper's Llama-3.1 judge."""
  c.program_llm = llm_section(a["llm"], a["model"])
  c.cot_llm = llm_section(a.get("rewrite") or a["llm"], a.get("rewrite_model") or a["model"])
  c.judge_llm = llm_section(a.get("judge") or a["llm"], a.get("judge_model") or a["model"])
  c.program_source = "llm"
  c.logic_judge = "llm"
  # the official release's rewrite and judge (docs/fidelity.md)
  c.judge_parse = "exact_true"
  c.rewrite_prompt = "official"
  c.rewrite_fallback = "none"


# -------------------------------------------------------------------- 7B distillation recipe

# name -> (format, annotations, video root, kept CoT shards), under the `data=` root. CoTs come
# from the CoT configs (configs/cot/: STAR and NExT-QA); the other sets train as QA only ("")
# unless their `cots` is given.
DATASETS = {
  "star": ("star", "star/STAR_train.json", "star/Charades_v1_480", "cots/star/cot-*.array_record"),
  "nextqa": ("nextqa", "nextqa/train.csv", "nextqa/NExTVideo", "cots/nextqa/cot-*.array_record"),
  "agqa": ("agqa", "agqa/train_balanced.txt", "charades/videos", ""),
  "activitynet_qa": ("activitynet_qa", "anetqa/train_q.json", "anetqa/videos", ""),
  # the folder that CLEVRER's video_train.zip extracts to (video_00000-01000/, ...)
  "clevrer": ("clevrer", "clevrer/train.json", "clevrer/video_train", ""),
}
MESHES = {
  "tpu_v5p_128": dict(data=1, fsdp=-1, tensor=1),
  "h100x8": dict(data=1, fsdp=-1, tensor=1),
}
GLOBAL_BATCH = {"tpu_v5p_128": 128, "h100x8": 64}
PEAK_FLOPS = {"tpu_v5p_128": 459e12, "h100x8": 989e12}  # bf16 dense, per chip
# JAX devices each preset's mesh, batch and memory plan are sized for (a v5p chip is one device)
DEVICES = {"tpu_v5p_128": 64, "h100x8": 8}
DISTILL_OPTIONS = ("hf_dir", "datasets", "data")


def parse_distill_arg(arg: str | None, where: str) -> tuple[str, dict]:
  """`"h100x8,hf_dir=D,datasets=star+nextqa,runlocal"` -> ("h100x8", {"hf_dir": "D", ...})."""
  options = parse_arg(
    arg, ("target",) + DISTILL_OPTIONS, where=where, positional="target", switches=(RUNLOCAL,)
  )
  target = options.pop("target", "h100x8")
  if target not in MESHES:
    raise ValueError(f"{where}: arg {target!r} not in {sorted(MESHES)}")
  return target, options


def student_compute() -> ml_collections.ConfigDict:
  """A 7B student's `ComputeOptions` (aotd_jax/layers/compute.py) on every target."""
  return ml_collections.ConfigDict(
    dict(
      dtype="bfloat16",
      param_dtype="float32",
      remat="full",
      # The pipeline pads on the right, so causal-only attention is exact: cuDNN flash
      # attention on GPUs (benchmarks/RESULTS.md).
      attention_impl="causal",
      freeze_vision_tower=True,
    )
  )


def distill_config(
  arg: str | None,
  *,
  where: str,
  name: str,
  architecture: str,
  hf_dir: str,
  num_frames: int,
  seq_len: int = 8192,
) -> ml_collections.ConfigDict:
  """The paper's distillation run (lr 4e-5, warmup 3 %, one epoch, λ = 1, frozen vision tower
  and `image_newline`; the official release's data mix, loss, prompt and target) for a 7B
  `architecture` student.

  `arg` is `<target>[,hf_dir=DIR][,datasets=a+b][,data=ROOT][,runlocal]`: `hf_dir` overrides
  the default checkpoint `hf_dir` (student and tokenizer); `runlocal` shrinks the run (batch 2,
  4 steps, no data workers) to check the plumbing on one machine.
  """
  target, options = parse_distill_arg(arg, where)
  names = options.get("datasets", "+".join(DATASETS)).split("+")
  unknown = [n for n in names if n not in DATASETS]
  if unknown:
    raise ValueError(
      f"{where}: datasets={options['datasets']!r}: unknown {unknown}; known {list(DATASETS)}"
    )
  root = options.get("data", "/data").rstrip("/")
  hf_dir = options.get("hf_dir", hf_dir)
  c = ml_collections.ConfigDict()
  c.name = f"{name}_aotd_{target}"
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
  # launch.train stops on another device count (`runlocal`: 0, no check); a deliberate change:
  # --config.expected_devices=N (or 0)
  c.expected_devices = DEVICES[target]
  c.allow_changes = False  # resume even if batch size, λ, total steps or data changed

  c.student = ml_collections.ConfigDict(
    dict(
      hf_dir=hf_dir,
      architecture=architecture,
      init={},
      compute=student_compute(),
      # The official run freezes every parameter named `vision_tower` or `image_newline`
      # (docs/fidelity.md, "frozen parts"); the same rule for every student: OneVision's
      # newline (one per clip) stays as released, Qwen2-VL has none.
      freeze_image_newline=True,
    )
  )

  c.optim = ml_collections.ConfigDict(
    dict(learning_rate=4e-5, warmup_ratio=0.03, weight_decay=0.0, grad_clip=1.0, final_lr_ratio=0.0)
  )

  c.data = ml_collections.ConfigDict()
  c.data.kind = "pipeline"
  c.data.tokenizer = hf_dir
  c.data.num_frames = num_frames
  # lnv7b: 32 frames x 144 = 4,608 video tokens; the official run's max length is 8,192
  c.data.seq_len = seq_len
  c.data.train_on_prompt = False
  # The official release's recipe (docs/fidelity.md): every example once an epoch, one token
  # mean over the sequence, "Question:/Options:" prompts and the letter as the QA target.
  c.data.mixing = "concat_epoch"
  c.data.prompt_format = "official"
  c.data.answer_style = "letter"
  # The official release's frames (docs/fidelity.md, "which frames"): the whole video, not
  # STAR's question window ("question", ours), at linspace(0, vlen, num_frames,
  # endpoint=False) ("ours": both ends taken). The CoTs must have been made the same way
  # (configs/cot/*.py's window= and frame_sampling=; tests/test_frame_sampling.py checks).
  c.data.window = "whole"
  c.data.frame_sampling = "official"
  # launch.train compares these (and num_frames) with each CoT set's manifest.json and stops
  # on a mismatch; True trains anyway (recorded in workdir/cot_frames.json)
  c.data.allow_cot_frame_mismatch = False
  c.loss = ml_collections.ConfigDict(dict(normalization="sequence"))
  c.neftune_alpha = 0.1  # NEFTune noise on the token embeddings, as the official Trainer
  c.data.datasets = ml_collections.ConfigDict(
    {
      n: dict(
        format=DATASETS[n][0],
        annotations=f"{root}/{DATASETS[n][1]}",
        video_root=f"{root}/{DATASETS[n][2]}",
        cots=f"{root}/{DATASETS[n][3]}" if DATASETS[n][3] else "",
        weight=1.0,
        # at most this many of its QA questions, a seeded sample the same on every host (0: all;
        # docs/training.md, "AGQA in the mix")
        max_examples=0,
      )
      for n in names
    }
  )
  c.data.allow_unfiltered_cots = False
  c.data.num_workers = 16
  # before step 1: one sample of each source must fit seq_len (docs/training.md, "Fail fast")
  c.data.fit_check = True
  # while it runs: stop when a source skips more than this share of its first samples
  c.data.max_skip_fraction = 0.5
  c.data.skip_check_after = 50
  # each annotation file parsed once per host into a memory-mapped file that the data workers
  # read lazily ("": workdir/data_cache; "off": in memory; docs/training.md, "AGQA in the mix")
  c.data.cache_dir = ""
  if options[RUNLOCAL]:
    c.batch_size, c.total_steps, c.checkpoint_every, c.log_every = 2, 4, 2, 1
    c.keep_checkpoints, c.async_checkpoints, c.distributed = 1, False, False
    c.expected_devices = 0
    c.data.num_workers = 0
  return c
