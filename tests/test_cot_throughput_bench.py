"""The CoT-throughput benchmark: its accounting helpers (per-thread CPU, decode weight bytes), its
flags, and its time budget and deadline (the experts and `run` faked in `phases`, where the
phases look them up, or the real tiny preset in a process of its own)."""

import json
import threading
import time

import pytest

from benchmarks import cot_throughput as ct
from benchmarks.cot_bench import accounting, phases


def test_cpu_by_thread_sums_deltas_per_kind():
  before = {1: ("device-scheduler/0", 1.0), 2: ("device-scheduler/1", 2.0), 3: ("tf_XLAEigen", 5.0)}
  after = {
    1: ("device-scheduler/0", 1.5),
    2: ("device-scheduler/1", 2.5),
    3: ("tf_XLAEigen", 6.0),
    4: ("python", 0.25),  # started during the run: all of it counts
    5: ("idle", 0.0),
  }
  out = accounting.cpu_by_thread(before, after, programs_s=2.0, questions=10)
  assert out == {
    "programs": 200.0,
    "device-scheduler": 100.0,
    "tf_XLAEigen": 100.0,
    "python": 25.0,
    "process": 425.0,
  }


def test_cpu_by_thread_counts_a_reused_thread_id_whole():
  out = accounting.cpu_by_thread({7: ("old", 3.0)}, {7: ("new", 0.5)}, 0.0, 1)
  assert out["new"] == 500.0 and "old" not in out


def test_thread_cpu_s_sees_this_thread_work():
  tid = threading.get_native_id()
  first = accounting.thread_cpu_s()
  if not first:
    pytest.skip("no /proc/self/task on this platform")
  assert first[tid][0] == threading.current_thread().name
  t0 = time.thread_time()
  while time.thread_time() - t0 < 0.05:  # 50 ms of CPU: 5 clock ticks
    pass
  assert accounting.thread_cpu_s()[tid][1] >= first[tid][1] + 0.02


def test_decode_weight_mb_counts_all_but_the_input_embeddings():
  from experts import random_weights as rw

  size = dict(rw.LLAVA_TINY, hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, vocab=100)
  model, _ = rw.llava(size)
  head = 32 // 4
  per_layer = (
    32 * 32 * 2  # q, o
    + 32 * 2 * head * 2  # k, v (2 kv heads)
    + 3 * 32 * 64  # gate, up, down
    + 2 * 32  # the two RMSNorm scales
  )
  floats = 2 * per_layer + 32 + 32 * 100  # final norm, LM head
  assert accounting.decode_weight_mb(model) == pytest.approx(floats * 4 / 2**20)


def test_llava_size_flag_names_a_bad_key():
  with pytest.raises(SystemExit, match="--llava_size: 'width=3'"):
    ct.main(["--preset=tiny", "--llava_size=width=3"])


def test_new_tokens_flag_refuses_a_negative_length():
  with pytest.raises(SystemExit, match="--new_tokens must be >= 1"):
    ct.main(["--preset=tiny", "--new_tokens=-3"])


@pytest.mark.parametrize("value", ["1,four", "0,4"])
def test_llava_buckets_flag_names_a_bad_value(value):
  with pytest.raises(SystemExit, match=f"--llava_buckets='{value}'"):
    ct.main(["--preset=tiny", f"--llava_buckets={value}"])


def test_the_scaled_preset_batches_llava_as_the_backend_default():
  # the scaled preset's generation batches pad as the backend's default buckets do (the CoT
  # configs cap them for LLaVA-7B's memory on a GPU, which does not bind at this size)
  import inspect

  from experts.backends.llava import LlavaVideoQA

  default = inspect.signature(LlavaVideoQA).parameters["buckets"].default
  assert ct.PRESETS["scaled"]["llava_buckets"] == tuple(default)
  assert ct.PRESETS["scaled"]["new_tokens"] == 100  # the CoT configs' max_new_tokens


class _FakeExperts:
  """Stands in for the built experts: the budget's control flow without models."""

  def __init__(self, *args):
    import contextlib

    import numpy as np

    self.build_s, self.current = 0.0, None
    self.detector = type("D", (), {"raw_outputs": lambda self, clip, q: [np.zeros(8)]})()
    self.llava = type("L", (), {"model": None})()
    self._ctx = contextlib

  def mode(self, mode):
    self.current = mode
    return self._ctx.nullcontext()

  def coalescers(self):
    return {}

  def close(self):
    pass


def _fake_run(walls):
  """`run` that returns at once, reporting `walls[mode]` seconds per question."""

  def run(ex, questions, threads, threshold):
    return {
      "wall_s": walls[ex.current] * len(questions),
      "cpu_s": 0.0,
      "cpu_ms_per_question_by_thread": {},
      "feature_caches": {},
      "answers": ["a"] * len(questions),
      "expert_call_s": {},
      "workers": {},
      "scheduler_batches_by_rule": {},
      "scheduler_history": ["llava/generate:2:quiescent"],
    }

  return run


def test_time_budget_skips_timed_rounds_predicted_past_it(monkeypatch, tmp_path):
  # warm-up runs say `on` takes 1 s a question and off / serial 100 s: with 8 questions and
  # a 300 s budget, `on` is timed and the others are skipped, each listed with its prediction
  monkeypatch.setattr(phases, "Experts", _FakeExperts)
  monkeypatch.setattr(phases, "run", _fake_run({"on": 1.0, "off": 100.0, "serial": 100.0}))
  monkeypatch.setattr(phases, "decode_weight_mb", lambda model: 0.0)
  out = tmp_path / "cot.json"
  result = ct.main(["--preset=tiny", "--time_budget_s=300", "--deadline_s=0", f"--out={out}"])
  assert [s["what"] for s in result["skipped"]] == ["timed/off/r0", "timed/serial/r0"]
  assert [s["predicted_s"] for s in result["skipped"]] == [800.0, 800.0]
  assert set(result["questions_per_s"]) == {"on"}
  assert result["scheduler_history_on"] == ["llava/generate:2:quiescent"]
  assert result["ratio_on_vs_off"] is None and result["ratio_on_vs_serial"] is None
  assert set(result["phase_s"]) >= {"build", "probe", "warmup/first_pass", "timed/on"}
  assert "timed/off" not in result["phase_s"]
  assert json.loads(out.read_text())["skipped"] == result["skipped"]


def test_time_budget_spent_before_the_warmup_skips_it_and_every_timed_round(monkeypatch):
  monkeypatch.setattr(phases, "Experts", _FakeExperts)
  monkeypatch.setattr(phases, "run", _fake_run({"on": 1.0, "off": 1.0, "serial": 1.0}))
  monkeypatch.setattr(phases, "decode_weight_mb", lambda model: 0.0)
  result = ct.main(["--preset=tiny", "--time_budget_s=1e-9", "--deadline_s=0"])
  assert [s["what"] for s in result["skipped"]] == [
    "warmup",
    "timed/on/r0",
    "timed/off/r0",
    "timed/serial/r0",
  ]
  assert result["questions_per_s"] == {} and result["same_answers"] is None


def test_deadline_ends_the_real_benchmark_with_a_report(tmp_path):
  # the real tiny preset in its own process, its deadline reached while it builds or
  # compiles: the report so far is written and the process exits with DEADLINE_EXIT
  import subprocess
  import sys
  from pathlib import Path

  from benchmarks.budget import DEADLINE_EXIT

  script = Path(ct.__file__)
  out = tmp_path / "cot.json"
  proc = subprocess.run(
    [sys.executable, str(script), "--preset=tiny", "--deadline_s=1", f"--out={out}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == DEADLINE_EXIT, proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["aborted"]["at_s"] >= 1.0
  assert report["aborted"]["phase"] in {"build", "probe"} or report["aborted"]["phase"].startswith(
    "warmup"
  )
  assert report["preset"] == "tiny" and "deadline: 1 s reached" in proc.stderr


@pytest.mark.parametrize(
  "argv, limits", [(["--preset=gpu", "--smoke"], (500.0, 570.0)), (["--preset=tiny"], (0.0, 0.0))]
)
def test_the_gpu_preset_runs_under_its_limits_by_default(monkeypatch, argv, limits):
  monkeypatch.setattr(phases, "Experts", _FakeExperts)
  monkeypatch.setattr(phases, "run", _fake_run({"on": 1.0, "off": 1.0, "serial": 1.0}))
  monkeypatch.setattr(phases, "decode_weight_mb", lambda model: 0.0)
  result = ct.main(argv)
  assert (result["time_budget_s"], result["deadline_s"]) == limits
  assert not result["skipped"] and set(result["questions_per_s"]) == {"on", "off", "serial"}


def test_limits_flags_refuse_negative_seconds():
  with pytest.raises(SystemExit, match="--time_budget_s and --deadline_s must be >= 0"):
    ct.main(["--preset=tiny", "--deadline_s=-5"])


def test_compilation_cache_dir_serves_a_rerun(tmp_path):
  # the real tiny preset twice in processes of its own, each stopped by its deadline after a
  # few seconds of compiling: the second loads the first's programs from the cache directory
  import subprocess
  import sys
  from pathlib import Path

  cache = tmp_path / "jax_cache"
  reports = []
  for i in range(2):
    out = tmp_path / f"cot{i}.json"
    subprocess.run(
      [
        sys.executable,
        str(Path(ct.__file__)),
        "--preset=tiny",
        "--deadline_s=4",
        f"--compilation_cache_dir={cache}",
        f"--out={out}",
      ],
      capture_output=True,
      timeout=300,
      env={k: v for k, v in __import__("os").environ.items() if not k.startswith("JAX_COMP")},
    )
    reports.append(json.loads(out.read_text()))
  hits = [sum(c["cache_hits"] for c in r["xla_compilations_by_phase"].values()) for r in reports]
  assert reports[0]["compilation_cache_dir"] == str(cache) and any(cache.iterdir())
  assert hits[0] == 0 and hits[1] > 0, hits


def test_a_run_that_fails_leaves_no_deadline_armed(monkeypatch):
  # the deadline's timer would end the calling process (a test run) long after the error
  import threading

  def broken(*args):
    raise RuntimeError("no device")

  monkeypatch.setattr(phases, "Experts", broken)
  before = set(threading.enumerate())
  with pytest.raises(RuntimeError, match="no device"):
    ct.main(["--preset=tiny", "--deadline_s=500"])
  timers = [t for t in set(threading.enumerate()) - before if isinstance(t, threading.Timer)]
  for t in timers:
    t.join(1.0)
  assert not any(t.is_alive() for t in timers)
