"""The sandbox's wire format: data only, no pickle, in either direction.

Imported by the host (`aotd_jax.agent.sandbox`) and by the worker (`sandbox_worker.py`, as a
plain module next to it), so it uses only the standard library, numpy and msgpack.

A message is one msgpack document. msgpack's own types carry None, bool, int (64-bit), float,
str (lone surrogates kept), bytes, list and dict; a few extension types carry the rest:

  TUPLE, SET, FROZENSET   the items, as a msgpack list
  COMPLEX                 [real, imag]
  BIGINT                  the signed little-endian bytes of an int outside 64 bits
  ARRAY                   [dtype.str, shape, raw bytes]; numeric, bool, bytes and str dtypes
                          only (object and structured dtypes are refused both ways)
  SCALAR                  a numpy scalar: [dtype.str, raw bytes]
  SLICE, RANGE            [start, stop, step]
  ELLIPSIS                empty
  HANDLE                  an object kept by the host; what the payload holds is up to the two
                          sides (`encode_other` / `decode_handle`)

Decoding never builds anything else: an unknown extension, a bad dtype, a size that does not
match its bytes, an unhashable key, a truncated frame all raise `WireError`. Any type the
encoder does not know goes to `encode_other` (the host turns it into a handle; the worker
refuses it).
"""

import os
import re
import struct

import msgpack
import numpy as np

TUPLE, SET, FROZENSET, COMPLEX, BIGINT, ARRAY, SCALAR, SLICE, RANGE, ELLIPSIS, HANDLE = range(1, 12)
# Kinds of dtype that travel by value: bool, ints, floats, complex, bytes, str, datetimes.
_DTYPE = re.compile(
  r"^[<>|=]?(b1|[iu][1248]|f[248]|c(8|16)|f16|c32|S\d{1,9}|U\d{1,9}|"
  r"[mM]8(\[\d{0,3}[a-zA-Z]{1,2}\])?)$"
)
MAX_DIMS = 32


class WireError(Exception):
  """A message could not be encoded or decoded."""


def _dtype(text) -> np.dtype:
  if not isinstance(text, str) or not _DTYPE.match(text):
    raise WireError(f"refused dtype {str(text)[:40]!r}")
  dt = np.dtype(text)
  if dt.itemsize == 0:
    raise WireError(f"refused empty dtype {text!r}")
  return dt


def array_ok(a) -> bool:
  """Whether an array's dtype may travel by value."""
  return bool(_DTYPE.match(a.dtype.str)) and a.dtype.fields is None


class Codec:
  """Encodes and decodes messages.

  Args:
    encode_other: called with any object of a type the wire does not carry; returns the
      handle payload (any encodable value) or raises `TypeError`.
    decode_handle: called with a handle's decoded payload; returns the object it stands for
      or raises `WireError`.
    max_array_bytes: arrays (and scalars) larger than this go to `encode_other` instead.
  """

  def __init__(self, encode_other=None, decode_handle=None, max_array_bytes=None, max_nodes=None):
    self.encode_other = encode_other
    self.decode_handle = decode_handle
    self.max_array_bytes = max_array_bytes
    self.max_nodes = max_nodes
    self._left = None

  # -- encoding
  def encode(self, obj) -> bytes:
    return msgpack.packb(
      obj,
      default=self._default,
      strict_types=True,
      use_bin_type=True,
      unicode_errors="surrogatepass",
    )

  def _ext(self, code, payload):
    return msgpack.ExtType(code, self.encode(payload))

  def _default(self, obj):
    t = type(obj)
    if t is tuple:
      return self._ext(TUPLE, list(obj))
    if t is int:
      n = (obj.bit_length() + 8) // 8
      return msgpack.ExtType(BIGINT, obj.to_bytes(n, "little", signed=True))
    if t is bool:  # pragma: no cover -- msgpack packs bools itself
      return obj
    if t is set or t is frozenset:
      return self._ext(SET if t is set else FROZENSET, list(obj))
    if t is complex:
      return self._ext(COMPLEX, [obj.real, obj.imag])
    if t is bytearray:
      return bytes(obj)
    if t is slice:
      return self._ext(SLICE, [obj.start, obj.stop, obj.step])
    if t is range:
      return self._ext(RANGE, [obj.start, obj.stop, obj.step])
    if obj is Ellipsis:
      return msgpack.ExtType(ELLIPSIS, b"")
    small = self.max_array_bytes is None or getattr(obj, "nbytes", 0) <= self.max_array_bytes
    if t is np.ndarray and small and array_ok(obj):
      # The bytes as a view (no copy of a contiguous array before msgpack's own).
      raw = memoryview(np.ascontiguousarray(obj).reshape(-1).view(np.uint8))
      return self._ext(ARRAY, [obj.dtype.str, list(obj.shape), raw])
    if isinstance(obj, np.generic) and small and array_ok(obj):
      return self._ext(SCALAR, [obj.dtype.str, obj.tobytes()])
    if self.encode_other is None:
      raise TypeError(f"a {t.__name__} cannot be sent")
    return self._ext(HANDLE, self.encode_other(obj))

  # -- decoding
  def decode(self, data: bytes):
    """The message in `data`; raises `WireError` for anything but one well-formed message.

    With `max_nodes`, a message holding more lists, maps and extension values than that is
    refused as it is read (a frame of nested empty lists would otherwise become ~50 bytes of
    host memory per byte).
    """
    top = self._left is None
    if top and self.max_nodes is not None:
      self._left = [self.max_nodes]
    hooks = {} if self._left is None else {"list_hook": self._count, "object_hook": self._count}
    try:
      return msgpack.unpackb(
        data,
        ext_hook=self._ext_hook,
        strict_map_key=False,
        raw=False,
        unicode_errors="surrogatepass",
        use_list=True,
        **hooks,
      )
    except WireError:
      raise
    except Exception as e:  # truncated, extra data, unhashable keys, too deep, out of memory
      raise WireError(f"{type(e).__name__}: {str(e)[:100]}") from None
    finally:
      if top:
        self._left = None

  def _count(self, obj):
    self._left[0] -= 1
    if self._left[0] < 0:
      raise WireError(f"message holds more than {self.max_nodes} containers")
    return obj

  def _ext_hook(self, code, data):
    if code == BIGINT:
      return int.from_bytes(data, "little", signed=True)
    if code == ELLIPSIS:
      if data:
        raise WireError("bad ellipsis")
      return Ellipsis
    if code not in (TUPLE, SET, FROZENSET, COMPLEX, ARRAY, SCALAR, SLICE, RANGE, HANDLE):
      raise WireError(f"unknown extension type {code}")
    p = self.decode(data)
    if code == HANDLE:
      if self.decode_handle is None:
        raise WireError("unexpected handle")
      return self.decode_handle(p)
    if not isinstance(p, list):
      raise WireError(f"extension {code} holds a {type(p).__name__}")
    if code == TUPLE:
      return tuple(p)
    if code == SET:
      return set(p)
    if code == FROZENSET:
      return frozenset(p)
    if code == COMPLEX:
      if len(p) != 2 or not all(type(x) is float for x in p):
        raise WireError("bad complex")
      return complex(*p)
    if code in (SLICE, RANGE):
      if len(p) != 3:
        raise WireError("bad slice")
      if code == RANGE:
        if not all(type(x) is int for x in p):
          raise WireError("bad range")
        return range(*p)
      return slice(*p)
    if code == SCALAR:
      if len(p) != 2 or type(p[1]) is not bytes:
        raise WireError("bad scalar")
      dt = _dtype(p[0])
      if len(p[1]) != dt.itemsize:
        raise WireError("scalar size does not match its dtype")
      return np.frombuffer(p[1], dt)[0]
    # ARRAY
    if len(p) != 3 or type(p[1]) is not list or type(p[2]) is not bytes:
      raise WireError("bad array")
    dt, shape, raw = _dtype(p[0]), p[1], p[2]
    if len(shape) > MAX_DIMS or not all(type(n) is int and n >= 0 for n in shape):
      raise WireError("bad array shape")
    count = 1
    for n in shape:
      count *= n
    if count * dt.itemsize != len(raw):
      raise WireError("array size does not match its bytes")
    return np.frombuffer(raw, dt).reshape(shape).copy()


_LEN = struct.Struct("!i")
_LONG_LEN = struct.Struct("!Q")
_SMALL = 16384


class Frames:
  """Length-prefixed frames on a socket's file descriptor, in the format of
  `multiprocessing.connection.Connection` (which the host uses): a 4-byte big-endian signed
  length, or -1 and an 8-byte length for frames of 2 GiB and more, then the bytes. For the
  worker, which then need not import `multiprocessing` (a smaller zygote forks faster).
  """

  def __init__(self, fd: int):
    self.fd = fd

  def send_bytes(self, data) -> None:
    n = len(data)
    header = _LEN.pack(n) if n < 0x7FFFFFFF else _LEN.pack(-1) + _LONG_LEN.pack(n)
    if n < _SMALL:
      self._write(header + bytes(data))
    else:
      self._write(header)
      self._write(data)

  def recv_bytes(self, maxlength: int) -> bytes:
    """The next frame; `OSError` if it is longer than `maxlength`, `EOFError` at the end."""
    (n,) = _LEN.unpack(self._read(4))
    if n == -1:
      (n,) = _LONG_LEN.unpack(self._read(8))
    if n < 0 or n > maxlength:
      raise OSError(f"bad message length {n} (limit {maxlength})")
    return self._read(n)

  def _write(self, data) -> None:
    view = memoryview(data)
    while view:
      view = view[os.write(self.fd, view) :]

  def _read(self, n: int) -> bytes:
    chunks, left = [], n
    while left:
      chunk = os.read(self.fd, min(left, 1 << 20))
      if not chunk:
        raise EOFError("channel closed")
      chunks.append(chunk)
      left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
