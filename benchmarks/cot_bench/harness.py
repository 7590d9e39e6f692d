"""The experts under test: OWLv2, UniVTG + CLIP and LLaVA-NeXT-Video built once from random
weights, their coalescers on one device scheduler, switched between the benchmark's modes;
and `Timed`, which sums each expert's call latency."""

from __future__ import annotations

import contextlib
import threading
import time

from experts import random_weights as rw


class Timed:
  """A backend whose expert calls add their latency to `seconds[role]` (thread-safe)."""

  METHODS = ("detect", "ground", "answer", "recognize", "summarize")

  def __init__(self, backend, role: str, seconds: dict, lock: threading.Lock):
    self._backend, self._role, self._seconds, self._lock = backend, role, seconds, lock

  def __getattr__(self, name):
    attr = getattr(self._backend, name)
    if name not in self.METHODS:
      return attr

    def timed(*args, **kwargs):
      t0 = time.perf_counter()
      try:
        return attr(*args, **kwargs)
      finally:
        with self._lock:
          self._seconds[self._role] = self._seconds.get(self._role, 0.0) + time.perf_counter() - t0

    return timed


class Experts:
  """The three model backends, built once, their coalescers on one `DeviceScheduler`;
  `bypass()` runs them without coalescers, `per_expert()` with a worker thread each."""

  def __init__(
    self,
    p: dict,
    wait_s: float,
    feature_cache_mb: float = 64.0,
    workers: int = 1,
    llava_cache_mb: float = 1024.0,
    llava_prefix_cache_mb: float = 0.0,
    scheduler_order: str = "cheapest",
    scheduler_window_cost: float = 0.5,
  ):
    from experts.backends.llava import LlavaVideoQA
    from experts.backends.owlv2 import Owlv2Detector
    from experts.backends.univtg import UniVTGGrounder
    from experts.scheduler import DeviceScheduler

    t0 = time.perf_counter()
    self.wait_s = wait_s
    self.scheduler = scheduler = DeviceScheduler(
      workers=workers, order=scheduler_order, window_cost=scheduler_window_cost
    )
    self.detector = Owlv2Detector(
      rw.owlv2(p["owl"]),
      rw.word_tokenize(p["owl"]["vocab"], p["owl"]["text_length"]),
      buckets=p["owl_buckets"],
      nms_threshold=None,
      coalesce=True,
      coalesce_wait_s=wait_s,
      scheduler=scheduler,
      query_template="a photo of a {}",
    )
    univtg, clip_model = rw.univtg(p["univtg"], p["clip"])
    self.grounder = UniVTGGrounder(
      univtg,
      clip_model,
      rw.word_tokenize(p["clip"]["vocab"], p["clip"]["text_length"]),
      buckets=p["buckets"],
      image_buckets=p.get("image_buckets"),
      coalesce=True,
      coalesce_wait_s=wait_s,
      scheduler=scheduler,
      feature_cache_mb=feature_cache_mb,
    )
    model, tokenizer = rw.llava(p["llava"])
    self.llava = LlavaVideoQA(
      model,
      tokenizer,
      num_frames=p["llava_frames"],
      max_new_tokens=p["new_tokens"],
      choice_scoring="generate",
      prompt_format="official",
      summary_prompt="ours",
      action_prompt="official",
      buckets=p["llava_buckets"],
      coalesce=True,
      coalesce_wait_s=wait_s,
      scheduler=scheduler,
      feature_cache_mb=llava_cache_mb,
      prefix_cache_mb=llava_prefix_cache_mb,
    )
    self.build_s = time.perf_counter() - t0

  def coalescers(self) -> dict:
    """The coalescers in use now, by expert part ("owlv2/image", "llava/generate", ...)."""
    out = {"owlv2/image": self.detector.coalescer} if self.detector.coalescer else {}
    out.update({f"univtg/{k}": c for k, c in self.grounder.coalescers.items()})
    out.update({f"llava/{k}": c for k, c in self.llava.coalescers.items()})
    return out

  @contextlib.contextmanager
  def bypass(self):
    """Calls go straight to the bucketed functions (the same compiled programs)."""
    saved = (
      self.detector.coalescer,
      self.grounder.coalescers,
      self.llava.coalescers,
      self.llava.coalesce,
    )
    self.detector.coalescer, self.grounder.coalescers = None, {}
    self.llava.coalescers, self.llava.coalesce = {}, False
    try:
      yield
    finally:
      (
        self.detector.coalescer,
        self.grounder.coalescers,
        self.llava.coalescers,
        self.llava.coalesce,
      ) = saved

  @contextlib.contextmanager
  def per_expert(self):
    """Each coalescer replaced by one on the same function with its own worker thread."""
    from experts.coalesce import Coalescer

    def twin(c):
      return Coalescer(c.fn, wait_s=c.wait_s, output=c.output, name=c.name + "/own")

    saved = (self.detector.coalescer, self.grounder.coalescers, self.llava.coalescers)
    self.detector.coalescer = twin(saved[0])
    self.grounder.coalescers = {k: twin(c) for k, c in saved[1].items()}
    self.llava.coalescers = {k: twin(c) for k, c in saved[2].items()}
    twins = self.coalescers()
    try:
      yield twins
    finally:
      for c in twins.values():
        c.close()
      self.detector.coalescer, self.grounder.coalescers, self.llava.coalescers = saved

  @contextlib.contextmanager
  def without_prefix_cache(self, mode: str):
    """`mode` with LLaVA's KV prefix cache off (whole prompts prefilled)."""
    kept, self.llava.prefix_cache = self.llava.prefix_cache, None
    try:
      with self.mode(mode):
        yield
    finally:
      self.llava.prefix_cache = kept

  def mode(self, mode: str):
    """The context a mode runs in (benchmarks/cot_throughput.py's docstring)."""
    if mode.endswith("-noprefix"):
      return self.without_prefix_cache(mode.removesuffix("-noprefix"))
    if mode == "on":
      return contextlib.nullcontext()
    if mode == "per_expert":
      return self.per_expert()
    return self.bypass()

  def close(self):
    """Stops the backends' coalescers and the scheduler's workers."""
    for backend in (self.detector, self.grounder, self.llava):
      backend.close()
    self.scheduler.close()
