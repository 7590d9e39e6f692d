"""Bucketed batching: run a jitted expert over any number of frames with few compilations.

An expert is jitted over a batch of frames. Clips have every length, and jit compiles once
per input shape, so a run over many videos would compile once per length. `BucketedJit`
cuts the frames into chunks of at most the largest bucket and pads the last chunk up to the
smallest bucket that holds it (repeating its last frame, then dropping the padded outputs):
the expert compiles at most once per bucket (per frame size and per shape of its other
arguments), whatever the clip lengths.

Rows that live on the device (a clip's kept KV prefix cache, 2.4 GB a row at LLaVA-7B) are
never joined or padded outside the jitted function: a batch of them is a `RowParts` (the
requests' arrays as they came, padded by repeating a reference to the last row), and the
jitted function joins them along axis 0 as its first step, where XLA fuses the join into what
follows (e.g. writing the rows into a larger KV cache): one copy of the bytes instead of an
eager concatenation, an eager padding and then the function's own copy.

`compiles` counts traces of the wrapped function (each is one XLA compilation of the expert);
`count_xla_compilations()` counts every XLA compilation in a block, through jax.monitoring,
for benchmarks that want the whole truth (small eager ops included).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
  """Validates and sorts bucket sizes (positive ints, at least one)."""
  out = tuple(sorted({int(b) for b in buckets}))
  if not out or out[0] < 1 or any(int(b) != b for b in buckets):
    raise ValueError(f"buckets must be positive integers, got {list(buckets)}")
  return out


def bucket_size(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n (n must not exceed the largest bucket)."""
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"{n} rows exceed the largest bucket {buckets[-1]}")


def plan_chunks(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
  """(start, stop, padded size) chunks covering n rows: full largest buckets, then one padded."""
  big = buckets[-1]
  chunks = [(s, s + big, big) for s in range(0, n - n % big, big)]
  rest = n % big
  if rest:
    chunks.append((n - rest, n, bucket_size(rest, buckets)))
  return chunks


@jax.tree_util.register_pytree_node_class
class RowParts:
  """Device rows joined along axis 0 only inside a jitted function: the parts (arrays sharing
  their trailing shape) as the requests brought them, a part possibly repeated (padding).

  A pytree whose children are the parts, so jit sees each part as an argument (a part
  repeated is one buffer passed twice: no copy) and compiles once per layout (the number of
  parts and their row counts: one per bucket size when every request brings one row).
  `BucketedJit` joins them (`join_rows`) before calling the function it jits.
  """

  __slots__ = ("parts",)

  def __init__(self, parts):
    flat = []
    for p in parts:
      flat.extend(p.parts if isinstance(p, RowParts) else (p,))
    if not flat or len({(tuple(p.shape[1:]), p.dtype) for p in flat}) != 1:
      raise ValueError(
        f"RowParts: need parts of one trailing shape and dtype, got "
        f"{[(tuple(p.shape), str(p.dtype)) for p in flat]}"
      )
    self.parts = tuple(flat)

  @property
  def shape(self) -> tuple:
    return (sum(int(p.shape[0]) for p in self.parts), *self.parts[0].shape[1:])

  @property
  def dtype(self):
    return self.parts[0].dtype

  @property
  def ndim(self) -> int:
    return self.parts[0].ndim

  def __getitem__(self, rows: slice) -> "RowParts":
    """Rows `start:stop` (a slice of step 1): whole parts kept as they are, a part cut by a
    bound sliced (a copy of those rows only)."""
    start, stop, step = rows.indices(self.shape[0])
    if step != 1:
      raise ValueError(f"RowParts: only contiguous row slices, got {rows}")
    out, at = [], 0
    for p in self.parts:
      n = int(p.shape[0])
      lo, hi = max(start - at, 0), min(stop - at, n)
      if lo < hi:
        out.append(p if (lo, hi) == (0, n) else p[lo:hi])
      at += n
    return RowParts(out)

  def join(self):
    """The rows as one array (inside jit: the concatenation XLA fuses into its consumer)."""
    return self.parts[0] if len(self.parts) == 1 else jnp.concatenate(self.parts, axis=0)

  def tree_flatten(self):
    return self.parts, None

  @classmethod
  def tree_unflatten(cls, _, parts):
    out = object.__new__(cls)
    out.parts = tuple(parts)
    return out


def is_row_parts(x) -> bool:
  """`is_leaf` for tree functions that treat a `RowParts` as one array of rows."""
  return isinstance(x, RowParts)


def join_rows(rows):
  """`rows` with every `RowParts` joined into one array (call it inside jit)."""
  return jax.tree.map(lambda a: a.join() if is_row_parts(a) else a, rows, is_leaf=is_row_parts)


def num_rows(rows) -> int:
  """The leading size of `rows`: an array, or a tuple/list of arrays sharing their leading axis
  (a `RowParts` counts as one array)."""
  leaves = jax.tree.leaves(rows, is_leaf=is_row_parts)
  if not leaves:
    raise ValueError("rows: no arrays")
  n = int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else -1
  if n < 0 or any(np.ndim(a) < 1 or int(np.shape(a)[0]) != n for a in leaves):
    raise ValueError(f"rows must share a leading axis, got shapes {[np.shape(a) for a in leaves]}")
  return n


def pad_rows(x, size: int):
  """Pads axis 0 of `x` (an array or a pytree of arrays) to `size` by repeating its last row:
  numpy stays numpy; a device array or `RowParts` becomes a `RowParts` whose padding repeats
  a reference to the last row (a copy of that one row when it is part of a larger array), to
  be joined inside the jitted function."""

  def pad(a):
    n = a.shape[0]
    if n == size:
      return a
    if isinstance(a, np.ndarray):
      return np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)], axis=0)
    last = a.parts[-1] if is_row_parts(a) else a
    last = last if last.shape[0] == 1 else last[-1:]
    return RowParts([a] + [last] * (size - n))

  return jax.tree.map(pad, x, is_leaf=is_row_parts)


def program_name(name: str) -> str:
  """The name a `BucketedJit` gives its jitted function (and so its XLA programs):
  `bucketed_` + `name` with every run of characters other than letters and digits as `_`."""
  return "bucketed_" + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


class BucketedJit:
  """`fn(rows, *args)` jitted, called over any number of rows in bucket-sized chunks.

  `fn` must map a batch of rows (leading axis B) to a pytree of arrays with leading axis B,
  row by row (no mixing across the batch): padding rows are computed and then dropped.
  Other positional arguments (model state, tokenised queries) are passed unchanged. `rows` may
  be a tuple of arrays sharing their leading axis (e.g. token ids, masks and pixels per row).
  Device rows of several requests (a `RowParts`, see the module docstring) reach `fn` joined,
  inside the jit. `jit=False` calls `fn` as it is, for a function that compiles its own parts
  (generation's prefill and decode loop); `compiles` then counts nothing, and `fn` gets the
  `RowParts` to join inside its own jitted part.

  Example:
    detect = BucketedJit(lambda frames, q: score(frames, q), buckets=(1, 4, 16))
    out = detect(frames_13, q)     # runs one padded chunk of 16; compiles once
    out = detect(frames_3, q)      # a chunk of 4; compiles once more
    detect.compiles                # -> 2
  """

  def __init__(
    self,
    fn: Callable[..., Any],
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    name: str | None = None,
    donate_rows: bool = False,
    jit: bool = True,
  ):
    self.buckets = check_buckets(buckets)
    self.name = name or getattr(fn, "__name__", "expert")
    self.compiles = 0
    self.calls = 0  # chunks run (cumulative)
    self._fn = fn

    def traced(rows, *args):
      self.compiles += 1  # Python side effect: runs once per trace, i.e. per new shape
      return fn(join_rows(rows), *args)

    # the expert's name in XLA's program names (compile logs, jax.monitoring's `fun_name`,
    # profiles): `jit(bucketed_llava_prefix)` rather than a dozen `jit(traced)`
    traced.__name__ = traced.__qualname__ = program_name(self.name)
    self._jitted = jax.jit(traced, donate_argnums=(0,) if donate_rows else ()) if jit else fn

  def run_chunk(self, rows, *args):
    """One call on rows already padded to a bucket size (no slicing, no concatenation)."""
    n = num_rows(rows)
    if n not in self.buckets:
      raise ValueError(f"{self.name}: chunk of {n} rows is not a bucket size {self.buckets}")
    self.calls += 1
    return self._jitted(rows, *args)

  def __call__(self, rows, *args, to_host: bool = False):
    """Runs over all rows; returns the outputs concatenated along axis 0 (length N).

    With numpy `rows` and `to_host=True` no array op outside the jitted function sees a
    clip-dependent shape: padding, slicing and concatenation happen in numpy, so the XLA
    compilations are exactly the traces counted by `compiles`.
    """
    n = num_rows(rows)
    if n == 0:
      one = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((1,) + tuple(a.shape[1:]), a.dtype),
        rows,
        is_leaf=is_row_parts,
      )
      spec = jax.eval_shape(self._fn, one, *args)
      zeros = np.zeros if to_host else jnp.zeros
      return jax.tree.map(lambda s: zeros((0,) + s.shape[1:], s.dtype), spec)
    outs = []
    for start, stop, size in plan_chunks(n, self.buckets):
      # (a device array is not sliced when one chunk takes it whole: no copy)
      part = (
        rows
        if (start, stop) == (0, n)
        else jax.tree.map(lambda a, s=start, e=stop: a[s:e], rows, is_leaf=is_row_parts)
      )
      out = self.run_chunk(pad_rows(part, size), *args)
      if to_host:
        out = jax.tree.map(np.asarray, out)
      outs.append(
        out if stop - start == size else jax.tree.map(lambda a, k=stop - start: a[:k], out)
      )
    if len(outs) == 1:
      return outs[0]
    cat = np.concatenate if to_host else jnp.concatenate
    return jax.tree.map(lambda *a: cat(a, axis=0), *outs)


@contextlib.contextmanager
def count_xla_compilations() -> Iterator[list]:
  """Counts XLA backend compilations inside the block: `with ... as n: ...; n[0]`; `n[1]`: their
  seconds summed (compilations in parallel threads overlap, so more than the wall time)."""
  counter = [0, 0.0]

  def listener(event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event == _BACKEND_COMPILE_EVENT:
      counter[0] += 1
      counter[1] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
