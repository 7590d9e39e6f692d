"""Whose turn it is on a sandbox worker's channel: a page shared by the zygote and its children.

Imported by `sandbox_worker.py` (as a plain module next to it: standard library only). The
zygote forks its children ahead of need and numbers them in fork order (1, 2, ...); they take
the one channel to the host in that order, one at a time. The page holds the number of the
child whose turn it is and, in a ring of slots, the (number, pid) of each child the zygote
forked, so a child that is done hands the channel to its successor itself (it sets the turn
and sends SIGUSR1) without waiting for the zygote to wake up. Each slot holds two pids: the
zygote's view (its `fork()` result) and the child's own (`os.getpid()` in the child, which
differs when the children live in a PID namespace of their own); each side signals by its own
view.

Writers: the zygote registers children; a child announces its own pid, then passes the turn
once, after its last message. Each pair in a slot is written as a seqlock (number cleared, pid,
number), so a reader never pairs a number with the wrong pid. A missed or stray wake-up is
harmless: a child waits until the page says it is its turn, and the zygote wakes the current
child again whenever it handles a child's exit.
"""

import _signal
import mmap
import os
import signal

# `signal.sigwait` converts its answer to a `signal.Signals` enum member (a trip through
# the enum machinery, whose pages a fresh child would copy); `_signal.sigwait` does not.
_SIGUSR1 = int(signal.SIGUSR1)
_USR1 = frozenset([_SIGUSR1])


class Turns:
  """The shared page. Create it in the zygote, before the first fork.

  Args:
    slots: ring size; more than the number of children alive at once that have not yet
      passed their turn.
  """

  def __init__(self, slots: int):
    if slots < 2:
      raise ValueError(f"slots must be >= 2, got {slots}")
    self.slots = slots
    self._page = mmap.mmap(-1, 8 * (1 + 4 * slots))  # MAP_SHARED | MAP_ANONYMOUS
    # The page as int64 words. Each method reads and writes them itself: a fresh child
    # copies the zygote's memory page by page as it first writes it, and every call (a
    # frame, a code object's reference count) touches more of it.
    self._words = memoryview(self._page).cast("q")
    self._words[0] = 1

  @property
  def turn(self) -> int:
    """The number of the child that may use the channel."""
    return self._words[0]

  def register(self, seq: int, pid: int) -> None:
    """Records that child `seq` is process `pid` as the zygote sees it (zygote only)."""
    words, base = self._words, 1 + 4 * (seq % self.slots)
    words[base] = 0
    words[base + 1] = pid
    words[base] = seq

  def announce(self, seq: int, pid: int) -> None:
    """Records child `seq`'s pid as the children see it (the child itself)."""
    words, base = self._words, 3 + 4 * (seq % self.slots)
    words[base] = 0
    words[base + 1] = pid
    words[base] = seq

  def pid_of(self, seq: int) -> int:
    """The zygote's pid of child `seq`, or 0 when its slot holds another child (or none yet)."""
    words, base = self._words, 1 + 4 * (seq % self.slots)
    before, pid = words[base], words[base + 1]
    return pid if before == seq == words[base] else 0

  def own_pid_of(self, seq: int) -> int:
    """The children's pid of child `seq` (0 when not announced yet, or another child's slot)."""
    words, base = self._words, 3 + 4 * (seq % self.slots)
    before, pid = words[base], words[base + 1]
    return pid if before == seq == words[base] else 0

  def wait(self, seq: int) -> None:
    """Blocks child `seq` until it is its turn (SIGUSR1 must be blocked in the caller)."""
    while self._words[0] != seq:
      _signal.sigwait(_USR1)

  def wake(self, seq: int, own: bool = False) -> None:
    """Sends SIGUSR1 to child `seq` if its slot names it (by the zygote's pid; by the
    children's with `own`)."""
    words, base = self._words, (3 if own else 1) + 4 * (seq % self.slots)
    before, pid = words[base], words[base + 1]
    if pid > 0 and before == seq == words[base]:
      try:
        os.kill(pid, _SIGUSR1)
      except OSError:
        pass

  def pass_turn(self, seq: int) -> None:
    """Child `seq` is done with the channel: the turn goes to `seq + 1`, woken now (if it
    has announced itself; if not, it sees the turn before it waits, or the zygote wakes it)."""
    self._words[0] = seq + 1
    self.wake(seq + 1, own=True)
