"""tools/mutate.py's list still points at real code and real tests (fast: nothing is mutated)."""

import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mutate  # noqa: E402


@pytest.mark.parametrize("m", mutate.MUTATIONS, ids=lambda m: m.name)
def test_each_pattern_matches_one_line_and_its_tests_exist(m):
  text = open(os.path.join(ROOT, m.path)).read()
  line = text.splitlines()[mutate.find_line(text, m)]
  after = mutate.mutated_source(text, m)
  changed = [(a, b) for a, b in zip(text.splitlines(), after.splitlines()) if a != b]
  assert changed == [(line, re.match(r"\s*", line).group(0) + m.replace)]
  compile(after, m.path, "exec")  # a mutation must be a behaviour change, not a syntax error
  for t in m.tests:
    path, _, name = t.partition("::")
    src = open(os.path.join(ROOT, path)).read()
    assert not name or re.search(rf"^def {re.escape(name)}\(", src, re.M), t


def test_a_stale_pattern_is_named():
  m = mutate.Mutation("gone", "x.py", r"^nothing here$", "pass", (), "")
  with pytest.raises(ValueError, match=r"mutation gone: pattern .* matches 0 lines of x\.py"):
    mutate.find_line("a = 1\n", m)
  with pytest.raises(ValueError, match="matches 2 lines"):
    mutate.find_line("nothing here\nnothing here\n", m)


def test_names_are_unique_and_unknown_names_are_refused(capsys):
  names = [m.name for m in mutate.MUTATIONS]
  assert len(set(names)) == len(names)
  with pytest.raises(SystemExit):
    mutate.main(["no_such_mutation"])
  assert "unknown mutation(s) ['no_such_mutation']" in capsys.readouterr().err
