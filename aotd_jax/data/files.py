"""Dataset paths that may live on any filesystem `etils.epath` reaches: local, `gs://` (with the
`gcs` extra) or another fsspec protocol.

Annotation files, video folders, CoT shards and Hugging Face exports are named by the user; on
a pod they sit in a bucket. Local paths keep Python's own file I/O (and PyAV's native reads); a URL goes through
`epath`, so nothing creates a local folder named `gs:`.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a filesystem by protocol (`gs://b/x`, `memory://x`)."""
  return "://" in os.fspath(path)


def join(root: str | os.PathLike, name: str | os.PathLike) -> str:
  """`name` under `root`; an absolute path or a URL `name`, or an empty `root`, stays as it is."""
  root, name = os.fspath(root), os.fspath(name)
  if not root or os.path.isabs(name) or is_url(name):
    return name
  if is_url(root):
    return root.rstrip("/") + "/" + name
  return os.path.join(root, name)


def exists(path: str | os.PathLike) -> bool:
  """Whether a file or folder exists at `path`."""
  return epath.Path(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  """Whether `path` is a folder."""
  return epath.Path(path).is_dir() if is_url(path) else os.path.isdir(path)


def glob(folder: str | os.PathLike, pattern: str) -> list[str]:
  """The paths in `folder` matching the file-name `pattern` (`*.json`), sorted."""
  if is_url(folder):
    return sorted(os.fspath(p) for p in epath.Path(folder).glob(pattern))
  import glob as globlib  # pylint: disable=g-import-not-at-top

  return sorted(globlib.glob(os.path.join(os.fspath(folder), pattern)))


def read_text(path: str | os.PathLike) -> str:
  """The file's text as UTF-8, line endings as stored (csv needs `\\r\\n` kept).

  Raises:
    FileNotFoundError: no file at `path`.
  """
  if is_url(path):
    return epath.Path(path).read_bytes().decode("utf-8")
  with open(path, encoding="utf-8", newline="") as f:
    return f.read()


@contextlib.contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[str | IO[bytes]]:
  """A local path as it is (for readers with native file I/O), or an open binary file object
  for a URL, closed on exit.

  Raises:
    FileNotFoundError: no file at a URL `path` (a local path is left to the reader).
  """
  if not is_url(path):
    yield os.fspath(path)
    return
  with epath.Path(path).open("rb") as f:
    yield f


@contextlib.contextmanager
def open_lines(path: str | os.PathLike) -> Iterator[IO[str]]:
  """`path` open as UTF-8 text to read line by line (split at `\n` only, nothing translated),
  without holding the whole file; a URL through `epath`.

  Raises:
    FileNotFoundError: no file at `path`.
  """
  if not is_url(path):
    with open(path, encoding="utf-8", newline="\n") as f:
      yield f
    return
  import io  # pylint: disable=g-import-not-at-top

  with epath.Path(path).open("rb") as raw:
    yield io.TextIOWrapper(raw, encoding="utf-8", newline="\n")


def stat_key(path: str | os.PathLike) -> tuple[int, int]:
  """(modification time, size) of a file: what changes when it is rewritten (cache keys).

  Raises:
    OSError: no file at `path` (FileNotFoundError for a URL).
  """
  if is_url(path):
    st = epath.Path(path).stat()
    return int(st.mtime), int(st.length)
  st = os.stat(path)
  return st.st_mtime_ns, st.st_size


def isfile(path: str | os.PathLike) -> bool:
  """Whether `path` is a file."""
  return epath.Path(path).is_file() if is_url(path) else os.path.isfile(path)


def makedirs(path: str | os.PathLike) -> None:
  """Creates the folder `path` and its parents (a bucket prefix needs nothing, but is fine)."""
  if is_url(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` as UTF-8 to the file `path` (replacing it)."""
  if is_url(path):
    epath.Path(path).write_text(text, encoding="utf-8")
  else:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)


def append_text(path: str | os.PathLike, text: str) -> None:
  """Appends `text` as UTF-8 to the file `path` (made when absent), flushed to disk, so what a
  run logged survives its crash; on a bucket, where a file cannot be appended to, the file is
  written again whole."""
  if is_url(path):
    write_text(path, (read_text(path) if isfile(path) else "") + text)
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to the file `path` (replacing it)."""
  if is_url(path):
    epath.Path(path).write_bytes(data)
  else:
    with open(path, "wb") as f:
      f.write(data)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copies the file `src` to `dst`, either of them local or a URL."""
  if not is_url(src) and not is_url(dst):
    import shutil  # pylint: disable=g-import-not-at-top

    shutil.copyfile(src, dst)
  else:
    epath.Path(dst).write_bytes(epath.Path(src).read_bytes())


def remove(path: str | os.PathLike) -> None:
  """Deletes the file `path`."""
  if is_url(path):
    epath.Path(path).unlink()
  else:
    os.remove(path)
