"""`VideoQA` and `ActionRecognizer` on our Flax LLaVA-NeXT-Video.

A clip becomes `num_frames` uniformly sampled frames (repeating frames of short clips, as
transformers' sampling does), so every call has the same video shape: generation compiles
once per prompt-length bucket, whatever the clip length. The prompt is the student's own
(`aotd_jax.data.conversation.build_prompt`, the tokenizer's chat template when it has one),
with the `<video>` placeholder expanded to the model's number of video tokens.

Multiple choice is closed-set by default (`choice_scoring="likelihood"`), as video-LLM
benchmarks score it: each candidate is scored by the model's log-likelihood of replying with
it (`answer_format`: the choice's text, "(B)", or "(B) text", then `</s>`), and the best one
is returned, so the reply is always a valid choice. `choice_scoring="generate"` decodes
freely and snaps the reply to a choice instead.

A call runs in two parts, each a `experts.batching.BucketedJit` whose rows are requests:
the video features of the clip's sampled frames (vision tower, pooling, projector:
`get_video_features`, one request per clip), then the language model on the prompt with those
features written at its `<video>` tokens (a scoring request is one prompt with its replies,
each reply's row getting the clip's features; a generation request one left-padded prompt).
The features do not depend on the prompt, so they are kept between calls
(`feature_cache_mb`, an `experts.feature_cache.FrameFeatureCache` keyed by the model, the
clip's identity, frame size and sampled source frames, and the preprocessing): the other
questions of a video, its `Video_summary` and a `Query_Actions` on the same frames run only
the language model. With `coalesce=True` each part sits behind an `experts.coalesce.Coalescer`,
so concurrent calls from a CoT job's programs share one batch: the clips whose features are
not kept in one vision batch, the prompts (same prompt bucket, same number of replies, kept
features or not) in one language-model batch.

With `prefix_cache_mb` the language model's keys and values of the prompt's prefix (the
template up to and including the video tokens, which come before the question) are kept on
the device per clip (`prefix_kv`), and a call runs only its question (and replies) against
them: `generate_after_prefix` for generations, `_request_logprobs_after_prefix` for scoring.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from aotd_jax.models import pixel_norms

SUMMARY_PROMPT = "Describe briefly what happens in the video."
SUMMARY_PROMPTS = ("ours", "official")


def summary_text(style: str, query: str | None = None) -> str:
  """Video_summary's request: `ours` (a short description, focused on `query` when given) or
  `official` (the release's one-sentence description of subjects, actions and background,
  `vision_models.py:378`, in our words: `data/prompts/video_summary_official.txt`; like the
  release it ignores `query`)."""
  if style == "official":
    from aotd_jax.agent.programs import read_prompt_file

    return read_prompt_file("video_summary_official.txt").strip()
  if style != "ours":
    raise ValueError(f"summary_prompt={style!r} is not one of {list(SUMMARY_PROMPTS)}")
  return SUMMARY_PROMPT if not query else f"{SUMMARY_PROMPT} Focus on: {query}"


ACTIONS_PROMPT = "What actions happen in the video?"
OBJECT_ACTIONS_PROMPT = "What happens with the {object} in the video?"
ACTION_PROMPTS = ("ours", "official")


def action_question(style: str, object_name: str | None, has_candidates: bool) -> str:
  """Query_Actions' question to the video model. `official` (the release's `Query_Actions`,
  `video_clip.py:83-106`): "What did the person do to <object>?", "What did the person do?"
  when there are options but no object, and with neither its free action-recognition
  request (`prompts/action_single.prompt`, in our words:
  `data/prompts/action_recognition_official.txt`); `ours`: `OBJECT_ACTIONS_PROMPT` /
  `ACTIONS_PROMPT`."""
  if style == "official":
    if object_name:
      return f"What did the person do to {object_name}?"
    if has_candidates:
      return "What did the person do?"
    from aotd_jax.agent.programs import read_prompt_file

    return read_prompt_file("action_recognition_official.txt").strip()
  if style != "ours":
    raise ValueError(f"action_prompt={style!r} is not one of {list(ACTION_PROMPTS)}")
  return OBJECT_ACTIONS_PROMPT.format(object=object_name) if object_name else ACTIONS_PROMPT


CHOICE_SCORING = ("likelihood", "pmi", "generate")
# the default request buckets (a coalesced batch holds at most the largest); at 7B and 32 frames
# a batch's device memory grows with it: benchmarks/llava_batch_memory.py
REQUEST_BUCKETS = (1, 2, 4, 8, 16)
ANSWER_FORMATS = ("text", "letter", "letter_text")


def choice_reply(choices: Sequence[str], index: int, answer_format: str = "text") -> str:
  """The reply that names `choices[index]`: its text, "(B)" or "(B) text" (`answer_format`)."""
  from aotd_jax.data import conversation

  if answer_format == "text":
    return str(choices[index])
  letter = f"({conversation.option_letter(index)})"
  return letter if answer_format == "letter" else f"{letter} {choices[index]}"


def _video_features(graphdef, pixels, state):
  """(B, N, hidden) video features of B clips' pixels (B, T, 3, S, S)."""
  from aotd_jax.models.generate import merged

  return merged(graphdef, state).get_video_features(pixels)


def _request_logprobs(graphdef, rows, state):
  """Summed log-probabilities (B, R) of the `scored` tokens of each request's R replies.

  rows: ids (B, R, L), attention mask (B, R, L), video features (B, N, hidden), scored
  (B, R, L): one clip per request, its features written into each reply's row.
  """
  import jax
  import jax.numpy as jnp

  from aotd_jax.models.generate import merged
  from aotd_jax.models.llava_next_video import _scatter_features

  ids, mask, feats, scored = rows
  b, r, length = ids.shape
  model = merged(graphdef, state)
  feats = jnp.repeat(feats, r, axis=0).reshape(-1, feats.shape[-1])
  flat = ids.reshape(b * r, length)
  embeds = _scatter_features(
    model.language_model.embed(flat), flat == model.config.video_token_index, feats
  )
  logits = model(attention_mask=mask.reshape(b * r, length), inputs_embeds=embeds).logits
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  tok = jnp.take_along_axis(logp, flat[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(tok * scored.reshape(b * r, length)[:, 1:], axis=-1).reshape(b, r)


def _prefix_kv(graphdef, rows, state):
  """The language model's KV cache (keys, values: per layer (B, kv_heads, P, head_dim)) of B
  prompt prefixes: ids (B, P), unpadded, ending in the video tokens, and their clips' video
  features (B, N, hidden)."""
  from aotd_jax.models.generate import merged, prefill_prefix
  from aotd_jax.models.llava_next_video import _scatter_features

  ids, feats = rows
  model = merged(graphdef, state)
  embeds = _scatter_features(
    model.language_model.embed(ids),
    ids == model.config.video_token_index,
    feats.reshape(-1, feats.shape[-1]),
  )
  return prefill_prefix(model.language_model, embeds)


def _request_logprobs_after_prefix(graphdef, rows, state):
  """`_request_logprobs` after kept prefixes: summed log-probabilities (B, R) of each request's
  R replies, all in one row after the prompt's suffix, each reply seeing the prefix, the
  suffix and itself only.

  rows: ids (B, l) (the left-padded suffix, then the R replies right-padded to one length),
  seen (B, l, l) (which of the row's slots each query sees), positions (B, l), pred / target /
  scored (B, R, Lr) (the row index whose logits predict each reply token, the token, 1 where
  scored), keys / values (per layer (B, kv_heads, P, head_dim): the prefixes' cache).
  """
  import jax
  import jax.numpy as jnp

  from aotd_jax.models.generate import merged

  ids, seen, positions, pred, target, scored, keys, values = rows
  lm = merged(graphdef, state).language_model
  b, length = ids.shape
  p = keys[0].shape[2]

  def slots(a):
    return jnp.pad(a, ((0, 0), (0, 0), (0, length), (0, 0)))

  cache = lm.init_cache(b, p + length).replace(
    keys=tuple(map(slots, keys)), values=tuple(map(slots, values)), index=jnp.asarray(p, jnp.int32)
  )
  mask = jnp.concatenate([jnp.ones((b, length, p), bool), seen.astype(bool)], axis=-1)
  logits = lm(ids, mask, position_ids=positions, cache=cache).logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  at = pred.reshape(b, -1)
  picked = jnp.take_along_axis(
    logits.reshape(b, -1), at * vocab + target.reshape(b, -1), axis=1
  ) - jnp.take_along_axis(jax.nn.logsumexp(logits, axis=-1), at, axis=1)
  return jnp.sum(picked.reshape(pred.shape) * scored, axis=-1)


def load(
  path: str, matmul_precision: str = "default", cpu_kernels: bool = True, dtype: str = "float32"
):
  """(model, tokenizer) of a HF LLaVA-NeXT-Video directory; `matmul_precision="high"` runs its
  matmuls in bf16x3 and `"highest"` in bf16x6 with float32's error (the AMX kernel on Intel
  CPUs, docs/llama.md); `cpu_kernels=False` keeps
  XLA's ops where aotd_jax's CPU kernels (decode matmuls, attention) would run; `dtype`
  ("float32", "bfloat16", "float16") is the weights' and the computation's dtype."""
  from aotd_jax import hf
  from aotd_jax.layers.compute import ComputeOptions

  options = ComputeOptions(
    dtype=dtype, param_dtype=dtype, matmul_precision=matmul_precision, cpu_kernels=cpu_kernels
  )
  return hf.from_pretrained(path, options=options), hf.load_tokenizer(path)


class LlavaVideoQA:
  """The `VideoQA` and `ActionRecognizer` protocols on `LlavaNextVideoForConditionalGeneration`.

  Args:
    model: the Flax LLaVA-NeXT-Video model.
    tokenizer: its transformers tokenizer (with a single token for `video_token`).
    name: name for cache keys and traces.
    num_frames: frames sampled per clip.
    max_new_tokens: generation length of answers and summaries.
    video_token: the placeholder token of the prompt.
    choice_scoring: "likelihood" (closed set: the candidate the model finds likeliest) or
      "generate" (free greedy reply snapped to a candidate), for multiple-choice calls.
    answer_format: how the model was trained to name a choice ("text", "letter": "(B)",
      "letter_text": "(B) text"); the form `choice_scoring="likelihood"` scores.
    prompt_format: "plain" (the question and option lines) or "official" (`Question:` /
      `Options:` headers, as the official AoTD asks LLaVA-NeXT-Video-DPO).
    buckets: request batch sizes the scorer and generation compile for.
    coalesce: batch concurrent calls across threads (`experts.coalesce.Coalescer`).
    coalesce_wait_s: the coalescers' wait window.
    normalization: (image_mean, image_std) of the frames (default: the model config's
      `pixel_normalization`, the released processor's; `experts.registry` passes the
      checkpoint's processor files').
    scheduler: the device's `experts.scheduler.DeviceScheduler`: with `coalesce`, its
      coalescers share it (one batch at a time on the device; see experts/scheduler.py).
    feature_cache_mb: megabytes of clips' video features kept between calls (host arrays in
      the model's dtype; LLaVA-NeXT-Video-7B at 32 frames: 4,608 x 4,096 values, 37.7 MB in
      bf16, 75.5 MB in float32); 0: none.
    prefix_cache_mb: megabytes of the language model's KV cache of prompt prefixes (the
      template's tokens up to and including the clip's video tokens) kept on the device per
      clip, so a generation or a scoring on kept frames prefills only its question (and
      replies). At 7B, 32 frames, bf16: ~2.3 GB a clip (32 layers x 2 x 4,096 values x ~4,612
      tokens); 0: none.
  """

  def __init__(
    self,
    model,
    tokenizer,
    *,
    name: str = "llava",
    num_frames: int = 8,
    max_new_tokens: int = 32,
    video_token: str = "<video>",
    choice_scoring: str = "likelihood",
    answer_format: str = "text",
    prompt_format: str = "plain",
    summary_prompt: str = "ours",
    action_prompt: str = "ours",
    buckets: Sequence[int] = REQUEST_BUCKETS,
    coalesce: bool = False,
    coalesce_wait_s: float = 0.002,
    normalization: tuple | None = None,
    scheduler=None,
    feature_cache_mb: float = 1024.0,
    prefix_cache_mb: float = 0.0,
  ):
    from experts.feature_cache import FrameFeatureCache

    if feature_cache_mb < 0:
      raise ValueError(f"feature_cache_mb must be >= 0 (0: no cache), got {feature_cache_mb}")
    self.feature_cache = (
      FrameFeatureCache(int(feature_cache_mb * 2**20), name=f"{name}/video-features")
      if feature_cache_mb
      else None
    )
    if prefix_cache_mb < 0:
      raise ValueError(f"prefix_cache_mb must be >= 0 (0: no cache), got {prefix_cache_mb}")
    scaling = prefix_cache_mb and model.config.text_config.rope_scaling_dict or {}
    if scaling.get("rope_type", scaling.get("type")) == "dynamic":
      # dynamic RoPE's frequencies depend on the longest position of a call: a prefix run on
      # its own would get other frequencies than the whole prompt
      raise ValueError("prefix_cache_mb: a KV prefix cache cannot serve 'dynamic' RoPE scaling")
    self.prefix_cache = (
      FrameFeatureCache(int(prefix_cache_mb * 2**20), name=f"{name}/prefix-kv")
      if prefix_cache_mb
      else None
    )
    if choice_scoring not in CHOICE_SCORING:
      raise ValueError(f"choice_scoring={choice_scoring!r} is not one of {list(CHOICE_SCORING)}")
    if answer_format not in ANSWER_FORMATS:
      raise ValueError(f"answer_format={answer_format!r} is not one of {list(ANSWER_FORMATS)}")
    self.choice_scoring, self.answer_format = choice_scoring, answer_format
    if summary_prompt not in SUMMARY_PROMPTS:
      raise ValueError(f"summary_prompt={summary_prompt!r} is not one of {list(SUMMARY_PROMPTS)}")
    if action_prompt not in ACTION_PROMPTS:
      raise ValueError(f"action_prompt={action_prompt!r} is not one of {list(ACTION_PROMPTS)}")
    self.prompt_format, self.summary_prompt = prompt_format, summary_prompt
    self.action_prompt = action_prompt
    self.buckets, self.coalesce, self.coalesce_wait_s = tuple(buckets), coalesce, coalesce_wait_s
    self.scheduler = scheduler
    self._graphdef = self._state = None
    self._language_split = None  # nnx.split(model.language_model), on the first generation
    self._fns: dict[str, object] = {}  # "score" / "generate<max_new_tokens>" -> BucketedJit
    self.coalescers: dict[str, object] = {}
    self._lock = threading.Lock()
    self.model, self.tokenizer, self.name = model, tokenizer, name
    self.normalization = normalization or getattr(
      model.config, "pixel_normalization", pixel_norms.CLIP
    )
    self.num_frames, self.max_new_tokens = int(num_frames), int(max_new_tokens)
    self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
    if self.video_token_id is None or self.video_token_id == tokenizer.unk_token_id:
      raise ValueError(f"the tokenizer has no single token for {video_token!r}")
    if self.video_token_id != model.config.video_token_index:
      raise ValueError(
        f"tokenizer id {self.video_token_id} of {video_token!r} != the model's "
        f"video_token_index {model.config.video_token_index}"
      )

  def inputs(self, clip, user_text: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids (1, L), pixel_values_videos (1, T, 3, S, S)) for one question about a clip."""
    from aotd_jax.data.video_processing import sample_frame_indices

    return self.prompt_ids(user_text), self.pixels(
      clip, sample_frame_indices(len(clip), self.num_frames)
    )

  def pixels(self, clip, idx: np.ndarray) -> np.ndarray:
    """pixel_values_videos (1, T, 3, S, S) of the clip's rows `idx`, as the processor makes them."""
    from aotd_jax.data.video_processing import preprocess_video

    cfg = self.model.config
    size, (mean, std) = cfg.vision_config.image_size, self.normalization
    return preprocess_video(
      clip.frames[idx],
      shortest_edge=size,
      crop_size=size,
      resize=cfg.video_resize,
      image_mean=mean,
      image_std=std,
    )[None]

  def prompt_ids(self, user_text: str) -> np.ndarray:
    """input_ids (1, L): the prompt with `<video>` expanded to the clip's feature tokens."""
    from aotd_jax.data.conversation import build_prompt

    prompt = build_prompt(self.tokenizer, user_text, media="video")
    ids = []
    per_video = self.num_frames * self.model.config.video_tokens_per_frame()
    for t in self.tokenizer(prompt, add_special_tokens=True)["input_ids"]:
      ids.extend([t] * per_video if t == self.video_token_id else [t])
    return np.asarray([ids], np.int32)

  def feature_key(self, clip, idx: np.ndarray, *, blank: bool = False) -> tuple:
    """What a clip's video features depend on: the model (`name`), the frames (the clip's
    identity, frame size and the source frame ids sampled, or "blank": zeros), and their
    preprocessing (frame count, crop size, resize, normalisation)."""
    cfg = self.model.config
    mean, std = self.normalization
    prep = (
      self.num_frames,
      cfg.vision_config.image_size,
      cfg.video_resize,
      tuple(float(v) for v in mean),
      tuple(float(v) for v in std),
    )
    if blank:
      frames = ("blank",)
    else:
      frames = (clip.identity, clip.height, clip.width, tuple(int(i) for i in clip.frame_ids[idx]))
    return (self.name, prep, frames)

  def video_features(self, clip, *, blank: bool = False) -> np.ndarray:
    """(1, N, hidden) video features of the clip's `num_frames` sampled frames (`blank`: of
    zeros, the normalised mean frame), kept or computed (through the "features" coalescer
    with `coalesce`, where concurrent calls' clips share one vision batch)."""
    from aotd_jax.data.video_processing import sample_frame_indices

    idx = sample_frame_indices(len(clip), self.num_frames)
    fn, coalescer, state = self._model_part("features", _video_features)

    def compute(keys=None):
      pixels = self.pixels(clip, idx)
      if blank:
        pixels = np.zeros_like(pixels)
      if coalescer is not None:
        return [coalescer(pixels, state)]
      return [fn(pixels, state, to_host=True)]

    if self.feature_cache is None:
      return compute()[0]
    # another program computing the same clip's features is awaited as an expert call (the
    # device scheduler counts this one blocked meanwhile)
    wait = coalescer.wait if coalescer is not None else lambda future: future.result()
    return self.feature_cache.fetch([self.feature_key(clip, idx, blank=blank)], compute, wait)[0]

  def clear_features(self) -> None:
    """Drops the kept video features and prefix caches (e.g. to time a cold run)."""
    if self.feature_cache is not None:
      self.feature_cache.clear()
    if self.prefix_cache is not None:
      self.prefix_cache.clear()

  def prefix_length(self, ids: np.ndarray) -> int:
    """How many of the prompt's tokens (1, L) the prefix cache keeps: up to and including
    the last video token (what follows is the question), at most L - 1 (the suffix holds the
    token whose logits start the reply)."""
    where = np.flatnonzero(ids[0] == self.video_token_id)
    if not len(where):
      raise ValueError(f"{self.name}: the prompt has no video token to cache a prefix up to")
    return int(min(where[-1] + 1, ids.shape[1] - 1))

  def prefix_key(
    self, clip, idx: np.ndarray, prefix_ids: np.ndarray, *, blank: bool = False
  ) -> tuple:
    """What a prefix's KV cache depends on: the video features' key (model name, frames or
    blank, preprocessing: `feature_key`), the prefix's token ids and the cache's dtype."""
    import jax.numpy as jnp

    dtype = jnp.dtype(self.model.language_model.options.dtype).name
    ids = np.ascontiguousarray(prefix_ids, np.int32)
    return (self.feature_key(clip, idx, blank=blank), ids.shape, ids.tobytes(), dtype)

  def prefix_kv(self, clip, prefix_ids: np.ndarray, *, blank: bool = False) -> tuple:
    """The KV cache (keys, values: per layer (1, kv_heads, P, head_dim) device arrays) of the
    prompt prefix `prefix_ids` (1, P) with the clip's video features, kept or computed
    (through the "prefix" coalescer with `coalesce`: clips' prefixes of one length share a
    batch)."""
    from aotd_jax.data.video_processing import sample_frame_indices

    idx = sample_frame_indices(len(clip), self.num_frames)
    fn, coalescer, state = self._model_part("prefix", _prefix_kv, output="device")

    def compute(keys=None):
      rows = (prefix_ids, self.video_features(clip, blank=blank))
      return [coalescer(rows, state) if coalescer is not None else fn(rows, state)]

    wait = coalescer.wait if coalescer is not None else lambda future: future.result()
    key = self.prefix_key(clip, idx, prefix_ids, blank=blank)
    return self.prefix_cache.fetch([key], compute, wait)[0]

  def _run(self, key: str, make, rows, *args):
    """The `BucketedJit` `make()` (built once per key) over request rows, on the host, through
    the key's coalescer when `coalesce` is on."""
    fn, coalescer = self._part(key, make)
    return coalescer(rows, *args) if coalescer is not None else fn(rows, *args, to_host=True)

  def _model_part(self, key: str, fn, output: str = "host") -> tuple:
    """(the `BucketedJit` of `fn(graphdef, rows, state)` on the whole model, built once per key
    and named `<name>/<key>`; its coalescer (`output` mode) or None; the model's state to pass
    it, a `FlatState`: flattened once, not at every call)."""
    import functools

    from experts.batching import BucketedJit

    (graphdef, state), _ = self._splits()
    bucketed, coalescer = self._part(
      key,
      lambda: BucketedJit(
        functools.partial(fn, graphdef), buckets=self.buckets, name=f"{self.name}/{key}"
      ),
      output,
    )
    return bucketed, coalescer, state

  def _run_model(self, key: str, fn, rows):
    """`fn(graphdef, rows, state)` (`_model_part`) over request rows, on the host, through the
    key's coalescer when `coalesce` is on."""
    bucketed, coalescer, state = self._model_part(key, fn)
    if coalescer is not None:
      return coalescer(rows, state)
    return bucketed(rows, state, to_host=True)

  def _part(self, key: str, make, output: str = "host") -> tuple:
    """(the `BucketedJit` of `key`, built by `make()` once; its coalescer (`output` mode) or
    None)."""
    with self._lock:  # programs call from many threads: one function and coalescer per key
      fn = self._fns.get(key)
      if fn is None:
        fn = self._fns[key] = make()
      if self.coalesce and key not in self.coalescers:
        from experts.coalesce import Coalescer

        self.coalescers[key] = Coalescer(
          fn,
          wait_s=self.coalesce_wait_s,
          output=output,
          name=f"{self.name}/coalesce-{key}",
          scheduler=self.scheduler,
        )
      return fn, self.coalescers.get(key)

  def close(self) -> None:
    """Stops the coalescers' worker threads (if any); calls then run directly."""
    with self._lock:
      coalescers, self.coalescers, self.coalesce = self.coalescers, {}, False
    for c in coalescers.values():
      c.close()

  def _splits(self, language: bool = False) -> tuple:
    """(`nnx.split(model)`, `nnx.split(model.language_model)` or None), each made once and
    shared by scoring and generation (`llava_next_video.generation_splits`' form: graphdefs
    hashed once for jit, states flattened once as `generate.FlatState`): the weights are
    fixed, and the state object is part of the coalescers' batching key."""
    from flax import nnx

    from aotd_jax.models.generate import flat_state, static_graphdef

    with self._lock:
      if self._state is None:
        graphdef, state = nnx.split(self.model)
        self._graphdef, self._state = static_graphdef(graphdef), flat_state(state)
      if language and self._language_split is None:
        graphdef, state = nnx.split(self.model.language_model)
        self._language_split = static_graphdef(graphdef), flat_state(state)
      return (self._graphdef, self._state), self._language_split

  def generate_text(self, clip, user_text: str, max_new_tokens: int | None = None) -> str:
    """Greedy reply of the model to `user_text` about the clip."""
    ids = self.generate_ids(clip, user_text, max_new_tokens)
    return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()

  def generate_ids(self, clip, user_text: str, max_new_tokens: int | None = None) -> np.ndarray:
    """The greedy reply's token ids (up to and including EOS) to `user_text` about the clip:
    the whole prompt prefilled, or with `prefix_cache_mb` only its question after the kept
    KV cache of the prompt's prefix (the same tokens: tests/test_llava_prefix_cache.py)."""
    from aotd_jax.models.generate import prompt_bucket
    from experts.batching import BucketedJit

    ids = self.prompt_ids(user_text)
    steps = int(max_new_tokens or self.max_new_tokens)
    pad = self.tokenizer.pad_token_id or 0
    model, eos = self.model, self.tokenizer.eos_token_id
    splits = self._splits(language=True)  # ~8 ms of Python per call if split each time
    if self.prefix_cache is not None:
      from aotd_jax.models.generate import generate_after_prefix
      from experts.batching import is_row_parts

      p = self.prefix_length(ids)
      keys, values = self.prefix_kv(clip, ids[:, :p])
      suffix = ids[:, p:]
      width = prompt_bucket(suffix.shape[1])  # left-padded as `generate_after_prefix` pads it
      rows = (
        np.pad(suffix, ((0, 0), (width - suffix.shape[1], 0)), constant_values=pad),
        np.pad(np.ones_like(suffix), ((0, 0), (width - suffix.shape[1], 0))),
        keys,
        values,
      )

      def run(rows):
        # a batch's kept prefixes arrive as their own arrays (RowParts): handed on as row
        # blocks, joined inside the jitted generation where they are copied into its cache
        blocks = [tuple(a.parts if is_row_parts(a) else a for a in kv) for kv in rows[2:]]
        out = generate_after_prefix(
          model.language_model,
          tuple(blocks),
          rows[0],
          rows[1],
          max_new_tokens=steps,
          eos_token_id=eos,
          pad_token_id=pad,
          split=splits[1],
        )
        return out.sequences, out.lengths

      key = f"generate-prefix{steps}"
    else:
      from aotd_jax.models.llava_next_video import generate

      width = prompt_bucket(ids.shape[1])  # left-padded as `generate` pads it
      rows = (
        np.pad(ids, ((0, 0), (width - ids.shape[1], 0)), constant_values=pad),
        np.pad(np.ones_like(ids), ((0, 0), (width - ids.shape[1], 0))),
        self.video_features(clip),
      )

      def run(rows):
        out = generate(
          model,
          rows[0],
          rows[1],
          video_features=rows[2],
          max_new_tokens=steps,
          eos_token_id=eos,
          pad_token_id=pad,
          splits=splits,
        )
        return out.sequences, out.lengths

      key = f"generate{steps}"
    seqs, lengths = self._run(
      key,
      lambda: BucketedJit(
        run, buckets=self.buckets, name=f"{self.name}/{key.rstrip('0123456789')}", jit=False
      ),
      rows,
    )
    return np.asarray(seqs)[0, : int(lengths[0])]

  def score_choices(
    self, clip, user_text: str, replies: Sequence[str], *, blank: bool = False
  ) -> np.ndarray:
    """Log-likelihood (len(replies),) of the model replying `reply</s>` to `user_text`.

    The replies are tokenised as training encodes targets (`" " + reply`, then EOS) and scored
    in one batch (right-padded to a `prompt_bucket` length, so lengths share compiled programs).
    blank: the video replaced by zeros (the normalised mean frame): what the text alone says.
    """

    from aotd_jax.models.generate import prompt_bucket

    if not replies:
      raise ValueError("score_choices: no replies to score")
    ids = self.prompt_ids(user_text)
    if self.prefix_cache is not None:
      return self._score_after_prefix(clip, ids, replies, blank)
    prompt = list(ids[0])
    rows, masks = [], []
    for t in self._reply_ids(replies):
      rows.append(prompt + t)
      masks.append([0] * len(prompt) + [1] * len(t))
    width = prompt_bucket(max(map(len, rows)))
    pad = self.tokenizer.pad_token_id or 0
    batch = np.full((len(rows), width), pad, np.int32)
    attn, scored = np.zeros_like(batch), np.zeros((len(rows), width), np.float32)
    for i, (r, m) in enumerate(zip(rows, masks)):
      batch[i, : len(r)], attn[i, : len(r)], scored[i, : len(m)] = r, 1, m
    out = self._run_model(
      "score",
      _request_logprobs,
      (batch[None], attn[None], self.video_features(clip, blank=blank), scored[None]),
    )
    return np.asarray(out[0], np.float64)

  def _reply_ids(self, replies: Sequence[str]) -> list[list[int]]:
    """Each reply's scored tokens as training encodes targets: `" " + reply`, then EOS (one
    function for both scoring paths, so that they score the same tokens)."""
    eos = self.tokenizer.eos_token_id
    return [
      list(self.tokenizer(" " + str(r), add_special_tokens=False)["input_ids"]) + [eos]
      for r in replies
    ]

  def _score_after_prefix(self, clip, ids: np.ndarray, replies: Sequence[str], blank: bool):
    """`score_choices` on the clip's kept prefix (`prefix_kv`): one row per request, the
    prompt's suffix (left-padded to a `prompt_bucket`) then every reply (right-padded to one
    bucketed length), each reply seeing only the prefix, the suffix and itself, at the
    positions it has after the whole prompt."""

    from aotd_jax.models.generate import prompt_bucket

    p = self.prefix_length(ids)
    keys, values = self.prefix_kv(clip, ids[:, :p], blank=blank)
    suffix = [int(t) for t in ids[0, p:]]
    toks = self._reply_ids(replies)
    s, n = len(suffix), len(toks)
    width, lr = prompt_bucket(s), prompt_bucket(max(map(len, toks)), minimum=4)
    length = width + n * lr
    row = np.full(length, self.tokenizer.pad_token_id or 0, np.int32)
    real = np.zeros(length, bool)
    block = np.full(length, -1)  # which reply a slot holds (-1: the suffix)
    positions = np.ones(length, np.int32)
    row[width - s : width], real[width - s : width] = suffix, True
    positions[width - s : width] = p + np.arange(s)
    pred, target = np.zeros((n, lr), np.int32), np.zeros((n, lr), np.int32)
    scored = np.zeros((n, lr), np.float32)
    for i, t in enumerate(toks):
      start = width + i * lr
      row[start : start + len(t)], real[start : start + len(t)] = t, True
      block[start : start + lr] = i
      positions[start : start + lr] = p + s + np.arange(lr)
      pred[i, : len(t)] = [width - 1] + list(range(start, start + len(t) - 1))
      target[i, : len(t)], scored[i, : len(t)] = t, 1
    # a query sees the real suffix slots and the real slots of its own reply (and, through the
    # model's causal rule, none after itself)
    seen = real[None, :] & ((block[None, :] == -1) | (block[None, :] == block[:, None]))
    rows = (row, seen, positions, pred, target, scored)
    out = self._run_model(
      "score-prefix", _request_logprobs_after_prefix, (*(a[None] for a in rows), keys, values)
    )
    return np.asarray(out[0], np.float64)

  def answer(self, clip, question: str, choices: Sequence[str] | None = None) -> str:
    from aotd_jax.data.conversation import ANSWER_SUFFIX, OPEN_ENDED_SUFFIX, format_question

    if choices:
      choices = [str(c) for c in choices]
      user = format_question(question, choices, self.prompt_format) + "\n" + ANSWER_SUFFIX
      if self.choice_scoring == "generate":
        return self.generate_text(clip, user)
      replies = [choice_reply(choices, i, self.answer_format) for i in range(len(choices))]
      scores = self.score_choices(clip, user, replies)
      if self.choice_scoring == "pmi":  # what the video adds to the text's own preference
        scores = scores - self.score_choices(clip, user, replies, blank=True)
      return choices[int(np.argmax(scores))]
    return self.generate_text(clip, question + "\n" + OPEN_ENDED_SUFFIX)

  def summarize(self, clip, query: str | None = None) -> str:
    return self.generate_text(clip, summary_text(self.summary_prompt, query))

  def recognize(
    self, clip, object_name: str | None = None, candidates: Sequence[str] | None = None
  ) -> list[str]:
    question = action_question(self.action_prompt, object_name, bool(candidates))
    if self.action_prompt == "official" and not candidates and not object_name:
      reply = self.generate_text(clip, question)  # the release's free recognition request
    else:
      reply = self.answer(clip, question, candidates)
    if reply and candidates:  # the protocol: labels drawn from the candidates ("(B) x" -> x)
      from experts.tools import snap_to_choice

      reply = snap_to_choice(reply, list(candidates))
    return [reply] if reply else []
