"""Cross-program batching of every model expert (UniVTG + CLIP features, LLaVA QA / actions /
generation, OWLv2): coalesced calls equal single calls, and a CoT job's records are the same
with coalescing on and off. Tiny random-weight models (experts/random_weights.py)."""

import concurrent.futures
import json
import threading

import numpy as np
import pytest

import experts
from experts import random_weights as rw

CLIP_TINY = dict(
  image_size=32,
  patch_size=16,
  vision_hidden=16,
  vision_layers=1,
  vision_heads=2,
  text_hidden=16,
  text_layers=1,
  text_heads=2,
  projection=12,
  vocab=99,
  text_length=16,
)
UNIVTG_TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dim_feedforward=48, clip_length=1.0)
LLAVA_TINY = rw.LLAVA_TINY
OWL_TINY = dict(
  CLIP_TINY, image_size=32, patch_size=8, vision_hidden=32, text_hidden=32, projection=32
)


@pytest.fixture(scope="module")
def models():
  return {
    "univtg": rw.univtg(UNIVTG_TINY, CLIP_TINY),
    "llava": rw.llava(LLAVA_TINY),
    "owlv2": rw.owlv2(OWL_TINY),
  }


def _clips(n, lengths, seed=0, fps=2.0):
  rng = np.random.default_rng(seed)
  return [
    experts.VideoClip(
      rng.integers(0, 255, (lengths[i % len(lengths)], 24, 32, 3), np.uint8),
      fps=fps,
      video_id=f"v{seed}-{i}",
    )
    for i in range(n)
  ]


def _together(fn, items, threads=8):
  """fn over items from `threads` threads released at once (so that calls overlap)."""
  barrier = threading.Barrier(min(threads, len(items)))

  def call(i):
    if i < threads:
      barrier.wait()
    return fn(items[i])

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(call, range(len(items))))


def test_univtg_coalesced_ground_equals_single_calls(models):
  from experts.backends.univtg import UniVTGGrounder

  model, clip_model = models["univtg"]
  tokenize = rw.word_tokenize(CLIP_TINY["vocab"], CLIP_TINY["text_length"])
  direct = UniVTGGrounder(model, clip_model, tokenize, buckets=(1, 4, 8))
  coal = UniVTGGrounder(
    model, clip_model, tokenize, buckets=(1, 4, 8), coalesce=True, coalesce_wait_s=0.05
  )
  jobs = [
    (c, ["a person opens the door", "someone sits"][i % 2])
    for i, c in enumerate(_clips(8, [6, 6, 9]))
  ]
  try:
    want = [direct.raw_outputs(c, q) for c, q in jobs]
    got = _together(lambda j: coal.raw_outputs(*j), jobs)
    for w, g in zip(want, got):
      for a, b in zip(w, g):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    windows = _together(lambda j: coal.ground(*j, top_k=2), jobs)
    assert windows == [direct.ground(c, q, top_k=2) for c, q in jobs]
    stats = {k: c.stats for k, c in coal.coalescers.items()}
    assert all(s.requests_per_batch > 1 for s in stats.values()), stats  # calls shared batches
  finally:
    coal.close()
  assert coal.coalescers == {}  # closed: later calls run directly
  assert coal.ground(*jobs[0], top_k=2) == direct.ground(*jobs[0], top_k=2)


def test_univtg_keeps_frame_features_across_queries_with_the_same_windows(models):
  from experts.backends.univtg import UniVTGGrounder

  model, clip_model = models["univtg"]
  tokenize = rw.word_tokenize(CLIP_TINY["vocab"], CLIP_TINY["text_length"])
  plain = UniVTGGrounder(model, clip_model, tokenize, buckets=(8,), feature_cache_mb=0)
  kept = UniVTGGrounder(
    model, clip_model, tokenize, buckets=(8,), coalesce=True, coalesce_wait_s=0.05
  )
  rng = np.random.default_rng(4)
  clips = [
    experts.VideoClip(rng.integers(0, 255, (n, 24, 32, 3), np.uint8), fps=2.0, video_id=f"v{i}")
    for i, n in enumerate([6, 9])
  ]
  # each clip grounded with 4 queries from 8 threads at once; a trim shares its frames
  jobs = [(c, q) for c in clips for q in ("a person opens the door", "someone sits", "x", "y")]
  jobs.append((clips[1].select(range(2, 7)), "someone sits"))
  try:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      got = list(pool.map(lambda j: kept.ground(*j, top_k=2), jobs))
    assert got == [plain.ground(c, q, top_k=2) for c, q in jobs]
    stats = kept.feature_cache.stats
    frames = sum(len(kept.features(c)[1]) for c in clips)
    assert stats.misses <= 6 + 9 and stats.hits + stats.shared > 0, stats
    assert stats.bytes == stats.entries * 12 * 4  # float32 rows of the projection size
    assert kept.coalescers["image"].stats.rows == stats.misses < frames * 4
  finally:
    kept.close()
  with pytest.raises(ValueError, match="feature_cache_mb must be >= 0"):
    UniVTGGrounder(model, clip_model, tokenize, feature_cache_mb=-1)


def test_llava_coalesced_answers_actions_and_generation_equal_single_calls(models):
  from experts.backends.llava import LlavaVideoQA

  model, tok = models["llava"]
  direct = LlavaVideoQA(model, tok, num_frames=2, max_new_tokens=3)
  coal = LlavaVideoQA(
    model, tok, num_frames=2, max_new_tokens=3, coalesce=True, coalesce_wait_s=0.05
  )
  clips = _clips(8, [3, 5])
  choices = ["a red cup", "the dog", "opens the box", "sits down"]
  try:
    want = [direct.score_choices(c, "what happens", choices) for c in clips]
    got = _together(lambda c: coal.score_choices(c, "what happens", choices), clips)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
    assert _together(lambda c: coal.recognize(c, "cup", choices), clips) == [
      direct.recognize(c, "cup", choices) for c in clips
    ]
    assert _together(lambda c: coal.generate_text(c, "describe it"), clips) == [
      direct.generate_text(c, "describe it") for c in clips
    ]
    stats = {k: c.stats for k, c in coal.coalescers.items()}
    assert set(stats) == {"features", "score", "generate3"}
    assert all(s.requests_per_batch > 1 for s in stats.values()), stats
    # the clips' features were computed once, in shared batches, and kept for the later calls
    assert coal.feature_cache.stats.misses == stats["features"].rows == len(clips)
  finally:
    coal.close()


def _fused_request_logprobs(graphdef, rows, state):
  """The scoring forward as it was before the video features were split off (one jitted
  program from pixels to log-likelihoods): the reference of the split path."""
  from flax import nnx

  from experts.backends.llava import _request_logprobs

  ids, mask, pixels, scored = rows
  feats = nnx.merge(graphdef, state).get_video_features(pixels)  # inside the same program
  return _request_logprobs(graphdef, (ids, mask, feats, scored), state)


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_llava_split_video_features_give_the_fused_forwards_exact_numbers(dtype):
  """Video features computed on their own (and kept) then handed to the language model give
  bit for bit the log-likelihoods of the one-program forward from pixels, and the same
  embeddings and greedy tokens as `generate(pixel_values_videos=...)`."""
  import functools

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from aotd_jax.models import llava_next_video as lnv
  from aotd_jax.models.generate import prompt_bucket
  from experts.backends.llava import LlavaVideoQA

  model, tok = rw.llava(dict(LLAVA_TINY, dtype=dtype), seed=3)
  qa = LlavaVideoQA(model, tok, num_frames=4, max_new_tokens=5)
  clip = _clips(1, [9], seed=7)[0]
  choices = ["a red cup", "the dog", "opens the box"]
  got = qa.score_choices(clip, "what happens", choices)
  again = qa.score_choices(clip, "what happens", choices)  # on the kept features
  assert qa.feature_cache.stats.hits == 1
  ids, pixels = qa.inputs(clip, "what happens")
  rows = [list(ids[0]) + tok(" " + c, add_special_tokens=False)["input_ids"] + [2] for c in choices]
  width = prompt_bucket(max(map(len, rows)))
  batch, attn = np.zeros((3, width), np.int32), np.zeros((3, width), np.int32)
  scored = np.zeros((3, width), np.float32)
  for i, r in enumerate(rows):
    batch[i, : len(r)], attn[i, : len(r)], scored[i, ids.shape[1] : len(r)] = r, 1, 1
  graphdef, state = nnx.split(model)
  fused = jax.jit(functools.partial(_fused_request_logprobs, graphdef))
  want = np.asarray(fused((batch[None], attn[None], pixels, scored[None]), state))[0]
  np.testing.assert_array_equal(got, want.astype(np.float64))
  np.testing.assert_array_equal(again, got)
  feats = qa.video_features(clip)
  args = (graphdef, state, jnp.asarray(ids), None)
  from_pixels = lnv.merge_jit(*args, jnp.asarray(pixels), image_sizes=None)
  from_feats = lnv.merge_jit(*args, None, jnp.asarray(feats), image_sizes=None)
  np.testing.assert_array_equal(np.asarray(from_feats), np.asarray(from_pixels))
  kw = dict(max_new_tokens=5, eos_token_id=-1)
  want_tokens = lnv.generate(model, ids, pixel_values_videos=pixels, **kw).sequences
  got_tokens = lnv.generate(model, ids, video_features=feats, **kw).sequences
  np.testing.assert_array_equal(np.asarray(got_tokens), np.asarray(want_tokens))
  want_text = tok.decode(np.asarray(want_tokens)[0].tolist(), skip_special_tokens=True).strip()
  assert qa.generate_text(clip, "what happens") == want_text
  with pytest.raises(ValueError, match="pixel_values_videos or video_features, not both"):
    lnv.generate(model, ids, pixel_values_videos=pixels, video_features=feats, **kw)
  with pytest.raises(ValueError, match=r"video_features must have shape \(clips, tokens, 32\)"):
    lnv.generate(model, ids, video_features=feats[0], **kw)
  n = feats.shape[1]
  with pytest.raises(ValueError, match=f"input_ids hold {n} video tokens .* give {n - 1} features"):
    lnv.generate(model, ids, video_features=feats[:, 1:], **kw)


def test_llava_keeps_video_features_between_prompts_and_equals_uncached_calls(models):
  """Scoring, generation, summaries and actions on the same frames compute the video features
  once (another clip object of the same video too; a blank for PMI once for all clips), with
  the same numbers as without the cache, coalesced or not; a batch of the language model mixes
  calls whose features were kept with calls whose features were just computed."""
  from experts.backends.llava import LlavaVideoQA
  from experts.feature_cache import FrameFeatureCache

  model, tok = models["llava"]
  # one backend (its compiled programs) in three set-ups: no cache, a cache, a cache + batching
  qa = LlavaVideoQA(model, tok, num_frames=2, max_new_tokens=3)
  assert LlavaVideoQA(model, tok, feature_cache_mb=0).feature_cache is None
  kept, qa.feature_cache = qa.feature_cache, None
  clips = _clips(4, [3, 5], seed=11)
  twin = experts.VideoClip(clips[1].frames.copy(), fps=2.0, video_id=clips[1].video_id)
  choices = ["a red cup", "the dog", "opens the box", "sits down"]

  def calls(qa, clip):
    return (
      qa.score_choices(clip, "what happens", choices).tolist(),
      qa.score_choices(clip, "what happens", choices, blank=True).tolist(),
      qa.generate_text(clip, "describe it"),
      qa.summarize(clip),
      qa.recognize(clip, "cup", choices),
    )

  want = [calls(qa, c) for c in clips + [twin]]
  qa.feature_cache = kept
  assert [calls(qa, c) for c in clips + [twin]] == want  # exact: the same features
  s = kept.stats
  assert (s.misses, s.hits, s.entries) == (4 + 1, 5 * 5 - 5, 5)  # 4 clips + one blank
  feats = qa.video_features(clips[0])
  assert feats.shape == (1, 2 * model.config.video_tokens_per_frame(), 32)
  assert s.bytes == 5 * feats.nbytes
  qa.coalesce, qa.coalesce_wait_s, qa.feature_cache = True, 0.05, FrameFeatureCache(1 << 20)
  try:
    first = _together(lambda c: qa.score_choices(c, "what happens", choices), clips[:2])
    got = _together(lambda c: calls(qa, c), clips + [twin])  # 2 kept, 2 new in a batch
    for g, w in zip(got, want):
      np.testing.assert_allclose(g[0], w[0], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(g[1], w[1], rtol=1e-5, atol=1e-5)
      assert g[2:] == w[2:]
    np.testing.assert_allclose(first, [w[0] for w in want[:2]], rtol=1e-5, atol=1e-5)
    assert qa.feature_cache.stats.misses == qa.coalescers["features"].stats.rows == 5
  finally:
    qa.close()
  with pytest.raises(ValueError, match="feature_cache_mb must be >= 0"):
    LlavaVideoQA(model, tok, feature_cache_mb=-1)


def test_llava_feature_key_separates_everything_the_features_depend_on(models):
  """Each thing that changes the video features changes the key: a cache filled by one call
  never serves a call that differs in that one thing (the model, the video, the frames
  sampled, the frame size, the frame count, the normalisation, a blank video)."""
  from experts.backends.llava import LlavaVideoQA

  model, tok = models["llava"]
  other_model, _ = rw.llava(LLAVA_TINY, seed=5)
  rng = np.random.default_rng(12)
  frames = rng.integers(0, 255, (6, 24, 32, 3), np.uint8)
  base = experts.VideoClip(frames, fps=2.0, video_id="v")
  variants = {  # field -> (the clip, the backend's settings) that differ from the first call's
    "video": lambda: (experts.VideoClip(frames[::-1].copy(), fps=2.0, video_id="w"), {}),
    "frames": lambda: (base.select([0, 1, 2]), {}),
    "frame_size": lambda: (
      experts.VideoClip(rng.integers(0, 255, (6, 30, 40, 3), np.uint8), fps=2.0, video_id="v"),
      {},
    ),
    "num_frames": lambda: (base, {"num_frames": 3}),
    "normalization": lambda: (base, {"normalization": ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))}),
    "model": lambda: (base, {"model": other_model, "name": "llava-other"}),
    "blank": lambda: (base, {"blank": True}),
  }
  qa = LlavaVideoQA(model, tok, num_frames=2, max_new_tokens=3)
  cache, choices = qa.feature_cache, ["a cup", "a dog"]
  qa.score_choices(base, "what happens", choices)
  for i, (field, make) in enumerate(variants.items()):
    clip, change = make()
    blank, m = change.pop("blank", False), change.pop("model", model)
    settings = {"num_frames": 2, "max_new_tokens": 3, **change}
    shared = LlavaVideoQA(m, tok, **settings) if change else qa
    shared.feature_cache = cache  # filled by the calls before, which differ in `field`
    got = shared.score_choices(clip, "what happens", choices, blank=blank)
    shared.feature_cache = None
    want = shared.score_choices(clip, "what happens", choices, blank=blank)
    shared.feature_cache = cache
    np.testing.assert_array_equal(got, want, err_msg=field)
    assert (cache.stats.misses, cache.stats.hits) == (i + 2, 0), field


def test_llava_generation_splits_the_model_once(models, monkeypatch):
  """The expert keeps `generation_splits`: no `nnx.split` per generation (~8 ms of Python
  each at the cpu benchmark's size, paid per call without batching, per batch with it)."""
  from flax import nnx

  from experts.backends.llava import LlavaVideoQA

  model, tok = models["llava"]
  qa = LlavaVideoQA(model, tok, num_frames=2, max_new_tokens=2)
  clip = _clips(1, [3])[0]
  first = qa.generate_text(clip, "describe it")
  calls = []
  split = nnx.split
  monkeypatch.setattr(nnx, "split", lambda *a, **k: calls.append(1) or split(*a, **k))
  assert [qa.generate_text(clip, "describe it") for _ in range(3)] == [first] * 3
  assert calls == []


def test_experts_pass_their_weights_flattened_once(models):
  """Every model expert hands its jitted parts a `generate.FlatState` (its nnx.State flattened
  once, not by jit at every call), on which a jitted part gives bit for bit what it gives on
  the nnx.State; `flat_state` leaves a FlatState as it is."""
  import functools

  import jax
  from flax import nnx

  from aotd_jax.models.generate import FlatState, flat_state
  from experts.backends.llava import LlavaVideoQA, _video_features
  from experts.backends.owlv2 import Owlv2Detector
  from experts.backends.univtg import UniVTGGrounder

  model, tok = models["llava"]
  qa = LlavaVideoQA(model, tok, num_frames=2)
  (graphdef, state), (_, language) = qa._splits(language=True)
  assert isinstance(state, FlatState) and isinstance(language, FlatState)
  assert flat_state(state) is state
  pixels = qa.pixels(_clips(1, [3])[0], np.array([0, 2]))
  features = jax.jit(functools.partial(_video_features, graphdef))
  want = np.asarray(features(pixels, nnx.split(model)[1]))
  np.testing.assert_array_equal(np.asarray(features(pixels, state)), want)
  owl = Owlv2Detector(models["owlv2"], rw.word_tokenize(OWL_TINY["vocab"], 16), buckets=(1, 4))
  frames = np.random.default_rng(0).integers(0, 255, (1, 24, 32, 3), np.uint8)
  got = owl.image_fn(frames, owl._state, to_host=True)
  plain = owl.image_fn(frames, nnx.split(models["owlv2"])[1], to_host=True)
  for a, b in zip(got, plain):
    np.testing.assert_array_equal(a, b)
  u, c = models["univtg"]
  grounder = UniVTGGrounder(u, c, rw.word_tokenize(CLIP_TINY["vocab"], 16), buckets=(1, 4))
  states = (owl._state, grounder._clip_state, grounder._univtg_state, grounder._image_state)
  assert all(isinstance(s, FlatState) for s in states)


GOLD = """def execute_command(video_clip, query, possible_answers):
    window = Filter_frames_with_act(video_clip, query)
    kept = Filter_frames_with_obj(video_clip, "cup")
    seen = exist(video_clip, "book")
    acts = Query_Actions(window if window.num_frames else video_clip, "cup", possible_answers)
    about = Video_summary(video_clip, query)
    info = {"window": [window.start_frame, window.end_frame], "frames with a cup": kept.num_frames,
            "book": seen, "actions": acts, "summary": about}
    return select_answer(query, possible_answers, info)
"""


@pytest.mark.slow  # five jobs through the sandbox, every expert compiled 3 times: ~80-100 s
def test_cot_job_records_are_the_same_with_coalescing_on_and_off(models):
  """Eight programs in flight, every model expert bound: the records (programs' traces, answers,
  rationales, verdicts) do not depend on whether concurrent calls were batched, by each
  expert's own coalescer or by one device scheduler that knows the programs in flight (one
  batch at a time, or two workers), nor on UniVTG's frame-feature cache and LLaVA's
  video-feature cache (off in the unbatched reference, on without batching in `cached`) and KV
  prefix cache (on in the scheduler modes); two questions per video, so the second grounds
  another query and summarises with another query on kept features."""
  from aotd_jax.agent import job
  from aotd_jax.agent.sandbox import Sandbox
  from aotd_jax.data import annotations
  from experts.backends import oracle
  from experts.backends.llava import LlavaVideoQA
  from experts.backends.owlv2 import Owlv2Detector
  from experts.backends.univtg import UniVTGGrounder
  from experts.scheduler import DeviceScheduler

  choices = ["Took the cup.", "Put down the cup.", "Washed the cup.", "Threw the cup."]
  questions = []
  for i in range(8):
    q = annotations.VideoQA(
      qid=f"q{i}",
      video_id=f"v{i // 2}",
      question=["What did the person do?", "Who opened the door?"][i % 2],
      choices=choices,
      answer=choices[i % 4],
      answer_index=i % 4,
    )
    q.meta["question_program"] = GOLD
    questions.append(q)
  clips = {f"v{i}": c for i, c in enumerate(_clips(4, [4, 7, 5], seed=3))}

  def make_job(mode, sandbox):
    coalesce = mode not in ("off", "cached")
    cache_mb = 0 if mode == "off" else 64
    sched = DeviceScheduler(workers=2 if mode == "scheduler2" else 1) if "sched" in mode else None
    # the scheduler's window never fires (a batch only when all programs wait, or one is full)
    wait = 600.0 if sched else 0.002
    u, c = models["univtg"]
    m, tok = models["llava"]
    owl_tok = rw.word_tokenize(OWL_TINY["vocab"], OWL_TINY["text_length"])
    qa = LlavaVideoQA(
      m,
      tok,
      num_frames=2,
      max_new_tokens=3,
      coalesce=coalesce,
      coalesce_wait_s=wait,
      scheduler=sched,
      feature_cache_mb=cache_mb,
      # the scheduler modes' language-model calls run after each clip's kept KV prefix (its
      # features are then computed once per prefix: the feature cache sees no second call)
      prefix_cache_mb=cache_mb if sched else 0,
    )
    box = experts.Toolbox(
      detector=Owlv2Detector(
        models["owlv2"],
        owl_tok,
        buckets=(1, 4, 8),
        nms_threshold=None,
        coalesce=coalesce,
        coalesce_wait_s=wait,
        scheduler=sched,
      ),
      grounder=UniVTGGrounder(
        u,
        c,
        rw.word_tokenize(CLIP_TINY["vocab"], 16),
        buckets=(1, 4, 8),
        coalesce=coalesce,
        coalesce_wait_s=wait,
        scheduler=sched,
        feature_cache_mb=cache_mb,
      ),
      action_recognizer=qa,
      video_qa=qa,
      selector=oracle.KeywordSelector(),
      detect_threshold=0.5,
      scheduler=sched,
    )
    return box, job.CotJob(
      tools=box.tools(),
      make_args=lambda q: {
        "video_clip": clips[q.video_id],
        "query": q.question,
        "possible_answers": list(q.choices),
      },
      run_program=sandbox.run,  # a worker per program: none waits for one while in flight
      program_source="gold",
      num_threads=8,
      program_scope=sched.program if sched is not None else None,
    )

  records = {}
  for mode in ("off", "cached", "per_expert", "scheduler", "scheduler2"):
    with Sandbox(num_workers=8, memory_mb=512) as sandbox:
      box, cot_job = make_job(mode, sandbox)
      records[mode] = [
        {k: v for k, v in r.items() if k != "timing"} for r in cot_job.process(questions)
      ]
    if mode != "off":
      llava_cache = box.video_qa.prefix_cache or box.video_qa.feature_cache
      for cache in (box.grounder.feature_cache, llava_cache):
        assert cache.stats.hits + cache.stats.shared > 0, (mode, cache.stats)
    if mode not in ("off", "cached"):
      batched = [
        box.detector.coalescer,
        *box.grounder.coalescers.values(),
        *box.video_qa.coalescers.values(),
      ]
      assert (
        max(c.stats.requests_per_batch for c in batched) > 1
      )  # programs' calls did share batches
      for closable in (box.detector, box.grounder, box.video_qa):
        closable.close()
    if mode.startswith("scheduler"):  # its batches were released when all were blocked
      assert box.scheduler.stats.quiescent > 0 and box.scheduler.stats.window == 0, (
        box.scheduler.stats
      )
      assert box.scheduler.programs == 0
      box.scheduler.close()
  assert all(r["verdicts"]["executed"] for r in records["off"]), records["off"][0]["verdicts"]
  want = json.dumps(records["off"], sort_keys=True)
  assert json.dumps(records["cached"], sort_keys=True) == want
  assert json.dumps(records["per_expert"], sort_keys=True) == want
  assert json.dumps(records["scheduler"], sort_keys=True) == want
  assert json.dumps(records["scheduler2"], sort_keys=True) == want


def test_registry_scheduler_workers_setting():
  import jax

  from experts import registry

  assert registry.scheduler_workers(3) == 3
  assert registry.scheduler_workers(0) == (2 if jax.default_backend() == "cpu" else 1)
  with pytest.raises(ValueError, match=r"scheduler_workers must be >= 0 \(0: auto\), got -1"):
    registry.scheduler_workers(-1)


def test_registry_coalescing_switch_and_defaults():
  from experts import registry

  c = experts.default_config()
  assert registry.coalescing(c, "detector") == (False, 0.002)
  c.coalesce = True
  c.grounder.coalesce = False  # a role's own key wins
  assert registry.coalescing(c, "detector") == (True, 0.002)
  assert registry.coalescing(c, "grounder") == (False, 0.002)
  c.coalesce_wait_s = -1.0
  with pytest.raises(ValueError, match=r"coalesce_wait_s must be >= 0 \(role video_qa\)"):
    registry.coalescing(c, "video_qa")
