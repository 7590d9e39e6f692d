"""`Grounder` on our Flax UniVTG with CLIP features, jitted over buckets.

Per clip: one frame per `clip_length` seconds (the official feature extraction), CLIP image
features (jitted over frame buckets), CLIP text token states of the query (one compile:
the tokenizer pads to a fixed length; padded tokens are masked, so exact), the UniVTG
forward, and the official decoding to top-k moments with temporal NMS. Moments come back
as source-video frame windows.

The forward sees the exact number of clips by default, as the official single-video
inference does (one compile per distinct clip count; the forward is small). With
`clip_buckets` the clip count is padded to a bucket (bounded compiles), but the heads'
3-tap convolutions then read padded positions near the end of the video, so the last three
clips' scores differ slightly from unpadded inference — as in the official batched
evaluation, which pads to the longest video of the batch.

Video features are CLIP's image features (`v_feat_dims == (projection_dim,)`), or, with
`frame_features` (`features_path` in the config), the per-name object states of a saved
`aotd_jax.projects.toyworld.object_states.ObjectStates` (the toy world's grounder). The released
SlowFast+CLIP checkpoints need SlowFast features we do not compute.

With `coalesce=True` the three jitted parts (CLIP image features, CLIP text states, the
UniVTG forward) each sit behind an `experts.coalesce.Coalescer`: concurrent `ground` calls
from a CoT job's programs share batches. The forward batches calls whose video has the same
(padded) clip count, so a row's inputs are exactly the unbatched call's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from flax import nnx

from aotd_jax.models.generate import flat_state, merged
from experts.backends.protocols import Window
from experts.batching import DEFAULT_BUCKETS, BucketedJit, bucket_size

Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


# `video_processing.preprocess_video` settings of each `frame_preprocess`.
FRAME_PREPROCESS = {
  "clip_processor": {"resize": "shortest_edge", "resample": "bicubic"},
  "official": {"resize": "square", "resample": "bilinear"},
}


class UniVTGGrounder:
  """The `Grounder` protocol on `aotd_jax.models.univtg.UniVTG` + our `CLIPModel`.

  Args:
    model: UniVTG (video features = CLIP image features or `frame_features`' output, plus
      TEF if the config says so).
    clip_model: `aotd_jax.models.clip.CLIPModel` for text (and, by default, image) features.
    tokenize: texts -> (input_ids, attention_mask), padded to a fixed length.
    name: name for cache keys and traces.
    buckets: batch sizes of the CLIP image tower (frames), the CLIP text side and the UniVTG
      forward (calls).
    image_buckets: the CLIP image tower's own frame batch sizes (None: `buckets`), e.g.
      without 1 where every call brings several frames.
    clip_buckets: padded numbers of video clips for the UniVTG forward (None: exact counts).
    nms_threshold: temporal NMS IoU of the decoding (official 0.7).
    frame_features: an `nnx.Module` (pixels -> (frames, D)) with `image_size` and
      `feature_dim`, used for the video features instead of CLIP's image tower.
    coalesce: batch concurrent calls across threads (`experts.coalesce.Coalescer`, host mode)
      for the image features, the text states and the forward.
    coalesce_wait_s: the coalescers' wait window.
    normalization: (image_mean, image_std) of the frames for CLIP's image tower (default
      CLIP's; `from_pretrained` reads the CLIP directory's processor file).
    frame_preprocess: how frames become CLIP's input: "clip_processor" (transformers'
      `CLIPImageProcessor`: bicubic shortest-edge resize, centre crop) or "official" (the
      official AoTD's UniVTG `Preprocessing`: the whole frame resized to a square, bilinear,
      antialiased, nothing cropped).
    scheduler: the device's `experts.scheduler.DeviceScheduler`: with `coalesce`, its
      coalescers share it (one batch at a time on the device; see experts/scheduler.py).
    feature_cache_mb: megabytes of per-frame video features kept between calls
      (`experts.feature_cache`: a frame's features do not depend on the query, so another
      query on the same frames runs only the text side and the forward); 0: none.
  """

  def __init__(
    self,
    model,
    clip_model,
    tokenize: Tokenize,
    *,
    name: str = "univtg",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    image_buckets: Sequence[int] | None = None,
    clip_buckets: Sequence[int] | None = None,
    nms_threshold: float | None = 0.7,
    frame_features=None,
    coalesce: bool = False,
    coalesce_wait_s: float = 0.002,
    normalization: tuple | None = None,
    frame_preprocess: str = "clip_processor",
    scheduler=None,
    feature_cache_mb: float = 64.0,
  ):
    from aotd_jax.models import pixel_norms
    from experts.feature_cache import FrameFeatureCache

    if frame_preprocess not in FRAME_PREPROCESS:
      raise ValueError(
        f"frame_preprocess={frame_preprocess!r} is not one of {sorted(FRAME_PREPROCESS)}"
      )
    self.frame_preprocess = frame_preprocess
    if feature_cache_mb < 0:
      raise ValueError(f"feature_cache_mb must be >= 0 (0: no cache), got {feature_cache_mb}")
    self.feature_cache = (
      FrameFeatureCache(int(feature_cache_mb * 2**20), name=f"{name}/frame-features")
      if feature_cache_mb
      else None
    )
    cfg = model.config
    self.normalization = normalization or pixel_norms.CLIP
    if frame_features is None:
      dim, what = clip_model.config.projection_dim, "CLIP image features"
    else:
      dim, what = frame_features.feature_dim, "frame_features"
    if tuple(cfg.v_feat_dims) != (dim,):
      raise ValueError(
        f"UniVTG config expects video feature blocks {tuple(cfg.v_feat_dims)}; "
        f"the {what} computed here are ({dim},) (set v_feat_dims=({dim},))"
      )
    if cfg.t_feat_dim != clip_model.config.text_config.hidden_size:
      raise ValueError(
        f"UniVTG t_feat_dim={cfg.t_feat_dim} != CLIP text hidden size "
        f"{clip_model.config.text_config.hidden_size}"
      )
    self.name, self.tokenize, self.nms_threshold = name, tokenize, nms_threshold
    self.clip_length = float(cfg.clip_length)
    self.use_tef = cfg.use_tef
    self.image_size = (
      clip_model.config.vision_config.image_size
      if frame_features is None
      else frame_features.image_size
    )
    self.clip_buckets = tuple(sorted(clip_buckets)) if clip_buckets else None
    # states flattened once (`FlatState`): jit would walk an nnx.State at every call
    vg, vs = nnx.split(clip_model)
    ug, us = nnx.split(model)
    vs, us = flat_state(vs), flat_state(us)
    self._clip_state, self._univtg_state = vs, us
    if frame_features is None:
      self._image_state = vs

      def image_features(pixels, state):
        return merged(vg, state).get_image_features(pixels)
    else:
      fg, fs = nnx.split(frame_features)
      self._image_state = flat_state(fs)

      def image_features(pixels, state):
        return merged(fg, state)(pixels)

    def text_states(rows, state):
      input_ids, attention_mask = rows
      return merged(vg, state).text_model(input_ids, attention_mask).last_hidden_state

    def forward(rows, state):
      out = merged(ug, state)(*rows)  # src_txt, src_txt_mask, src_vid, src_vid_mask
      return out.pred_logits, out.pred_spans, out.saliency_scores, out.src_vid_mask

    self.image_fn = BucketedJit(
      image_features, buckets=image_buckets or buckets, name=f"{name}/clip-image"
    )
    self.text_fn = BucketedJit(text_states, buckets=buckets, name=f"{name}/clip-text")
    self.forward_fn = BucketedJit(forward, buckets=buckets, name=f"{name}/forward")
    self.coalescers = {}
    if coalesce:
      from experts.coalesce import Coalescer

      self.coalescers = {
        part: Coalescer(
          fn,
          wait_s=coalesce_wait_s,
          output="host",
          name=f"{name}/coalesce-{part}",
          scheduler=scheduler,
        )
        for part, fn in (
          ("image", self.image_fn),
          ("text", self.text_fn),
          ("forward", self.forward_fn),
        )
      }

  @property
  def forward_compiles(self) -> int:
    """XLA compilations of the UniVTG forward so far (one per batch bucket and clip count)."""
    return self.forward_fn.compiles

  def _run(self, part: str, fn: BucketedJit, rows, state):
    """`fn` over `rows` on the host, through the part's coalescer when there is one."""
    coalescer = self.coalescers.get(part)
    if coalescer is not None:
      return coalescer(rows, state)
    return fn(rows, state, to_host=True)

  def clear_features(self) -> None:
    """Drops the kept frame features (e.g. to time a cold run)."""
    if self.feature_cache is not None:
      self.feature_cache.clear()

  def close(self) -> None:
    """Stops the coalescers' worker threads (if any); calls then run directly."""
    coalescers, self.coalescers = self.coalescers, {}
    for c in coalescers.values():
      c.close()

  @classmethod
  def from_pretrained(
    cls, path: str, *, clip_path: str, buckets=DEFAULT_BUCKETS, frame_features=None, **kwargs
  ) -> "UniVTGGrounder":
    """An official UniVTG checkpoint (`path`) and a HF CLIP directory with its tokenizer.

    `path` may also be a directory holding `univtg.ckpt` (as `train_grounder` writes it).
    `frame_features`: loaded video features (the toy world's saved `ObjectStates`, read by its
    plugin from `grounder.features_path`); None = CLIP's.
    """
    import os

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "univtg.ckpt")):
      path = os.path.join(path, "univtg.ckpt")
    from aotd_jax import hf
    from aotd_jax.hf.univtg import load_univtg
    from experts.backends.owlv2 import hf_tokenize

    from aotd_jax.hf import processor_files

    clip_model = hf.from_pretrained(clip_path)
    tokenize = hf_tokenize(
      hf.load_tokenizer(clip_path), clip_model.config.text_config.max_position_embeddings
    )
    if frame_features is None:
      kwargs.setdefault(
        "normalization", processor_files.pixel_normalization(clip_model.config, clip_path)
      )
    return cls(
      load_univtg(path),
      clip_model,
      tokenize,
      name=f"univtg:{path}",
      buckets=buckets,
      frame_features=frame_features,
      **kwargs,
    )

  def features(self, clip) -> tuple[np.ndarray, np.ndarray]:
    """(L, D) video features, one per `clip_length` seconds of the clip's time span (its rows'
    source timestamps, however sparsely they were sampled), and the rows they come from."""
    from aotd_jax.data.video_processing import preprocess_video
    from aotd_jax.models.univtg_postprocess import clip_row_indices

    pos = clip_row_indices(clip.times, clip.span_seconds, self.clip_length)
    mean, std = self.normalization

    def compute(rows):
      pixels = preprocess_video(
        clip.frames[rows],
        shortest_edge=self.image_size,
        crop_size=self.image_size,
        image_mean=mean,
        image_std=std,
        **FRAME_PREPROCESS[self.frame_preprocess],
      )
      return self._run("image", self.image_fn, pixels, self._image_state)

    if self.feature_cache is None or not len(pos):
      return compute(pos), pos
    # a frame's features depend on the frame and its preprocessing alone: kept per (clip, frame
    # size, source frame, preprocessing), so a changed `frame_preprocess` never reads old rows
    ident, ids = clip.identity, clip.frame_ids
    prep = (self.frame_preprocess, self.image_size, tuple(mean), tuple(std))
    keys = [(ident, clip.height, clip.width, int(ids[p]), prep) for p in pos]
    first = {key: p for key, p in zip(keys, pos)}

    def compute_missing(missing):
      feats = compute(np.asarray([first[key] for key in missing]))
      return [np.array(row) for row in feats]  # rows, not views

    def wait(future):  # the image coalescer exists once `compute` ran (`_run` makes it)
      coalescer = self.coalescers.get("image")
      return coalescer.wait(future) if coalescer is not None else future.result()

    return np.stack(self.feature_cache.fetch(keys, compute_missing, wait)), pos

  def query_states(self, query: str) -> np.ndarray:
    """(Lt, hidden) CLIP text token states of the query's valid tokens."""
    ids, mask = self.tokenize([query])
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    hidden = self._run("text", self.text_fn, (ids, mask), self._clip_state)
    return hidden[0, mask[0] > 0]

  def raw_outputs(self, clip, query: str, *, pad: bool = True):
    """The UniVTG outputs for a clip and query; `pad=False` pads neither clips nor text."""
    from aotd_jax.models import univtg_postprocess as post

    feats, _ = self.features(clip)
    txt = self.query_states(query)
    n = len(feats)
    lv = None
    if pad and self.clip_buckets:
      lv = (
        bucket_size(n, self.clip_buckets)
        if n <= self.clip_buckets[-1]
        else -(-n // self.clip_buckets[-1]) * self.clip_buckets[-1]
      )
    inputs = post.batch_inputs(
      [feats],
      [txt],
      use_tef=self.use_tef,
      pad_video_to=lv,
      pad_text_to=self.tokenize([query])[0].shape[1] if pad else None,
    )
    rows = tuple(
      np.asarray(inputs[k]) for k in ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")
    )
    return self._run("forward", self.forward_fn, rows, self._univtg_state)

  def ground(self, clip, query: str, *, top_k: int = 1) -> list[Window]:
    """Best-first windows of source frame ids where `query` happens."""
    from aotd_jax.models import univtg_postprocess as post
    from aotd_jax.models.univtg import UniVTGOutput

    if not len(clip):
      return []
    logits, spans, sal, vmask = self.raw_outputs(clip, query)
    out = UniVTGOutput(
      pred_logits=logits,
      pred_spans=spans,
      saliency_scores=sal,
      vid_mem_proj=None,
      txt_mem_proj=None,
      src_vid_mask=vmask,
    )
    duration = clip.span_seconds
    pred = post.decode_moments(
      out,
      clip_length=self.clip_length,
      durations=[duration],
      nms_thd=self.nms_threshold,
      top_k=top_k,
    )[0]
    return [self._window(clip, s, e, score, query) for s, e, score in pred.pred_relevant_windows]

  @staticmethod
  def _window(clip, start_s: float, end_s: float, score: float, query: str) -> Window:
    """Seconds from the clip's first frame -> [first, last + 1) source frame ids."""
    first = int(clip.frame_ids[0])
    span = int(clip.frame_ids[-1]) + 1 - first
    a = int(np.clip(np.floor(start_s * clip.fps), 0, span - 1))
    b = int(np.clip(np.ceil(end_s * clip.fps), a + 1, span))
    return Window(first + a, first + b, float(score), query)
