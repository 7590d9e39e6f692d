"""tests/conftest.py's file order for `make test`: every listed file exists, none twice, and the
listed files come first in their order with every other test kept in place."""

import pathlib
import types

from conftest import LONGEST_FILES, longest_first

TESTS = pathlib.Path(__file__).resolve().parent


def test_every_listed_file_exists_once():
  assert len(set(LONGEST_FILES)) == len(LONGEST_FILES)
  missing = [name for name in LONGEST_FILES if not (TESTS / name).is_file()]
  assert not missing, (
    f"tests/conftest.py LONGEST_FILES names files that are not in tests/: {missing}"
  )


def test_listed_files_go_first_and_the_rest_keep_their_order():
  def item(name, test):
    return types.SimpleNamespace(path=TESTS / name, name=test)

  items = [
    item("test_a.py", "t1"),
    item(LONGEST_FILES[1], "t2"),
    item("test_b.py", "t3"),
    item(LONGEST_FILES[0], "t4"),
    item(LONGEST_FILES[1], "t5"),
    item("test_a.py", "t6"),
  ]
  assert [i.name for i in longest_first(items)] == ["t4", "t2", "t5", "t1", "t3", "t6"]
