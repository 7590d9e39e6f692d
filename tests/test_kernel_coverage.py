"""The `expect_kernel` fixture (tests/conftest.py) fails when a kernel parametrisation fell back
to XLA's ops, passes when the kernel's FFI call was emitted, and checks nothing for XLA runs."""

import jax.numpy as jnp
import numpy as np
import pytest

from aotd_jax.kernels import attention as ka
from aotd_jax.kernels import build


def _inputs(b=1, length=5, kv=1, groups=2, d=8):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((b, length, kv, groups, d)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, length, kv, d)), jnp.float32)
  return q, k, k


def test_a_fallback_to_xla_fails(expect_kernel):
  with pytest.raises(AssertionError, match=r"the kernel never ran \(\['aotd_attention_fwd'\]"):
    with expect_kernel(ka, ka.TARGET_FWD):
      jnp.ones(3) + 1  # no kernel call


@pytest.mark.kernel
def test_a_kernel_call_is_counted(expect_kernel):
  before = build.EMITTED[ka.TARGET_FWD]
  with expect_kernel(ka, ka.TARGET_FWD):
    q, k, v = _inputs()
    out = ka.attention(q, k, v, None, 2, True)
  assert out.shape == (1, 5, 16) and build.EMITTED[ka.TARGET_FWD] == before + 1


def test_when_false_checks_nothing(expect_kernel):
  with expect_kernel(ka, ka.TARGET_FWD, when=False):
    pass


def test_an_unavailable_kernel_skips_with_the_reason(expect_kernel, monkeypatch):
  monkeypatch.setattr(ka, "available", lambda: False)
  with pytest.raises(pytest.skip.Exception, match="aotd_jax.kernels.attention cannot run here"):
    with expect_kernel(ka, ka.TARGET_FWD):
      pass
