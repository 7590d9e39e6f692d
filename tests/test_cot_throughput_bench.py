"""The CoT-throughput benchmark's accounting helpers: per-thread CPU and decode weight bytes."""

import threading
import time

import pytest

from benchmarks import cot_throughput as ct


def test_cpu_by_thread_sums_deltas_per_kind():
  before = {1: ("device-scheduler/0", 1.0), 2: ("device-scheduler/1", 2.0), 3: ("tf_XLAEigen", 5.0)}
  after = {
    1: ("device-scheduler/0", 1.5),
    2: ("device-scheduler/1", 2.5),
    3: ("tf_XLAEigen", 6.0),
    4: ("python", 0.25),  # started during the run: all of it counts
    5: ("idle", 0.0),
  }
  out = ct.cpu_by_thread(before, after, programs_s=2.0, questions=10)
  assert out == {
    "programs": 200.0,
    "device-scheduler": 100.0,
    "tf_XLAEigen": 100.0,
    "python": 25.0,
    "process": 425.0,
  }


def test_cpu_by_thread_counts_a_reused_thread_id_whole():
  out = ct.cpu_by_thread({7: ("old", 3.0)}, {7: ("new", 0.5)}, 0.0, 1)
  assert out["new"] == 500.0 and "old" not in out


def test_thread_cpu_s_sees_this_thread_work():
  tid = threading.get_native_id()
  first = ct.thread_cpu_s()
  if not first:
    pytest.skip("no /proc/self/task on this platform")
  assert first[tid][0] == threading.current_thread().name
  t0 = time.thread_time()
  while time.thread_time() - t0 < 0.05:  # 50 ms of CPU: 5 clock ticks
    pass
  assert ct.thread_cpu_s()[tid][1] >= first[tid][1] + 0.02


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
  assert ct.decode_weight_mb(model) == pytest.approx(floats * 4 / 2**20)


def test_llava_size_flag_names_a_bad_key():
  with pytest.raises(SystemExit, match="--llava_size: 'width=3'"):
    ct.main(["--preset=tiny", "--llava_size=width=3"])


def test_new_tokens_flag_refuses_a_negative_length():
  with pytest.raises(SystemExit, match="--new_tokens must be >= 1"):
    ct.main(["--preset=tiny", "--new_tokens=-3"])
