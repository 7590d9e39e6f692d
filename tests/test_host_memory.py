"""`aotd_jax.host_memory.keep_freed_memory`: XLA's per-step CPU buffers stop page-faulting.

Each case runs in a fresh Python process (the setting is process-wide): a jitted step whose
64 MiB temporary is larger than anything glibc recycles by default.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from aotd_jax import host_memory

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_STEP = textwrap.dedent("""
    import resource, sys
    from aotd_jax import host_memory
    kept = host_memory.keep_freed_memory() if sys.argv[1] == "1" else None
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 64)); w = jnp.ones((64, 4096))
    step = jax.jit(lambda x, w: (x @ w) * 2.0 + (x @ w).T)  # 64 MiB temporary and output
    faults = []
    for _ in range(12):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      step(x, w).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(kept, min(faults[4:]))  # the best step after warm-up
""")


def _faults_per_step(keep: bool) -> tuple[str, int]:
  out = subprocess.run(
    [sys.executable, "-c", _STEP, "1" if keep else "0"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=_ROOT,
    env={**os.environ, "PYTHONPATH": _ROOT, "GLIBC_TUNABLES": ""},
  )
  assert out.returncode == 0, out.stderr[-2000:]
  kept, faults = out.stdout.split()[-2:]
  return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_steps_stop_page_faulting():
  kept, faults = _faults_per_step(keep=True)
  if kept != "True":
    pytest.skip("this libc has no mallopt (not glibc)")
  _, default_faults = _faults_per_step(keep=False)
  # By default every step touches its 2 x 64 MiB afresh (4 KiB pages); kept, steps reuse them.
  assert default_faults > 10000
  assert faults < default_faults // 20


def test_launcher_default_follows_the_backend(monkeypatch):
  assert host_memory.wanted(True) and not host_memory.wanted(False)
  import jax

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not host_memory.wanted(None)
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert host_memory.wanted(None)


def test_no_glibc_changes_nothing(monkeypatch):
  monkeypatch.setattr(sys, "platform", "darwin")
  assert host_memory.keep_freed_memory() is False
