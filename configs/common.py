"""Helpers shared by config files.

`parse_arg` reads the string after a config file's `:` (`--config=configs/x.py:ARG`): a comma
list of `key=value` items, optionally led by one bare value (a preset such as `h100x8`). A
config that takes such an arg can use it so that a malformed or unknown item fails the same
way everywhere: naming the config file, the item and the keys it accepts.
"""
from __future__ import annotations

from typing import Iterable, Mapping


def parse_arg(arg: str | None, keys: Iterable[str], *, where: str,
              positional: str | None = None,
              defaults: Mapping[str, str] | None = None) -> dict[str, str]:
  """`"h100x8,hf_dir=D,datasets=star+nextqa"` -> {"target": "h100x8", "hf_dir": "D", ...}.

  Args:
    arg: the config arg (None or "": no items).
    keys: the accepted keys.
    where: the config file, for messages (`configs/distill/lnv7b.py`).
    positional: the key that a leading item without `=` sets (None: every item needs `key=`).
    defaults: values for keys not given (keys neither given nor defaulted are absent).
  Raises:
    ValueError naming `where` and the item: an unknown key, an item without `=` (other than a
    leading positional one), or a key given twice.
  """
  keys = list(keys)
  out, given = dict(defaults or {}), set()
  items = [i.strip() for i in (arg or "").split(",") if i.strip()]
  for n, item in enumerate(items):
    key, sep, value = item.partition("=")
    if not sep and n == 0 and positional is not None:
      key, value = positional, item
    elif not sep or key.strip() not in keys:
      raise ValueError(f"{where}: option {item!r}: expected key=value with key in "
                       f"{[k for k in keys if k != positional]}")
    key = key.strip()
    if key in given:
      raise ValueError(f"{where}: option {key!r} given twice in {arg!r}")
    given.add(key)
    out[key] = value.strip()
  return out
