"""Config -> tools: each expert role bound to a backend kind and its weights, no code changes.

The config (an `ml_collections.ConfigDict` or a plain dict) has one section per role, each
with a `kind` and that kind's settings:

  coalesce:          True: concurrent calls of a CoT job's programs to a model backend (OWLv2,
                     UniVTG and its CLIP features, LLaVA) share one batch (experts/coalesce.py);
                     a role's own `coalesce` key, when set, overrides it for that role
  coalesce_wait_s:   how long a batch waits for more calls after the first (seconds)
  scheduler_workers: batches the device scheduler runs at once (0, the default: 1 on an
                     accelerator, 2 on a CPU, where two experts' small batches overlap)
  detector:          oracle | owlv2 (path, threshold, buckets, matmul_precision, cpu_kernels,
                      feature_cache_mb: image features kept on the device, default 8192) | none
  grounder:          oracle | univtg (path: official checkpoint, clip_path: HF CLIP dir,
                      features_path: saved ObjectStates, "" = CLIP image features,
                      feature_cache_mb: per-frame features kept, default 64, 0 = none) | none
  action_recognizer: oracle | llava (path, num_frames, choice_scoring: likelihood | generate,
                      max_new_tokens, prompt_format: plain | official, summary_prompt:
                      ours | official (Video_summary's), action_prompt: ours | official
                      (Query_Actions' questions), matmul_precision, cpu_kernels, dtype:
                      float32 (default) | bfloat16 | float16 (weights and computation),
                      feature_cache_mb: clips' video features kept, default 1024, 0 = none;
                      prefix_cache_mb: the language model's KV cache of prompt prefixes kept
                      on the device per clip, default 0 = none; buckets: request batch sizes,
                      default (1, 2, 4, 8, 16): the largest is the most requests a coalesced
                      batch holds)
                      | none
  video_qa:          oracle | llava (the same keys) | none
  selector:          keyword | llama (path: HF Llama dir with tokenizer) | openai (base_url,
                      model, api_key_env: an OpenAI-compatible server) | none; `chat` (default
                      True) sends the prompt as a chat message, so a llama dir's tokenizer needs a
                     chat template (checked when the tools are built); False: plain text;
                     `prompt`: ours | official (the release's select_answer prompt structure)
  ground_truth:      star (path: JSON file(s), classes_dir) | a plugin's kind (toyworld:
                     path = world dir, with `plugins=[aotd_jax.projects.toyworld.oracle.PLUGIN]`)
  cache:             dir ("" = memory only), enabled
  tools:             find ("frames": the frames that show the object | "crops": 224 x 224 crops
                     of its best box, the official AoTD's), exist ("detector" | "detector+qa":
                     the video QA model confirms "Is this <name>?" on the crops, official)
  object_vocabulary: list of class names, a plugin's kind ("toyworld"), "star:<classes_dir>",
                     "file:<path, one name per line>" or "open" (ask for what the program names)

A project's own data kind (the toy world's ground truth, names and saved object states) comes
as an `experts.plugins.Plugin` in `plugins=[...]`: the experts never import a project.

A model loaded for two roles (LLaVA as action recogniser and video QA) is loaded once.
`default_config()` is the oracle set-up on the toy world (its plugin required); swap a role
with one line, e.g.
`config.detector = dict(kind="owlv2", path="/weights/owlv2-base")`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import ml_collections

from experts import tools as tools_lib
from experts.backends import oracle
from experts.batching import DEFAULT_BUCKETS, check_buckets
from experts.cache import ToolCache
from experts.plugins import Plugin, by_kind

ROLES = ("detector", "grounder", "action_recognizer", "video_qa", "selector")


def selector_section(
  kind: str,
  *,
  path: str = "",
  base_url: str = "",
  model: str = "",
  max_new_tokens: int = 8,
  chat: bool = True,
  prompt: str = "ours",
) -> dict:
  """A selector section with every key any kind reads, so the command line can switch kinds
  (`--config.experts.selector.kind=openai --config.experts.selector.base_url=URL`)."""
  return {
    "kind": kind,
    "path": path,
    "base_url": base_url,
    "model": model,
    "api_key_env": "",
    "max_new_tokens": max_new_tokens,
    "chat": chat,
    "prompt": prompt,
  }


def default_config() -> ml_collections.ConfigDict:
  """Perfect experts on the toy world: edit the roles to bind real models."""
  return ml_collections.ConfigDict(
    {
      "detector": {
        "kind": "oracle",
        "path": "",
        "threshold": 0.1,
        "buckets": list(DEFAULT_BUCKETS),
      },
      "grounder": {
        "kind": "oracle",
        "path": "",
        "clip_path": "",
        "features_path": "",
        # "clip_processor" (CLIP's processor: resize, centre crop) | "official" (the official
        # AoTD's: the whole frame squashed to a square); experts/backends/univtg.py
        "frame_preprocess": "clip_processor",
        "buckets": list(DEFAULT_BUCKETS),
      },
      "action_recognizer": {"kind": "oracle", "path": ""},
      "video_qa": {"kind": "oracle", "path": ""},
      "selector": selector_section("keyword"),
      "ground_truth": {"kind": "toyworld", "path": "", "classes_dir": ""},
      "cache": {"dir": "", "enabled": True},
      "tools": {"find": "frames", "exist": "detector"},
      "object_vocabulary": "toyworld",
      "coalesce": False,
      "coalesce_wait_s": 0.002,
    }
  )


def scheduler_workers(setting) -> int:
  """Batches the device scheduler runs at once for the `scheduler_workers` setting: itself
  when >= 1; 0 (auto): 2 when JAX's default backend is the CPU (one small batch leaves a
  core idle), else 1 (an accelerator runs one batch at a time)."""
  workers = int(setting)
  if workers < 0:
    raise ValueError(f"experts config: scheduler_workers must be >= 0 (0: auto), got {workers}")
  if workers == 0:
    import jax

    workers = 2 if jax.default_backend() == "cpu" else 1
  return workers


def coalescing(config, role: str) -> tuple[bool, float]:
  """(on, wait window in s) of cross-program batching for `role`: the role's own `coalesce` /
  `coalesce_wait_s` keys when set, else the config's top-level ones (default off, 2 ms)."""
  section = _get(config, role)
  on = _get(section, "coalesce", None)
  on = _get(config, "coalesce", False) if on is None else on
  wait = _get(section, "coalesce_wait_s", None)
  wait = _get(config, "coalesce_wait_s", 0.002) if wait is None else wait
  if float(wait) < 0:
    raise ValueError(f"experts config: coalesce_wait_s must be >= 0 (role {role}), got {wait}")
  return bool(on), float(wait)


def _get(section: Any, key: str, default: Any = None) -> Any:
  if section is None:
    return default
  if isinstance(section, Mapping):
    return section.get(key, default)
  return section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)


class _Context:
  """What factories share within one `make_tools` call: ground truth, loaded models and the
  projects' plugins."""

  def __init__(self, config, plugins: Mapping[str, Plugin] | None = None):
    self.config = config
    self.plugins = dict(plugins or {})
    self._gt = None
    self.models: dict[tuple, Any] = {}
    self._scheduler = None

  def scheduler(self, coalesce: bool):
    """The device scheduler the coalesced backends share (made on first use); None when
    `coalesce` is off."""
    if not coalesce:
      return None
    if self._scheduler is None:
      from experts.scheduler import DeviceScheduler

      self._scheduler = DeviceScheduler(
        workers=scheduler_workers(_get(self.config, "scheduler_workers", 0))
      )
    return self._scheduler

  def ground_truth(self, role: str):
    if self._gt is None:
      sec = _get(self.config, "ground_truth")
      kind, path = _get(sec, "kind"), _get(sec, "path", "")
      if not path:
        raise ValueError(
          f"experts config: {role}.kind='oracle' needs ground_truth.path "
          "(a toy-world directory or STAR JSON files)"
        )
      if kind == "star":
        self._gt = oracle.GroundTruth.from_star(path, _get(sec, "classes_dir") or None)
      elif kind in self.plugins:
        self._gt = self.plugins[kind].ground_truth(path)
      else:
        raise ValueError(
          f"experts config: ground_truth.kind={kind!r} is not one of "
          f"{['star'] + sorted(self.plugins)} (a project's kind comes with its "
          "plugin: make_tools(config, plugins=[...]))"
        )
    return self._gt

  def frame_features(self, path: str):
    """Saved frame features (`grounder.features_path`), read by the one plugin that reads them."""
    readers = [p for p in self.plugins.values() if p.frame_features is not None]
    if len(readers) != 1:
      raise ValueError(
        f"experts config: grounder.features_path={path!r} needs exactly one plugin "
        f"that reads frame features (have {[p.kind for p in readers]}; e.g. the "
        "toy world's object states)"
      )
    return readers[0].frame_features(path)

  def model(self, key: tuple, load: Callable[[], Any]):
    """Loads a model once per (kind, path), however many roles it serves."""
    if key not in self.models:
      self.models[key] = load()
    return self.models[key]


def _oracle(role):
  def make(section, ctx: _Context):
    gt = ctx.ground_truth(role)
    if role == "detector":
      return oracle.OracleDetector(gt)
    if role == "grounder":
      return oracle.OracleGrounder(gt)
    return oracle.OracleActions(gt)

  return make


def _keyword(section, ctx):
  return oracle.KeywordSelector()


def _path(role: str, kind: str, section) -> str:
  path = _get(section, "path", "")
  if not path:
    raise ValueError(f"experts config: {role}.path is required for kind {kind!r}")
  return path


def _owlv2(section, ctx):
  from experts.backends import owlv2

  nms = _get(section, "nms_threshold", 0.3)
  coalesce, wait = coalescing(ctx.config, "detector")
  return owlv2.Owlv2Detector.from_pretrained(
    _path("detector", "owlv2", section),
    buckets=_buckets("detector", section, DEFAULT_BUCKETS),
    matmul_precision=_get(section, "matmul_precision", "default"),
    cpu_kernels=bool(_get(section, "cpu_kernels", True)),
    query_template=_get(section, "query_template", "{}") or "{}",
    coalesce=coalesce,
    coalesce_wait_s=wait,
    scheduler=ctx.scheduler(coalesce),
    nms_threshold=None if nms is None or float(nms) <= 0 else float(nms),
    feature_cache_mb=float(_get(section, "feature_cache_mb", 8192.0)),
  )


def _univtg(section, ctx):
  from experts.backends import univtg

  clip_path = _get(section, "clip_path", "")
  if not clip_path:
    raise ValueError(
      "experts config: grounder.clip_path (a HF CLIP directory) is required for kind 'univtg'"
    )
  features_path = _get(section, "features_path", "")
  coalesce, wait = coalescing(ctx.config, "grounder")
  return univtg.UniVTGGrounder.from_pretrained(
    _path("grounder", "univtg", section),
    clip_path=clip_path,
    buckets=_buckets("grounder", section, DEFAULT_BUCKETS),
    frame_features=ctx.frame_features(features_path) if features_path else None,
    frame_preprocess=_get(section, "frame_preprocess", "clip_processor") or "clip_processor",
    coalesce=coalesce,
    coalesce_wait_s=wait,
    scheduler=ctx.scheduler(coalesce),
    feature_cache_mb=float(_get(section, "feature_cache_mb", 64.0)),
  )


def _buckets(role: str, section, default: Sequence[int]) -> tuple[int, ...]:
  """The role's `buckets` (request batch sizes to compile: positive integers, sorted and
  deduplicated), `default` when the key is absent; a bad value raises naming `<role>.buckets`."""
  value = _get(section, "buckets", None)
  if value is None:
    return tuple(default)
  try:
    if isinstance(value, (str, bytes)) or any(isinstance(b, bool) for b in value):
      raise ValueError("not a sequence of integers")
    return check_buckets(value)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"experts config: {role}.buckets={value!r} is not a list of positive integers "
      f"(e.g. (1, 2, 4)): {e}"
    ) from None


def _llava(role):
  def make(section, ctx):
    from aotd_jax.hf import processor_files
    from aotd_jax.layers.compute import DTYPES
    from experts.backends import llava

    path = _path(role, "llava", section)
    buckets = _buckets(role, section, llava.REQUEST_BUCKETS)  # checked before a 7B loads
    precision = _get(section, "matmul_precision", "default")
    kernels = bool(_get(section, "cpu_kernels", True))
    dtype = _get(section, "dtype", "float32")
    if dtype not in DTYPES:  # checked before a 7B loads
      raise ValueError(f"experts config: {role}.dtype={dtype!r} is not one of {DTYPES}")
    model = ctx.model(
      ("llava", path, precision, kernels, dtype),
      lambda: llava.load(path, matmul_precision=precision, cpu_kernels=kernels, dtype=dtype),
    )
    coalesce, wait = coalescing(ctx.config, role)
    settings = dict(
      num_frames=int(_get(section, "num_frames", 8)),
      choice_scoring=_get(section, "choice_scoring", "likelihood"),
      max_new_tokens=int(_get(section, "max_new_tokens", 32)),
      prompt_format=_get(section, "prompt_format", "plain"),
      summary_prompt=_get(section, "summary_prompt", "ours"),
      action_prompt=_get(section, "action_prompt", "ours"),
      feature_cache_mb=float(_get(section, "feature_cache_mb", 1024.0)),
      prefix_cache_mb=float(_get(section, "prefix_cache_mb", 0.0)),
      buckets=buckets,
      coalesce=coalesce,
      coalesce_wait_s=wait,
    )
    # one backend for both roles when their settings agree: their calls then share batches
    return ctx.model(
      ("llava-backend", path, precision, kernels, dtype, tuple(sorted(settings.items()))),
      lambda: llava.LlavaVideoQA(
        *model,
        name=f"llava:{path}",
        normalization=processor_files.pixel_normalization(model[0].config, path),
        scheduler=ctx.scheduler(coalesce),
        **settings,
      ),
    )

  return make


def _llama(section, ctx):
  from aotd_jax.agent.llm import LocalLlama
  from experts.backends.llm import LLMSelector

  path = _path("selector", "llama", section)
  chat = bool(_get(section, "chat", True))

  def load():
    from aotd_jax.hf.api import load_tokenizer

    try:
      tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as e:
      raise ValueError(
        f"experts config: selector.path={path!r}: cannot load its tokenizer "
        f"({type(e).__name__}: {str(e)[:200]})"
      ) from None
    if chat and not getattr(tokenizer, "chat_template", None):
      raise ValueError(
        f"experts config: selector.kind='llama' at {path!r}: its tokenizer has no chat "
        "template, and select_answer sends the selector a chat message. Use an instruct "
        "checkpoint whose tokenizer_config.json has a \"chat_template\", serve the model "
        "with an OpenAI-compatible server (selector=URL), or set "
        "--config.experts.selector.chat=False to send plain text"
      )
    return LocalLlama(path, tokenizer=tokenizer)

  llm = ctx.model(("llama", path), load)
  return LLMSelector(
    llm,
    name=f"llama:{path}",
    max_new_tokens=int(_get(section, "max_new_tokens", 8)),
    chat=chat,
    prompt=_get(section, "prompt", "ours"),
  )


def _openai_selector(section, ctx):
  from aotd_jax.agent.llm import OpenAIChat
  from experts.backends.llm import LLMSelector

  url = _get(section, "base_url", "")
  if not url:
    raise ValueError(
      "experts config: selector.base_url (an OpenAI-compatible server) is "
      "required for kind 'openai'"
    )
  model = _get(section, "model", "") or "default"
  llm = ctx.model(
    ("openai", url, model),
    lambda: OpenAIChat(url, model, api_key_env=_get(section, "api_key_env", None) or None),
  )
  return LLMSelector(
    llm,
    name=f"openai:{model}@{url}",
    max_new_tokens=int(_get(section, "max_new_tokens", 8)),
    chat=bool(_get(section, "chat", True)),
    prompt=_get(section, "prompt", "ours"),
  )


# role -> kind -> factory(section, context) -> backend
FACTORIES: dict[str, dict[str, Callable]] = {
  "detector": {"oracle": _oracle("detector"), "owlv2": _owlv2},
  "grounder": {"oracle": _oracle("grounder"), "univtg": _univtg},
  "action_recognizer": {
    "oracle": _oracle("action_recognizer"),
    "llava": _llava("action_recognizer"),
  },
  "video_qa": {"oracle": _oracle("video_qa"), "llava": _llava("video_qa")},
  "selector": {"keyword": _keyword, "llama": _llama, "openai": _openai_selector},
}


def describe(config, *, full_hash: bool = False, plugins: Sequence[Plugin] = ()) -> dict[str, dict]:
  """What each role is bound to, for a run's manifest: kind, checkpoint paths or server, and a
  fingerprint of local weights (`aotd_jax.agent.manifest.weights_fingerprint`)."""
  from aotd_jax.agent.manifest import weights_fingerprint

  out = {}
  for role in ROLES:
    section = _get(config, role)
    kind = _get(section, "kind", "none") or "none"
    entry: dict[str, Any] = {"kind": kind}
    if kind == "oracle":
      gt = _get(config, "ground_truth")
      entry["ground_truth"] = {"kind": _get(gt, "kind"), "path": _get(gt, "path", "")}
    elif kind in ("owlv2", "univtg", "llava", "llama"):
      entry["path"] = _get(section, "path", "")
      entry["weights"] = weights_fingerprint(entry["path"], full=full_hash)
      if kind == "univtg":
        entry["clip_path"] = _get(section, "clip_path", "")
        entry["clip_weights"] = weights_fingerprint(entry["clip_path"], full=full_hash)
        entry["frame_preprocess"] = (
          _get(section, "frame_preprocess", "clip_processor") or "clip_processor"
        )
      if kind == "llava":
        entry.update(
          num_frames=int(_get(section, "num_frames", 8)),
          choice_scoring=_get(section, "choice_scoring", "likelihood"),
          prompt_format=_get(section, "prompt_format", "plain"),
          summary_prompt=_get(section, "summary_prompt", "ours"),
          action_prompt=_get(section, "action_prompt", "ours"),
        )
      if kind == "owlv2":
        entry["threshold"] = float(_get(section, "threshold", 0.1))
        entry["query_template"] = _get(section, "query_template", "{}") or "{}"
        entry["nms_threshold"] = _get(section, "nms_threshold", 0.3)
    elif kind == "openai":
      entry.update(base_url=_get(section, "base_url", ""), model=_get(section, "model", ""))
    if role == "selector" and kind in ("llama", "openai"):
      entry["prompt"] = _get(section, "prompt", "ours")
    out[role] = entry
  vocab = _get(config, "object_vocabulary", ())
  out["tools"] = {
    "find": _get(_get(config, "tools"), "find", "frames") or "frames",
    "exist": _get(_get(config, "tools"), "exist", "detector") or "detector",
  }
  out["object_vocabulary"] = {
    "kind": vocab if isinstance(vocab, str) else "list",
    "size": len(_vocabulary(config, by_kind(plugins))),
  }
  return out


def missing_checkpoints(config) -> list[str]:
  """The model roles' checkpoint paths that do not exist (local or remote), each as
  "<role>.<key>=<path> (<kind>)"; [] when all do. A run checks this before it writes anything,
  so a mistyped path stops it before its manifest names that path."""
  from aotd_jax.data import files

  out = []
  for role in ROLES:
    section = _get(config, role)
    kind = _get(section, "kind", "none") or "none"
    if kind not in ("owlv2", "univtg", "llava", "llama"):
      continue
    keys = ("path", "clip_path") if kind == "univtg" else ("path",)
    for key in keys:
      path = _get(section, key, "")
      if path and not files.exists(path):
        out.append(f"{role}.{key}={path} ({kind})")
  return out


def batching(config) -> dict[str, dict]:
  """How each model role's calls are batched across programs, for the manifest's `info` (it
  does not change a record: recorded per run, not part of the manifest's id)."""
  out = {}
  for role in ROLES:
    if (_get(_get(config, role), "kind", "none") or "none") in ("owlv2", "univtg", "llava"):
      on, wait = coalescing(config, role)
      out[role] = {"coalesce": on, **({"coalesce_wait_s": wait} if on else {})}
  return out


def _vocabulary(config, plugins: Mapping[str, Plugin] | None = None) -> list[str]:
  plugins = plugins or {}
  vocab = _get(config, "object_vocabulary", ())
  if isinstance(vocab, str):
    if vocab in plugins:
      return list(plugins[vocab].object_names)
    if vocab.startswith("star:"):
      names = oracle.read_class_names(vocab[len("star:") :])
      return [n for k, n in names.items() if k.startswith("o")]
    if vocab.startswith("file:"):
      path = vocab[len("file:") :]
      try:
        with open(path, encoding="utf-8") as f:
          return [line.strip() for line in f if line.strip() and not line.startswith("#")]
      except OSError as e:
        raise ValueError(f"experts config: object_vocabulary {vocab!r}: {e}") from None
    if vocab in ("", "open"):
      return []  # open vocabulary: the detector is asked for the phrase the program names
    raise ValueError(
      f"experts config: object_vocabulary={vocab!r} is not a list, a plugin's "
      f"kind {sorted(plugins)}, 'star:<classes_dir>', 'file:<one name per line>' "
      "or 'open'"
    )
  return [str(v) for v in vocab]


def make_toolbox(
  config=None,
  *,
  factories: Mapping[str, Mapping[str, Callable]] | None = None,
  plugins: Sequence[Plugin] = (),
) -> tools_lib.Toolbox:
  """Builds the `Toolbox` a config describes (see the module docstring for the keys).

  `factories` adds or overrides backend kinds: {role: {kind: factory(section, context)}}.
  `plugins`: projects' data kinds (`experts.plugins.Plugin`), e.g. the toy world's.
  """
  config = default_config() if config is None else config
  table = {role: dict(FACTORIES[role]) for role in ROLES}
  for role, kinds in (factories or {}).items():
    if role not in table:
      raise ValueError(f"factories: unknown role {role!r}; roles are {list(ROLES)}")
    table[role].update(kinds)
  kinds = by_kind(plugins)
  ctx = _Context(config, kinds)
  backends = {}
  for role in ROLES:
    section = _get(config, role)
    kind = _get(section, "kind", "none") or "none"
    if kind == "none":
      backends[role] = None
      continue
    if kind not in table[role]:
      raise ValueError(
        f"experts config: {role}.kind={kind!r} is not one of {sorted(table[role]) + ['none']}"
      )
    backends[role] = table[role][kind](section, ctx)
  cache_sec = _get(config, "cache")
  cache = ToolCache(
    _get(cache_sec, "dir", "") or None, enabled=bool(_get(cache_sec, "enabled", True))
  )
  tools_sec = _get(config, "tools")
  return tools_lib.Toolbox(
    **backends,
    scheduler=ctx._scheduler,
    cache=cache,
    detect_threshold=float(_get(_get(config, "detector"), "threshold", 0.1)),
    object_vocabulary=_vocabulary(config, kinds),
    find=_get(tools_sec, "find", "frames") or "frames",
    exist=_get(tools_sec, "exist", "detector") or "detector",
  )


def make_tools(config=None, **kwargs) -> dict[str, Callable]:
  """`{tool name: callable}` bound to the experts `config` names (default: toy-world oracle,
  which needs the toy world's plugin: `plugins=[aotd_jax.projects.toyworld.oracle.PLUGIN]`)."""
  return make_toolbox(config, **kwargs).tools()
