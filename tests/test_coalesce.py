"""Dynamic batching across threads (experts/coalesce.py) and the OWLv2 detector coalesced."""

import concurrent.futures
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experts.batching import BucketedJit, RowParts, bucket_size, count_xla_compilations, pad_rows
from experts.coalesce import Coalescer

BUCKETS = (1, 2, 4, 8)


def _fn():
  w = jnp.arange(12.0).reshape(3, 4) / 10
  return BucketedJit(lambda x, w: {"y": jnp.tanh(x @ w), "s": x.sum(-1)}, buckets=BUCKETS), w


def _want(x, w):
  return {"y": np.tanh(x @ np.asarray(w)), "s": x.sum(-1)}


def _from_threads(co, inputs, w, threads=8):
  """`co(x, w)` for every input from `threads` threads, the first `threads` calls at once."""
  barrier = threading.Barrier(threads)

  def call(i):
    if i < threads:
      barrier.wait()
    return co(inputs[i], w)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(call, range(len(inputs))))


def _hammer(co, w, sizes, threads=12):
  rng = np.random.default_rng(0)
  inputs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
  return inputs, _from_threads(co, inputs, w, threads)


def test_host_mode_many_threads_random_sizes_equal_per_request_calls():
  fn, w = _fn()
  sizes = np.random.default_rng(1).integers(1, 20, 60).tolist()  # some exceed max_rows=8
  with Coalescer(fn, wait_s=0.005) as co:
    inputs, outs = _hammer(co, w, sizes)
  for x, out in zip(inputs, outs):
    want = _want(x, w)
    assert out["y"].shape == (len(x), 4) and isinstance(out["y"], np.ndarray)
    np.testing.assert_allclose(out["y"], want["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["s"], want["s"], rtol=1e-5, atol=1e-6)
  assert co.stats.requests == len(sizes) and co.stats.rows == sum(sizes)
  assert co.stats.batches < len(sizes)  # requests did share batches
  assert fn.compiles <= len(BUCKETS)


def test_device_mode_returns_bucket_padded_rows_like_run_chunk():
  fn, w = _fn()
  sizes = np.random.default_rng(2).integers(1, 9, 48).tolist()
  with Coalescer(fn, wait_s=0.005, output="device") as co:
    inputs, outs = _hammer(co, w, sizes)
  for x, out in zip(inputs, outs):
    size = bucket_size(len(x), BUCKETS)
    assert isinstance(out["y"], jax.Array) and out["y"].shape == (size, 4)
    want = _want(pad_rows(x, size), w)
    np.testing.assert_allclose(np.asarray(out["y"]), want["y"], rtol=1e-5, atol=1e-6)
  assert co.stats.requests_per_batch > 1
  assert fn.compiles <= len(BUCKETS)
  with pytest.raises(ValueError, match="exceed the largest bucket"):
    co.submit(np.zeros((9, 3), np.float32), w)


def test_device_array_rows_stay_on_the_device_and_batch_with_numpy_rows(monkeypatch):
  """Rows holding device arrays (a kept KV cache) next to numpy ones: requests share batches,
  the device leaves are concatenated on the device (never copied through the host) and each
  request gets its own rows' results."""
  from experts import coalesce

  fn = BucketedJit(lambda rows, w: rows[0] @ w + rows[1].sum(-1, keepdims=True), buckets=BUCKETS)
  w = jnp.arange(12.0).reshape(3, 4) / 10
  host_copies = []
  real_concatenate = np.concatenate

  def watched(parts, *a, **k):
    host_copies.extend(p for p in parts if isinstance(p, jax.Array))
    return real_concatenate(parts, *a, **k)

  monkeypatch.setattr(coalesce.np, "concatenate", watched)
  rng = np.random.default_rng(5)
  inputs = [
    (rng.normal(size=(1, 3)).astype(np.float32), jnp.asarray(rng.normal(size=(1, 5)), jnp.float32))
    for _ in range(24)
  ]
  with Coalescer(fn, wait_s=0.02) as co:
    outs = _from_threads(co, inputs, w)
  for (x, kept), out in zip(inputs, outs):
    want = x @ np.asarray(w) + np.asarray(kept).sum(-1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  assert co.stats.requests_per_batch > 1 and not host_copies
  assert isinstance(co.samples()[0][0][1], jax.Array)  # queued as it came, not via numpy


def test_device_rows_are_joined_inside_the_jitted_call():
  """Requests' device rows (kept KV caches) reach the jitted function as the arrays they came in
  (`RowParts`; padding repeats a reference to the last row, no copy) and are joined inside it:
  coalesced from many threads, no XLA program runs outside the bucketed function (no eager
  concatenation or padding), and every request gets its own rows' results."""
  fn = BucketedJit(lambda rows, w: jnp.tanh(rows @ w), buckets=(1, 4))
  w = jnp.arange(10.0).reshape(5, 2) / 10
  rng = np.random.default_rng(7)
  inputs = [jnp.asarray(rng.normal(size=(1, 5)), jnp.float32) for _ in range(23)]
  padded = pad_rows(RowParts(inputs[:3]), 4)
  assert isinstance(padded, RowParts) and padded.shape == (4, 5)
  assert all(a is b for a, b in zip(padded.parts, (*inputs[:3], inputs[2])))
  with count_xla_compilations() as compiled:
    with Coalescer(fn, wait_s=0.02) as co:
      outs = _from_threads(co, inputs, w)
  assert co.stats.requests_per_batch > 1
  assert compiled[0] == fn.compiles <= 2  # one per bucket, nothing eager
  for x, out in zip(inputs, outs):
    np.testing.assert_allclose(out, np.tanh(np.asarray(x) @ np.asarray(w)), rtol=1e-6, atol=1e-6)


def test_row_parts_slices_and_refuses_mixed_parts():
  """`RowParts` row slices keep whole parts and cut only a part a bound falls in; parts of
  other trailing shapes or dtypes, and strided slices, are refused by name."""
  a, b = jnp.arange(6.0).reshape(2, 3), jnp.arange(3.0).reshape(1, 3) + 10
  rows = RowParts([a, b])
  assert rows.shape == (3, 3) and rows.ndim == 2
  cut = rows[1:3]
  assert cut.parts[1] is b and np.array_equal(np.asarray(cut.join()), np.asarray(rows.join())[1:])
  assert rows[0:2].parts == (a,)
  with pytest.raises(ValueError, match="RowParts: need parts of one trailing shape"):
    RowParts([a, jnp.zeros((1, 4))])
  with pytest.raises(ValueError, match="RowParts: need parts of one trailing shape"):
    RowParts([a, b.astype(jnp.int32)])
  with pytest.raises(ValueError, match="only contiguous row slices"):
    rows[::2]


def test_only_same_shape_and_args_share_a_batch():
  fn, w = _fn()
  w2 = w * 2
  with Coalescer(fn, wait_s=0.02) as co:
    futs = [
      co.submit(np.ones((2, 3), np.float32), w),
      co.submit(np.ones((2, 3), np.float32), w2),
      co.submit(np.ones((1, 3), np.float32), w),
    ]
    outs = [f.result() for f in futs]
  np.testing.assert_allclose(outs[1]["y"], _want(np.ones((2, 3)), w2)["y"], rtol=1e-5)
  assert co.stats.batches == 2  # (w: 2 + 1 rows) and (w2)


def test_error_reaches_every_caller_in_the_batch_and_the_worker_survives():
  def boom(x):
    if x.shape[0] >= 4:
      raise ValueError("boom at trace")
    return x * 2

  fn = BucketedJit(boom, buckets=(1, 2, 4))
  with Coalescer(fn, wait_s=0.05) as co:
    futs = [co.submit(np.ones((1, 3), np.float32)) for _ in range(3)]  # 3 rows -> bucket 4
    for f in futs:
      with pytest.raises(ValueError, match="boom at trace"):
        f.result(timeout=10)
    assert co.stats.errors == 1
    np.testing.assert_allclose(co(np.ones((1, 3), np.float32)), 2.0)  # still serving


def test_close_runs_queued_requests_then_refuses_new_ones():
  fn, w = _fn()
  co = Coalescer(fn, wait_s=1.0)  # a long window: close must not wait for it
  futs = [co.submit(np.ones((1, 3), np.float32), w) for _ in range(3)]
  co.close(timeout=10)
  assert not co._thread.is_alive()
  assert all(f.done() and f.exception() is None for f in futs)
  with pytest.raises(RuntimeError, match="closed"):
    co.submit(np.ones((1, 3), np.float32), w)
  co.close()  # idempotent


def test_oversized_request_runs_alone_without_deadlock():
  fn, w = _fn()
  with Coalescer(fn, wait_s=0.001, max_rows=4) as co:
    x = np.random.default_rng(3).normal(size=(21, 3)).astype(np.float32)
    out = co.submit(x, w).result(timeout=30)
  np.testing.assert_allclose(out["y"], _want(x, w)["y"], rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused():
  fn, _ = _fn()
  with pytest.raises(TypeError, match="BucketedJit"):
    Coalescer(lambda x: x)
  with pytest.raises(ValueError, match="output="):
    Coalescer(fn, output="gpu")
  with pytest.raises(ValueError, match="max_rows"):
    Coalescer(fn, max_rows=0)


# -- the OWLv2 detector ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def owl_model():
  from flax import nnx
  from aotd_jax.projects.toyworld.vision_experts import detector_config
  from aotd_jax.models.owlv2 import Owlv2ForObjectDetection

  cfg = detector_config(
    99,
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    text_hidden=32,
    layers=1,
    heads=2,
    projection_dim=32,
  )
  return Owlv2ForObjectDetection(cfg, rngs=nnx.Rngs(0))


def _tokenize(texts):
  ids = np.zeros((len(texts), 16), np.int32)
  mask = np.zeros_like(ids)
  for i, t in enumerate(texts):
    toks = [97] + [3 + sum(map(ord, w)) % 90 for w in t.split()] + [98]
    ids[i, : len(toks)], mask[i, : len(toks)] = toks, 1
  return ids, mask


def test_detector_coalesced_matches_direct_under_threads(owl_model):
  from experts.backends.owlv2 import Owlv2Detector
  from experts.clip import VideoClip

  rng = np.random.default_rng(0)
  clips = [
    VideoClip(
      rng.integers(0, 255, (int(rng.integers(1, 11)), 24, 32, 3), np.uint8), video_id=f"v{i}"
    )
    for i in range(16)
  ]
  jobs = [(c, [["cup"], ["table"]][i % 2]) for i, c in enumerate(clips)]
  direct = Owlv2Detector(owl_model, _tokenize, buckets=(2, 8), nms_threshold=None)
  coal = Owlv2Detector(
    owl_model, _tokenize, buckets=(2, 8), nms_threshold=None, coalesce=True, coalesce_wait_s=0.01
  )
  try:
    want = [direct.raw_outputs(c, q) for c, q in jobs]
    threshold = float(
      np.quantile(1 / (1 + np.exp(-np.concatenate([w[0].ravel() for w in want]))), 0.98)
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      got = list(pool.map(lambda j: coal.raw_outputs(*j), jobs))
      boxes = list(pool.map(lambda j: coal.detect(*j, threshold=threshold), jobs))
    assert coal.coalescer.stats.requests_per_batch > 1  # calls did share batches
    assert coal.image_fn.compiles <= 2
    for (lw, bw), (lg, bg) in zip(want, got):
      np.testing.assert_allclose(lg, lw, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(bg, bw, rtol=1e-4, atol=1e-5)
    n_boxes = 0
    for (c, q), b in zip(jobs, boxes):
      ref = direct.detect(c, q, threshold=threshold)
      for fg, fw in zip(b, ref):  # the same boxes per frame (same order), allclose scores
        assert [(x.frame_id, x.label) for x in fg] == [(x.frame_id, x.label) for x in fw]
        np.testing.assert_allclose([x.score for x in fg], [x.score for x in fw], rtol=1e-4)
        np.testing.assert_allclose([x.box for x in fg], [x.box for x in fw], atol=1e-2)
      n_boxes += sum(len(f) for f in b)
    assert n_boxes > 0  # the comparison saw boxes
    assert coal.feature_hits > 0  # detect reused raw_outputs' features from the LRU
  finally:
    coal.close()


def test_detector_feature_lru_is_thread_safe_and_computes_a_chunk_once(owl_model):
  from experts.backends.owlv2 import Owlv2Detector
  from experts.clip import VideoClip

  det = Owlv2Detector(owl_model, _tokenize, buckets=(8,), feature_cache_mb=1)
  clip = VideoClip(
    np.random.default_rng(1).integers(0, 255, (6, 24, 32, 3), np.uint8), video_id="same"
  )
  ref = det.raw_outputs(clip, ["cup"])
  det.clear_features()
  det.image_fn.calls = 0
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    outs = list(pool.map(lambda _: det.raw_outputs(clip, ["cup"]), range(16)))
  for lg, bx in outs:
    np.testing.assert_allclose(lg, ref[0], rtol=1e-5, atol=1e-6)
  assert det.image_fn.calls == 1  # one thread computed it, the others waited or hit the LRU


def test_registry_binds_and_describes_coalescing():
  import experts
  from aotd_jax.projects.toyworld.oracle import PLUGIN
  from experts import registry

  c = experts.default_config()
  assert c.coalesce is False
  c.detector = dict(c.detector, kind="owlv2", path="/nonexistent-owl")
  c.grounder = dict(c.grounder, kind="univtg", path="/nonexistent-univtg", clip_path="/c")
  assert registry.batching(c) == {"detector": {"coalesce": False}, "grounder": {"coalesce": False}}
  roles = registry.describe(c, plugins=[PLUGIN])
  c.coalesce = True
  c.grounder.coalesce = False
  d = registry.batching(c)
  assert d["detector"] == {"coalesce": True, "coalesce_wait_s": 0.002}
  assert d["grounder"] == {"coalesce": False}
  assert registry.describe(c, plugins=[PLUGIN]) == roles  # batching is not a role's identity


@pytest.mark.parametrize("name", ["star", "nextqa"])
def test_real_cot_configs_coalesce_every_expert_by_default(name):
  import importlib

  mod = importlib.import_module(f"configs.cot.{name}")
  arg = "ann=a.json,videos=v,owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://x/v1" + (
    ",map=m.json" if name == "nextqa" else ""
  )
  c = mod.get_config(arg)
  from experts import registry

  for role in ("detector", "grounder", "action_recognizer", "video_qa"):
    assert registry.coalescing(c.experts, role)[0] is True
  c.experts.coalesce = False  # --config.experts.coalesce=False
  assert registry.coalescing(c.experts, "video_qa")[0] is False


def test_toy_cot_config_coalesces_model_experts_by_default():
  from configs.toyworld import cot
  from experts import registry

  c = cot.get_config()
  assert c.experts.coalesce is True
  c.experts.detector.kind = "owlv2"
  assert registry.coalescing(c.experts, "detector") == (True, 0.002)


def test_warm_compiles_every_bucket_of_the_shapes_seen():
  fn, w = _fn()
  with Coalescer(fn, wait_s=0.0) as co:
    assert co.warm() == 0  # nothing seen yet
    co(np.ones((3, 3), np.float32), w)
    assert co.warm() == len(BUCKETS)
    assert fn.compiles == len(BUCKETS)
    compiled = fn.compiles
    for n in (1, 2, 5, 8, 11):
      co(np.ones((n, 3), np.float32), w)
    assert fn.compiles == compiled  # no batch size compiles again


def test_tuple_rows_batch_together_and_mismatched_rows_are_named():
  fn = BucketedJit(lambda rows, w: rows[0] @ w + rows[1][:, None], buckets=BUCKETS)
  w = jnp.ones((3, 2))
  rng = np.random.default_rng(4)
  inputs = [
    (rng.normal(size=(n, 3)).astype(np.float32), np.arange(n, dtype=np.float32))
    for n in (1, 3, 2, 5)
  ]
  with Coalescer(fn, wait_s=0.05) as co:
    barrier = threading.Barrier(len(inputs))

    def call(rows):
      barrier.wait()
      return co(rows, w)

    with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
      outs = list(pool.map(call, inputs))
    for (x, b), out in zip(inputs, outs):
      np.testing.assert_allclose(out, x @ np.ones((3, 2)) + b[:, None], rtol=1e-5)
    assert co.stats.batches < len(inputs)
    with pytest.raises(
      ValueError,
      match=r"rows must share a leading axis, got shapes "
      r"\[\(2, 3\), \(3,\)\]",
    ):
      co.submit((np.zeros((2, 3), np.float32), np.zeros(3, np.float32)), w)
    with pytest.raises(ValueError, match="rows need a leading axis"):
      co.submit(np.float32(1.0), w)
