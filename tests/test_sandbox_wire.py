"""The sandbox's data-only wire: round trips, refusals, and a fuzz of the decoder."""

import concurrent.futures
import pickle
import random

import msgpack
import numpy as np
import pytest

from aotd_jax.agent import sandbox_wire as wire


class Kept:
  pass


def _codec(kept):
  def other(obj):
    kept.append(obj)
    return len(kept) - 1

  def handle(p):
    if type(p) is not int or not 0 <= p < len(kept):
      raise wire.WireError("unknown handle")
    return kept[p]

  return wire.Codec(other, handle, max_array_bytes=1 << 16, max_nodes=10_000)


def test_round_trip_of_every_carried_type():
  kept = []
  c = _codec(kept)
  k = Kept()
  value = [
    None,
    True,
    3,
    -(2**70),
    2**64 + 5,
    1.5,
    "a\ud800b",
    b"xy",
    (1, (2,)),
    {1, 2},
    frozenset([3]),
    1 + 2j,
    slice(1, None, 2),
    range(0, 9, 3),
    Ellipsis,
    np.arange(6, dtype=np.int16).reshape(2, 3),
    np.float32(2.5),
    np.bool_(True),
    np.array(["ab", "c"]),
    {"k": [1], 2: "v", (1, 2): None},
    k,
    np.zeros(1 << 15),
  ]  # 256 KB: over max_array_bytes, kept behind a handle
  out = c.decode(c.encode(value))
  for a, b in zip(value[:-2], out[:-2]):
    if isinstance(a, np.ndarray):
      assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
      assert type(a) is type(b) and a == b, (a, b)
  assert out[-2] is k and out[-1] is value[-1]
  assert out[15].flags.writeable  # a copy the program may write into


@pytest.mark.parametrize(
  "bad",
  [
    np.array([object()], dtype=object),
    np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
    lambda: 1,
    type,
  ],
)
def test_objects_the_wire_does_not_carry_are_refused_without_a_handle_hook(bad):
  with pytest.raises(TypeError, match="cannot be sent"):
    wire.Codec().encode(bad)


@pytest.mark.parametrize(
  "frame",
  [
    pickle.dumps(("done", 1, "")),  # a pickle
    pickle.dumps(np.float64(1.0)),
    msgpack.packb(msgpack.ExtType(wire.ARRAY, msgpack.packb(["|O", [1], b"\0" * 8]))),
    msgpack.packb(msgpack.ExtType(wire.ARRAY, msgpack.packb(["<f8", [3], b"\0" * 8]))),
    msgpack.packb(msgpack.ExtType(wire.ARRAY, msgpack.packb(["|S0", [2**40], b""]))),
    msgpack.packb(msgpack.ExtType(wire.ARRAY, msgpack.packb(["<i4", [-1], b""]))),
    msgpack.packb(msgpack.ExtType(wire.ARRAY, msgpack.packb(["[('a','O')]", [1], b""]))),
    msgpack.packb(msgpack.ExtType(wire.SCALAR, msgpack.packb(["<f8", b"\0"]))),
    msgpack.packb(msgpack.ExtType(wire.HANDLE, msgpack.packb(7))),  # no handle hook
    msgpack.packb(msgpack.ExtType(99, b"")),  # unknown extension
    msgpack.packb(msgpack.ExtType(wire.COMPLEX, msgpack.packb(["a", 1]))),
    msgpack.packb(msgpack.ExtType(wire.RANGE, msgpack.packb([0, 1.5, 1]))),
    b"\x81\x90\x01",  # unhashable key
    b"\x93\x01\x02",  # truncated
    b"\x01\x02",  # extra data
    b"\xdd\xff\xff\xff\xff",  # 4G-item array
    b"\xc1",  # never used byte
    b"",
  ],
)
def test_frames_that_are_not_data_are_refused(frame):
  with pytest.raises(wire.WireError):
    wire.Codec().decode(frame)


def test_nested_containers_are_counted_as_they_are_read():
  c = wire.Codec(max_nodes=1000)
  with pytest.raises(wire.WireError, match="more than 1000 containers"):
    c.decode(msgpack.packb([[]] * 5000))
  assert c.decode(msgpack.packb([[]] * 500)) == [[]] * 500  # the count is per message
  assert c.decode(msgpack.packb([[]] * 500)) == [[]] * 500


def test_fuzz_random_and_truncated_frames():
  """Random bytes, truncations and bit flips of real messages: the decoder returns a value
  or raises WireError, nothing else (no crash, no other exception)."""
  rng = random.Random(0)
  c = wire.Codec(max_nodes=10_000)
  real = [
    c.encode(m)
    for m in (
      ["call", "Find", ("clip", "cup"), {"k": 1.5}],
      ["done", [1, (2, {3})], "out"],
      ["ok", np.arange(12, dtype=np.float32).reshape(3, 4)],
      ["err", "x" * 300],
      [2**80, 1j, slice(1, 2), range(3), Ellipsis, np.int8(3), b"\0" * 9],
    )
  ]
  frames = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))) for _ in range(1500)]
  for f in real:
    frames += [f[:i] for i in range(len(f))]
    for _ in range(300):
      b = bytearray(f)
      for _ in range(rng.randrange(1, 4)):
        b[rng.randrange(len(b))] = rng.getrandbits(8)
      frames.append(bytes(b))
  ok = 0
  for f in frames:
    try:
      c.decode(f)
      ok += 1
    except wire.WireError:
      pass
  assert 0 < ok < len(frames)


@pytest.mark.parametrize("size", [0, 5, 16383, 16384, 300_000])
def test_frames_match_multiprocessing_connection_both_ways(size):
  """The worker's framing (no multiprocessing import) is the host's Connection format."""
  import socket
  from multiprocessing.connection import Connection

  a, b = socket.socketpair()
  host, worker = Connection(a.detach()), wire.Frames(b.fileno())
  data = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
  data = data[:size]
  try:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a frame can fill the socket
      pool.submit(worker.send_bytes, data)
      assert host.recv_bytes() == data
      pool.submit(host.send_bytes, data)
      assert worker.recv_bytes(size) == data
    host.send_bytes(b"x" * 10)
    with pytest.raises(OSError, match="limit 9"):
      worker.recv_bytes(9)
  finally:
    host.close()
    b.close()
  a, b = socket.socketpair()
  a.sendall(b"\x00\x00\x00\x05ab")  # a frame cut short, then the end
  a.close()
  with pytest.raises(EOFError):
    wire.Frames(b.fileno()).recv_bytes(100)
  b.close()


def test_arrays_of_every_layout_round_trip():
  """Arrays travel as a byte view of their contiguous copy: strided, transposed, 0-d,
  empty, big-endian, string and datetime arrays all come back equal and writable."""
  c = wire.Codec()
  base = np.arange(24, dtype=np.int32).reshape(4, 6)
  for a in (
    base[:, ::2],
    base.T,
    np.array(3.5),
    np.zeros((0, 3)),
    base.astype(">i8"),
    np.array(["ab", "c"]),
    np.array(["2026-12-04"], dtype="M8[D]"),
    np.array([b"x", b"yz"]),
  ):
    out = c.decode(c.encode(a))
    assert out.dtype == a.dtype and out.shape == a.shape and np.array_equal(out, a)
    assert out.flags.writeable
