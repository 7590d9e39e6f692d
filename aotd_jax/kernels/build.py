"""Compiles aotd_jax's C++ XLA FFI kernels on first use and caches the shared libraries.

The kernels are plain C++ against the XLA FFI headers that ship with jaxlib
(`jax.ffi.include_dir()`), built for the machine that runs them (`-march=native`). Nothing is
downloaded: the build needs a C++17 compiler (`$CXX`, else `c++` / `g++` / `clang++` on the
PATH). Without one, `load_library` returns None and callers keep XLA's own ops.

Libraries are cached under `$AOTD_JAX_KERNEL_CACHE` (default `~/.cache/aotd_jax/kernels`), keyed
by the source, jaxlib's version, the compiler and the CPU's instruction-set flags, so a cache
shared between different machines never hands one a binary built for another.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

from absl import logging

_HERE = os.path.dirname(os.path.abspath(__file__))
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


# How many times each kernel's FFI call was traced into a computation: the tests' proof that a
# kernel parametrisation took the kernel rather than falling back to XLA's ops.
EMITTED: collections.Counter = collections.Counter()


def ffi_call(target: str, result_shape_dtypes, **kwargs):
  """`jax.ffi.ffi_call(target, ...)`, counted in `EMITTED`."""
  import jax

  EMITTED[target] += 1
  return jax.ffi.ffi_call(target, result_shape_dtypes, **kwargs)


class KernelBuildError(RuntimeError):
  """A kernel's C++ source did not compile (the message holds the compiler's output)."""


def find_compiler() -> str | None:
  """The C++ compiler to use: `$CXX`, else the first of c++, g++, clang++ on the PATH."""
  if os.environ.get("CXX"):
    return shutil.which(os.environ["CXX"]) or os.environ["CXX"]
  for name in ("c++", "g++", "clang++"):
    if path := shutil.which(name):
      return path
  return None


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def cache_dir() -> str:
  return os.environ.get("AOTD_JAX_KERNEL_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "aotd_jax", "kernels"
  )


def build_library(source: str, compiler: str | None = None, out_dir: str | None = None) -> str:
  """Compiles `source` (a .cc file) into a cached shared library and returns its path.

  Raises:
    FileNotFoundError: `source` does not exist, or no C++ compiler was found.
    KernelBuildError: the compiler failed; its output is in the message.
  """
  import jax
  import jaxlib

  if not os.path.isfile(source):
    raise FileNotFoundError(f"kernel source {source} does not exist")
  compiler = compiler or find_compiler()
  if compiler is None:
    raise FileNotFoundError("no C++ compiler found (set $CXX or install g++ / clang++)")
  with open(source, "rb") as f:
    text = f.read()
  key = hashlib.sha256(
    b"\0".join(
      [
        text,
        jaxlib.__version__.encode(),
        os.path.realpath(compiler).encode(),
        " ".join(_FLAGS).encode(),
        _cpu_flags().encode(),
        platform.machine().encode(),
      ]
    )
  ).hexdigest()[:16]
  out_dir = out_dir or cache_dir()
  name = os.path.splitext(os.path.basename(source))[0]
  target = os.path.join(out_dir, f"lib{name}-{key}.so")
  if os.path.isfile(target):
    return target
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)  # then an atomic rename: no torn reads
  os.close(fd)
  cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", source, "-o", tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
      raise KernelBuildError(f"compiling {source} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


@functools.cache
def load_library(name: str) -> ctypes.CDLL | None:
  """The compiled kernel library `name` (a .cc file in this folder), or None if it cannot be built.

  The first failure is logged with the reason; callers fall back to XLA's ops.
  """
  try:
    return ctypes.cdll.LoadLibrary(build_library(os.path.join(_HERE, f"{name}.cc")))
  except (OSError, KernelBuildError, subprocess.TimeoutExpired) as e:
    logging.warning("aotd_jax kernel %s unavailable, using XLA's ops instead: %s", name, e)
    return None


@functools.cache
def register(name: str, symbol: str, target: str) -> bool:
  """Builds kernel `name`, registers its handler `symbol` as XLA FFI `target` on the CPU platform.

  Returns False (and the caller keeps XLA's ops) when the library cannot be built.
  """
  import jax

  lib = load_library(name)
  if lib is None:
    return False
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return True


def single_cpu_device() -> bool:
  """Whether code traced now runs on one CPU device: the CPU backend and no multi-device mesh
  set with `jax.set_mesh` (the kernels are not partitioned over a mesh)."""
  import jax

  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() == "cpu" and (mesh is None or mesh.empty or mesh.size == 1)
