"""Keep freed host memory in the process, so XLA's CPU buffers do not page-fault every step.

XLA's CPU backend allocates each execution's buffers with `malloc`: a Llama train step of the
~30M benchmark model asks for one ~820 MiB block of temporaries per step. glibc serves blocks
that large with a fresh `mmap` and gives them back to the kernel on `free`, so every step
touches ~200k new pages and takes ~200k page faults (~10 % of the step on a 2-core host).
GPUs and TPUs keep their buffers in an arena; `keep_freed_memory` does the same on the host by
telling glibc's allocator never to `mmap`, never to trim, and to use one arena. The process
then keeps its peak memory (its RSS does not shrink after a step) and reuses it.

It changes the whole process's allocator, so it is a launcher's choice, not an import side
effect: `launch/train.py` and `launch/demo.py` call it on CPU hosts (`--keep_freed_memory`),
and the CPU benchmarks call it for both sides of a comparison. The same effect from outside:
`GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
  """Makes this process's `malloc` keep freed memory for reuse (glibc on Linux).

  Returns True if glibc took every setting, False where there is no glibc `mallopt` (macOS,
  musl, Windows); nothing changes then. Call it once, early, in the main program.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


def wanted(flag: bool | None) -> bool:
  """A launcher's `--keep_freed_memory`: the flag if given, else on when JAX runs on the CPU."""
  if flag is not None:
    return flag
  import jax

  return jax.default_backend() == "cpu"
