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
    assert set(stats) == {"score", "generate3"}
    assert all(s.requests_per_batch > 1 for s in stats.values()), stats
  finally:
    coal.close()


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


GOLD = """def execute_command(video_clip, query, possible_answers):
    window = Filter_frames_with_act(video_clip, query)
    kept = Filter_frames_with_obj(video_clip, "cup")
    seen = exist(video_clip, "book")
    acts = Query_Actions(window if window.num_frames else video_clip, "cup", possible_answers)
    info = {"window": [window.start_frame, window.end_frame], "frames with a cup": kept.num_frames,
            "book": seen, "actions": acts}
    return select_answer(query, possible_answers, info)
"""


@pytest.mark.slow  # four jobs through the sandbox, every expert compiled 3 times: ~60-80 s
def test_cot_job_records_are_the_same_with_coalescing_on_and_off(models):
  """Eight programs in flight, every model expert bound: the records (programs' traces, answers,
  rationales, verdicts) do not depend on whether concurrent calls were batched, by each
  expert's own coalescer or by one device scheduler that knows the programs in flight (one
  batch at a time, or two workers), nor on
  UniVTG's frame-feature cache (off in the unbatched reference; two questions per video, so
  the second grounds another query on kept features)."""
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
    coalesce = mode != "off"
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
        feature_cache_mb=64 if coalesce else 0,
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
  for mode in ("off", "per_expert", "scheduler", "scheduler2"):
    with Sandbox(num_workers=8, memory_mb=512) as sandbox:
      box, cot_job = make_job(mode, sandbox)
      records[mode] = [
        {k: v for k, v in r.items() if k != "timing"} for r in cot_job.process(questions)
      ]
    if mode != "off":
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
      assert box.grounder.feature_cache.stats.hits + box.grounder.feature_cache.stats.shared > 0
    if mode.startswith("scheduler"):  # its batches were released when all were blocked
      assert box.scheduler.stats.quiescent > 0 and box.scheduler.stats.window == 0, (
        box.scheduler.stats
      )
      assert box.scheduler.programs == 0
      box.scheduler.close()
  assert all(r["verdicts"]["executed"] for r in records["off"]), records["off"][0]["verdicts"]
  want = json.dumps(records["off"], sort_keys=True)
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
