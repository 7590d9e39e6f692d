"""`build_once`: one process builds a shared file while the others wait; a stale lock (its
owner gone, or silent for `stale_s`) is taken over, a live one waited for up to `wait_s`."""

import json
import os
import socket
import threading
import time

import pytest

from aotd_jax.data import build_once as B


def make(target, calls):
  def build():
    calls.append(threading.current_thread().name)
    time.sleep(0.3)
    with open(target, "w") as f:
      f.write("built")

  return build


def test_one_of_several_builds_and_the_others_wait(tmp_path):
  target = str(tmp_path / "f")
  calls = []
  ready = lambda: os.path.exists(target)  # noqa: E731
  threads = [
    threading.Thread(
      target=B.build_once, args=(target, make(target, calls)), kwargs=dict(ready=ready, poll_s=0.02)
    )
    for _ in range(4)
  ]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and os.listdir(tmp_path) == ["f"]
  B.build_once(target, make(target, calls), ready=ready)  # ready: nothing built, no lock made
  assert len(calls) == 1 and os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("content", ["owner", "empty"])
def test_a_silent_lock_from_another_host_is_taken_over_after_stale_s(tmp_path, caplog, content):
  """A host that died mid-build stops beating (or died before writing its name): after
  `stale_s` of no change, as this waiter's clock measures it, the lock is taken."""
  target = str(tmp_path / "f")
  owner = {"host": "elsewhere", "boot_id": "b", "pid": 1, "token": "t", "beat": 3}
  with open(target + B.LOCK_SUFFIX, "w") as f:
    f.write(json.dumps(owner) if content == "owner" else "")
  calls = []
  t0 = time.monotonic()
  B.build_once(
    target, make(target, calls), ready=lambda: os.path.exists(target), stale_s=0.5, poll_s=0.02
  )
  assert len(calls) == 1 and time.monotonic() - t0 >= 0.5
  assert not os.path.exists(target + B.LOCK_SUFFIX)
  assert "is stale" in caplog.text and target + B.LOCK_SUFFIX in caplog.text


def test_a_beating_lock_is_not_stale_and_the_wait_is_bounded(tmp_path):
  """A builder elsewhere that keeps beating is alive however long it takes: this waiter does
  not take its lock, and stops after `wait_s` naming the target, the lock and the holder."""
  target = str(tmp_path / "f")
  lock = target + B.LOCK_SUFFIX
  stop = threading.Event()

  def beat(n=0):
    with open(lock, "w") as f:
      f.write(json.dumps({"host": "host-3", "boot_id": "b", "pid": 77, "beat": n}))

  beat()  # held before this process looks

  def beating():
    n = 0
    while not stop.wait(0.05):
      n += 1
      beat(n)

  beater = threading.Thread(target=beating)
  beater.start()
  try:
    with pytest.raises(B.BuildTimeout, match=rf"waited 1 s for process 77 on host-3 .*{lock}"):
      B.build_once(
        target, make(target, []), ready=lambda: False, stale_s=0.3, wait_s=1.0, poll_s=0.02
      )
  finally:
    stop.set()
    beater.join()
  assert os.path.exists(lock)  # never taken


def test_a_dead_process_of_this_machine_is_seen_at_once(tmp_path):
  import subprocess
  import sys

  done = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
  )
  owner = {
    "host": socket.gethostname(),
    "boot_id": B._boot_id(),
    "pid": int(done.stdout),
    "token": "t",
    "beat": 0,
  }
  target = str(tmp_path / "f")
  with open(target + B.LOCK_SUFFIX, "w") as f:
    f.write(json.dumps(owner))
  calls = []
  t0 = time.monotonic()
  B.build_once(target, make(target, calls), ready=lambda: os.path.exists(target), stale_s=60)
  assert len(calls) == 1 and time.monotonic() - t0 < 10


def test_a_failed_build_frees_the_lock(tmp_path):
  target = str(tmp_path / "f")

  def fails():
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    B.build_once(target, fails, ready=lambda: False)
  assert os.listdir(tmp_path) == []
