"""CPU time of the sandbox's processes, for the sandbox benchmarks (Linux: reads /proc).

On a machine shared with other jobs the wall time of a run moves with the load; the CPU
time the host and the worker processes spend on it moves much less, so both benchmarks
print it next to their rates.
"""

import os
import resource


def process_cpu_s(pid: int) -> float:
  """User + system CPU seconds of a live process and of its children it has reaped."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rusage_s(who: int) -> float:
  """User + system CPU seconds of `resource.RUSAGE_SELF` or `RUSAGE_CHILDREN`."""
  r = resource.getrusage(who)
  return r.ru_utime + r.ru_stime


class Meter:
  """CPU seconds of this process and of a Sandbox's workers between `start` and `stop`.

  `start(sandbox)` once its workers are warm; `stop()` after the sandbox is closed (its
  workers reaped, so their time, and their reaped children's, is in RUSAGE_CHILDREN). A
  worker replaced in between counts with its start-up.
  """

  def start(self, sandbox) -> None:
    self._workers = sum(process_cpu_s(w.proc.pid) for w in list(sandbox._idle.queue))
    self._host = rusage_s(resource.RUSAGE_SELF)
    self._kids = rusage_s(resource.RUSAGE_CHILDREN)

  def stop_host(self) -> None:
    """Ends the host's count (call before closing the sandbox)."""
    self.host_s = rusage_s(resource.RUSAGE_SELF) - self._host

  def stop(self) -> None:
    """Ends the workers' count (call after closing the sandbox)."""
    self.workers_s = rusage_s(resource.RUSAGE_CHILDREN) - self._kids - self._workers
