"""One process builds a file that several share; the others wait for it (a lock file).

Hosts of a pod that mount the same folder (NFS) would each parse the same annotation file on a
first run (`record_cache`): N times the work and N times the parse's memory peak at once.
`build_once(target, build, ready=...)` makes one process build while the others wait:

- the builder holds `<target>.lock`, made with `O_CREAT | O_EXCL` (atomic on local disks and
  NFSv3+), holding its owner (host, boot id, pid) and a heartbeat count that it rewrites every
  `beat_s` while it builds, and removes when done (built or failed: a waiter then tries itself,
  so a bad annotation file gives every host the same error, not a hang);
- a waiter polls until `ready()` and takes over a lock that is stale: its owner is a process of
  this machine that is gone, or its content has not changed for `stale_s` as the waiter's own
  clock measures it (no clock is compared across hosts; a whole host that died stops beating);
- a waiter that has waited `wait_s` for a live builder stops with `BuildTimeout` naming the
  target and the lock file.

A single process pays one file creation and one removal. Two waiters that take over the same
stale lock at the same instant may both build: the builds write atomically (temporary name,
then rename) and give the same bytes, so that costs time, never correctness.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterable

from absl import logging

LOCK_SUFFIX = ".lock"


def source_digest(seed: bytes, modules: Iterable) -> str:
  """A hash of `seed` and the modules' source files: a changed reader makes every key new."""
  h = hashlib.sha256(seed)
  for module in modules:
    with open(module.__file__, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def keyed_path(cache_dir: str, prefix: str, name: str, key: dict, suffix: str) -> str:
  """`<prefix>-<name, made file-safe>-<hash of key><suffix>` in `cache_dir`."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:60]
  return os.path.join(cache_dir, f"{prefix}-{stem}-{digest}{suffix}")


def temporary_name(path: str) -> str:
  """A name beside `path` that no other process or host writes (then renamed onto `path`)."""
  return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class BuildTimeout(Exception):
  """A live builder held the lock for longer than the waiter's `wait_s`."""


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: alive
    return True
  return True


def _read(path: str) -> str | None:
  """The lock's content ("" while being rewritten), None when there is no lock."""
  try:
    with open(path) as f:
      return f.read()
  except FileNotFoundError:
    return None


def _owner(content: str) -> dict:
  try:
    return json.loads(content)
  except ValueError:
    return {}


def _describe(owner: dict) -> str:
  if not owner:
    return "another process"
  return f"process {owner.get('pid')} on {owner.get('host')}"


def _dead_here(owner: dict) -> bool:
  """Whether the lock's owner is a process of this machine that no longer runs."""
  return (
    bool(owner)
    and owner.get("host") == socket.gethostname()
    and owner.get("boot_id") == _boot_id()
    and not _pid_alive(int(owner.get("pid", 0)))
  )


class _Lock:
  """The lock file while this process holds it: its heartbeat thread and its removal."""

  def __init__(self, path: str, beat_s: float):
    self.path, self.beat_s = path, beat_s
    self.owner = {
      "host": socket.gethostname(),
      "boot_id": _boot_id(),
      "pid": os.getpid(),
      "token": uuid.uuid4().hex,
      "beat": 0,
    }
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(self.owner))
    self._thread = threading.Thread(target=self._beat, name="build_once-heartbeat", daemon=True)
    self._thread.start()
    return True

  def _ours(self) -> bool:
    return _owner(_read(self.path) or "").get("token") == self.owner["token"]

  def _beat(self) -> None:
    while not self._stop.wait(self.beat_s):
      if not self._ours():  # taken over (this process was paused past `stale_s`): stop
        return
      self.owner["beat"] += 1
      with open(self.path, "w") as f:  # closed at once: NFS's close-to-open shows it to readers
        f.write(json.dumps(self.owner))

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._ours():
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass


def build_once(
  target: str,
  build: Callable[[], None],
  *,
  ready: Callable[[], bool],
  what: str = "",
  beat_s: float = 5.0,
  stale_s: float = 60.0,
  wait_s: float = 3600.0,
  poll_s: float = 0.5,
) -> None:
  """Runs `build()` (which writes `target`) in one of the processes that call this for the same
  `target` at once, unless `ready()` already; returns once `ready()` or this process built it.

  `what`: the work, for the log and errors (e.g. "parsing /data/agqa/train_balanced.txt").

  Raises:
    BuildTimeout: a live builder held `<target>.lock` for over `wait_s` seconds.
    Whatever `build()` raises, in the process that ran it.
  """
  lock_path = target + LOCK_SUFFIX
  what = what or f"building {target}"
  t0 = time.monotonic()
  seen, seen_at, logged = None, t0, False
  while not ready():
    lock = _Lock(lock_path, beat_s)
    if lock.acquire():
      try:
        if not ready():  # finished by another process since this one looked
          build()
      finally:
        lock.release()
      return
    content = _read(lock_path)
    now = time.monotonic()
    if content is None:  # released just now: look again
      continue
    if content != seen:
      seen, seen_at = content, now
    owner = _owner(content)
    if _dead_here(owner) or now - seen_at > stale_s:  # empty too: died before writing its name
      why = "has ended" if _dead_here(owner) else f"has not written to it for {now - seen_at:.0f} s"
      logging.warning(
        "%s: the lock %s is stale (%s %s); taking it", what, lock_path, _describe(owner), why
      )
      if _read(lock_path) == content:  # not replaced meanwhile by another waiter's lock
        try:
          os.remove(lock_path)
        except FileNotFoundError:
          pass
      seen = None
      continue
    if now - t0 > wait_s:
      raise BuildTimeout(
        f"{what}: waited {now - t0:.0f} s for {_describe(owner)} to finish {target} (it holds "
        f"the lock {lock_path} and is still alive); if it is not running, delete {lock_path}"
      )
    if not logged:
      logging.info("%s: %s is doing it (%s); waiting", what, _describe(owner), lock_path)
      logged = True
    time.sleep(poll_s)
