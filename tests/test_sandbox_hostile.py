"""A corpus of hostile programs: every one must fail cleanly, fast, and leave the host intact.

Each program is refused by the AST allow-list or stopped by the worker's limits; the test
checks `ok=False` with a one-line reason that names what was refused, a run time within
timeout + 5 s, that this process's threads / file descriptors / memory are unchanged, that
no file appears in the (temporary) working directory, and that a valid program still runs
with its full trace afterwards.
"""

import concurrent.futures
import re
import os
import textwrap
import threading
import time
import types

import numpy as np
import pytest

from aotd_jax.agent import Sandbox

TIMEOUT_S = 1.0
# The corpus's step limit: far below what 1 s of CPU executes, so a program the step limit
# must stop is stopped by it even on a loaded machine (20k traced lines take ~20 ms alone).
STEPS = 20_000
HEADER = "def execute_command(video_clip, query, possible_answers):\n"


def body(code: str) -> str:
  """Wraps statements as the body of execute_command."""
  return HEADER + textwrap.indent(textwrap.dedent(code).strip("\n"), "    ") + "\n"


# (id, program, a substring the reason must contain)
HOSTILE = [
  # --- imports in every spelling
  ("import", "import os\n" + body("return 1"), "import is not allowed"),
  ("import_in_fn", body("import os\nreturn os.getcwd()"), "import is not allowed"),
  ("from_import", body("from os import system\nsystem('touch x')"), "import is not allowed"),
  ("dunder_import", body("return __import__('os')"), "dunder name '__import__'"),
  ("builtins_dict", body("return __builtins__['__import__']('os')"), "__builtins__"),
  ("importlib_via_loader", body("return __loader__.load_module('os')"), "__loader__"),
  ("subclasses_walk", body("return ().__class__.__base__.__subclasses__()"), "'.__class__'"),
  ("spec_attr", body("return video_clip.__spec__"), "'.__spec__'"),
  # --- eval / exec / compile / dangerous builtins
  ("eval", body("return eval('1+1')"), "builtin 'eval'"),
  ("exec", body("exec('import os')"), "builtin 'exec'"),
  ("compile", body("return compile('1', 'f', 'eval')"), "builtin 'compile'"),
  ("open_write", body("open('pwned.txt', 'w').write('x')"), "builtin 'open'"),
  ("getattr", body("return getattr(query, '__class__')"), "builtin 'getattr'"),
  ("setattr", body("setattr(video_clip, 'frames', None)"), "builtin 'setattr'"),
  ("vars", body("return vars()"), "builtin 'vars'"),
  ("globals", body("return globals()['__builtins__']"), "builtin 'globals'"),
  ("locals", body("return locals()"), "builtin 'locals'"),
  ("breakpoint", body("breakpoint()"), "builtin 'breakpoint'"),
  ("input", body("return input()"), "builtin 'input'"),
  ("help", body("help()"), "builtin 'help'"),
  ("type_object", body("return type(query).mro()"), "builtin 'type'"),
  ("object_base", body("return object"), "builtin 'object'"),
  ("memoryview", body("return memoryview(b'x')"), "builtin 'memoryview'"),
  ("exit", body("exit()"), "builtin 'exit'"),
  ("quit", body("quit(0)"), "builtin 'quit'"),
  ("raise_systemexit", body("raise SystemExit(0)"), "builtin 'SystemExit'"),
  ("raise_keyboardinterrupt", body("raise KeyboardInterrupt"), "builtin 'KeyboardInterrupt'"),
  # --- format / f-string attribute tricks
  ("format_walk", body("return '{0.__class__}'.format(query)"), "'.format'"),
  ("format_map", body("return '{q.__class__}'.format_map({'q': query})"), "'.format_map'"),
  ("str_format", body("return str.format('{0.__class__.__mro__}', query)"), "'.format'"),
  ("fstring_dunder", body("return f'{query.__class__}'"), "'.__class__'"),
  ("format_builtin", body("return format(query, 's')"), "builtin 'format'"),
  # --- frame, traceback, generator and code walks
  ("gen_frame", body("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals"), "'.gi_frame'"),
  (
    "tb_frame",
    body("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    return e.__traceback__.tb_frame"),
    "'.__traceback__'",
  ),
  ("f_back", body("return query.f_back"), "'.f_back'"),
  ("tb_next", body("return video_clip.tb_next"), "'.tb_next'"),
  ("code_attr", body("return (lambda: 0).co_consts"), "'.co_consts'"),
  ("func_globals", body("return (lambda: 0).func_globals"), "'.func_globals'"),
  ("cr_frame", body("return video_clip.cr_frame"), "'.cr_frame'"),
  ("private_handle_attr", body("return video_clip._hid"), "'._hid'"),
  ("ndarray_tofile", body("video_clip.frames.tofile('x.bin')"), "'.tofile'"),
  ("ndarray_ctypes", body("return video_clip.frames.ctypes"), "'.ctypes'"),
  # --- scoping and syntax outside the subset
  ("global", "x = 1\n" + body("global x\nx = 2"), "'global'"),
  ("nonlocal", body("y = 1\ndef f():\n    nonlocal y\n    y = 2\nf()"), "'nonlocal'"),
  ("class", body("class A:\n    pass\nreturn A"), "class definitions"),
  ("with", body("with video_clip as c:\n    pass"), "'with'"),
  ("yield", body("yield 1"), "generators"),
  ("lambda_dunder_arg", body("f = lambda __x: __x\nreturn f(1)"), "dunder name '__x'"),
  ("dunder_kwarg", body("return dict(__class__=1)"), "dunder keyword"),
  ("top_level_loop", "while True:\n    pass\n" + body("return 1"), "at top level"),
  ("no_entry_point", "def main():\n    return 1\n", "does not define"),
  ("syntax_error", body("return (1 +"), "syntax error"),
  (
    "except_nested_minus",
    body("try:\n    pass\nexcept " + "-" * 900 + "x:\n    pass"),
    "'except <UnaryOp expression>' is not allowed",
  ),
  ("null_byte", body("return 1") + "\x00", "null bytes|could not be parsed"),
  # --- loops that try to swallow the limits
  (
    "catch_baseexception",
    body("while True:\n    try:\n        pass\n    except BaseException:\n        pass"),
    "'except BaseException'",
  ),
  (
    "bare_except",
    body("while True:\n    try:\n        pass\n    except:\n        pass"),
    "bare 'except:'",
  ),
  (
    "finally_continue",
    body("while True:\n    try:\n        pass\n    finally:\n        continue"),
    "inside 'finally'",
  ),
  # --- runtime limits: steps, time, memory, recursion, output, tool calls, values
  ("infinite_loop", body("while True:\n    pass"), "step limit"),
  (
    "loop_catch_exception",
    body("while True:\n    try:\n        1 / 0\n    except Exception:\n        pass"),
    "step limit",
  ),
  (
    "loop_finally",
    body("while True:\n    try:\n        pass\n    finally:\n        x = 1"),
    "step limit",
  ),
  ("huge_int", body("return 10 ** (10 ** 9)"), "timed out"),
  ("huge_pow", body("return pow(7, 10 ** 10)"), "timed out"),
  ("c_level_loop", body("return max(range(10 ** 18))"), "timed out"),
  ("memory_string", body("return 'a' * (10 ** 12)"), "memory limit"),
  ("memory_list", body("return [0] * (10 ** 10)"), "memory limit"),
  (
    "memory_growth",
    body("x = []\nwhile True:\n    x.append('a' * 10 ** 6)"),
    "memory limit|timed out",
  ),
  ("recursion", body("def f(n):\n    return f(n + 1)\nreturn f(0)"), "recursion limit"),
  ("lambda_recursion", body("f = lambda g: g(g)\nreturn f(f)"), "recursion limit"),
  (
    "recursion_caught",
    body(
      "def f(n):\n    try:\n        return f(n + 1)\n"
      "    except Exception:\n        return f(n + 1)\nreturn f(0)"
    ),
    "recursion limit|step limit|timed out",
  ),
  ("output_flood", body("while True:\n    print('x' * 1000)"), "output limit"),
  ("output_once", body("print('x' * 10 ** 7)"), "output limit"),
  ("tool_flood", body("while True:\n    Noop()"), "tool-call limit"),
  ("handle_method", body("return video_clip.trim()"), "calling methods"),
  ("unsendable_value", body("return lambda: 1"), "cannot be sent"),
  ("oversized_value", body("return 'a' * (4 << 20)"), "message rejected"),
  (
    "deep_value",
    body("x = []\nfor i in range(2000):\n    x = [[[[[[[[[[x]]]]]]]]]]\nreturn x"),
    "cannot be sent|recursion",
  ),
  (
    "fancy_index_on_handle",
    body("return len(video_clip[[0] * 100000])"),
    "index must be ints, slices or strings",
  ),
  ("tool_error", body("return Fail(video_clip)"), "tool Fail failed"),
  # --- limits a program tries to catch or dodge (they end the run from outside it)
  (
    "raise_in_finally",
    body(
      "while True:\n    try:\n        try:\n            pass\n"
      "        finally:\n            raise ValueError('x')\n"
      "    except ValueError:\n        pass"
    ),
    "step limit",
  ),
  (
    "memory_caught",
    body("try:\n    x = 'a' * (10 ** 12)\nexcept Exception:\n    return 'survived'"),
    "memory limit exceeded",
  ),
  (
    "memory_caught_then_tool",
    body("try:\n    x = [0] * (10 ** 10)\nexcept Exception:\n    pass\nreturn Noop()"),
    "memory limit exceeded",
  ),
  (
    "memory_in_finally",
    body("try:\n    x = [0] * (10 ** 10)\nfinally:\n    raise ValueError('swallowed')"),
    "memory limit exceeded",
  ),
  (
    "recursion_caught_once",
    body(
      "def f(n):\n    return f(n + 1)\ntry:\n    f(0)\nexcept Exception:\n    return 'survived'"
    ),
    "recursion limit exceeded",
  ),
  (
    "recursion_in_handler",
    body(
      "def f(n):\n    try:\n        return f(n + 1)\n"
      "    except RuntimeError:\n        return 0\nreturn f(0)"
    ),
    "recursion limit exceeded",
  ),
  (
    "output_caught",
    body("try:\n    print('x' * 10 ** 6)\nexcept Exception:\n    return 'survived'"),
    "output limit",
  ),
  (
    "step_limit_in_finally",
    body("try:\n    while True:\n        pass\nfinally:\n    return_value = 1"),
    "step limit",
  ),
  # --- the channel: a result too large for the worker's frame limit ends the worker
  ("oversized_tool_result", body("return len(Big())"), "channel failed"),
]

# --- generated classes -------------------------------------------------------------------------
from aotd_jax.agent import sandbox_policy  # noqa: E402

# Every builtin outside the allow-list, by name (refused before anything runs).
HOSTILE += [
  (f"builtin_{name}", body(f"return {name}"), f"builtin '{name}'")
  for name in sorted(sandbox_policy.FORBIDDEN_NAMES)
  if name
  not in {
    "eval",
    "exec",
    "compile",
    "open",
    "getattr",
    "setattr",
    "vars",
    "globals",
    "locals",
    "breakpoint",
    "input",
    "help",
    "type",
    "object",
    "memoryview",
    "exit",
    "quit",
    "format",
  }
]
# Every forbidden attribute, on a handle and on plain data.
HOSTILE += [
  (f"attr_{a}_{on}", body(f"return {on}.{a}"), f"'.{a}'")
  for a in sorted(sandbox_policy.FORBIDDEN_ATTRIBUTES)
  for on in ("video_clip", "query")
]
# A limit swallowed, for each exception class a program may catch: a loop that raises and
# catches it, and one that raises it from a `finally` (which replaced the step limit).
HOSTILE += [
  (
    f"swallow_{e}",
    body(f"while True:\n    try:\n        raise {e}('x')\n    except {e}:\n        pass"),
    "step limit",
  )
  for e in sorted(sandbox_policy.SAFE_EXCEPTIONS)
]
HOSTILE += [
  (
    f"finally_raise_{e}",
    body(
      f"while True:\n    try:\n        try:\n"
      f"            pass\n        finally:\n"
      f"            raise {e}('x')\n    except {e}:\n"
      f"        pass"
    ),
    "step limit",
  )
  for e in sorted(sandbox_policy.SAFE_EXCEPTIONS)
]
# MemoryError / RecursionError caught by `except Exception` at various places.
HOSTILE += [
  (
    "memory_caught_in_callee",
    body(
      "def f():\n    try:\n        return [1] * (10 ** 11)\n"
      "    except Exception:\n        return []\n"
      "return len(f())"
    ),
    "memory limit exceeded",
  ),
  (
    "memory_dict_caught",
    body("try:\n    d = dict.fromkeys(range(10 ** 10))\nexcept Exception:\n    return 1"),
    "memory limit exceeded|step limit|timed out",
  ),
  (
    "memory_then_tool_result",
    body(
      "keep = []\ntry:\n    while True:\n"
      "        keep.append('a' * 10 ** 7)\n"
      "except Exception:\n    pass\nreturn Echo('b' * 10 ** 5)"
    ),
    "memory limit exceeded",
  ),
  (
    "memory_join_caught",
    body("try:\n    s = ''.join(['ab'] * (10 ** 10))\nexcept Exception as e:\n    return str(e)"),
    "memory limit exceeded|timed out",
  ),
  (
    "recursion_mutual",
    body(
      "def a(n):\n    return b(n)\ndef b(n):\n    return a(n)\n"
      "try:\n    a(0)\nexcept Exception:\n    return 1"
    ),
    "recursion limit exceeded",
  ),
  # The worker's own guard (a `finally` that starts with a compound statement) and the
  # host's guard in the text of a tuple `except` clause.
  (
    "memory_in_compound_finally",
    body("try:\n    x = [0] * (10 ** 10)\nfinally:\n    if True:\n        raise ValueError('x')"),
    "memory limit exceeded",
  ),
  (
    "memory_caught_by_tuple",
    body("try:\n    x = [0] * (10 ** 10)\nexcept (KeyError,\n        Exception):\n    return 1"),
    "memory limit exceeded",
  ),
  (
    "recursion_in_finally",
    body("def f(n):\n    try:\n        pass\n    finally:\n        f(n + 1)\nreturn f(0)"),
    "recursion limit exceeded",
  ),
  (
    "recursion_comprehension",
    body("f = lambda n: [f(n + 1) for _ in [0]]\ntry:\n    f(0)\nexcept Exception:\n    return 1"),
    "recursion limit exceeded",
  ),
  (
    "recursion_then_loop",
    body(
      "def f(n):\n    try:\n        return f(n + 1)\n"
      "    except Exception:\n        while True:\n"
      "            pass\nreturn f(0)"
    ),
    "recursion limit exceeded",
  ),
]
# Self-referencing and DAG-shaped data sent to every sink: the worker's own encoder meets
# them (the wire has no references), so the host never walks them.
_DAG = "x = [1]\nfor i in range(60):\n    x = [x, x]\n"
_CYCLE = "x = []\nx.append(x)\n"
HOSTILE += [
  ("dag_to_tool", body(_DAG + "return Echo(x)"), "timed out"),
  ("dag_to_handle_op", body(_DAG + "return x in video_clip"), "timed out"),
  ("dag_as_value", body(_DAG + "return x"), "timed out"),
  (
    "dag_dict_to_tool",
    body("x = {}\nfor i in range(60):\n    x = {'a': x, 'b': x}\nreturn Echo(x)"),
    "timed out",
  ),
  ("cycle_to_tool", body(_CYCLE + "return Echo(x)"), "cannot be sent"),
  ("cycle_to_handle_index", body(_CYCLE + "return video_clip[x]"), "cannot be sent"),
  ("cycle_as_value", body(_CYCLE + "return x"), "cannot be sent"),
  ("cycle_dict_as_value", body("x = {}\nx['x'] = x\nreturn x"), "cannot be sent"),
  ("cycle_in_error_message", body(_CYCLE + "raise ValueError(x)"), "ValueError"),
  ("dag_printed", body(_DAG + "print(x)"), "timed out|memory limit|output limit"),
  ("many_containers", body("return Echo([[]] * 200000)"), "containers"),
  ("many_containers_value", body("return [[]] * 200000"), "containers"),
]
# Host work on program data is bounded: error messages, handle texts, copies per read.
HOSTILE += [
  ("tool_error_with_data", body("return Raise([list(range(100))] * 100)"), "tool Raise failed"),
  ("tool_error_long_text", body("return Raise('x' * 500000)"), "tool Raise failed"),
  ("tool_keyerror_tuple", body("return Lookup((1, (2, (3,))) * 1000)"), "tool Lookup failed"),
  ("handle_long_attr", body("return video_clip.a" + "a" * 5000), "attr failed"),
  (
    "handle_contains_data",
    body("return [list(range(1000))] * 100 in video_clip"),
    "contains failed",
  ),
  (
    "slow_handle_reads",
    body("n = 0\nfor i in range(20):\n    n += video_clip.slow\nreturn n"),
    "timed out",
  ),
  (
    "frames_reread",
    body("n = 0\nfor i in range(1000):\n    n += len(video_clip.fresh)\nreturn n"),
    "handle memory cap",
  ),
  (
    "frames_reread_kept",
    body("keep = []\nfor i in range(1000):\n    keep.append(video_clip.fresh)\nreturn len(keep)"),
    "handle memory cap",
  ),
]
# Bytes the program chose, echoed back by tools (the old channel's desync / pickle path):
# they come back as plain strings, nothing is unpickled or run, and the run then fails on
# purpose with the comparison in its message.
HOSTILE += [
  (
    f"echo_{name}",
    body(
      f"p = {payload}\nr = Echo(p)\nq = Find(video_clip, p)\n"
      f"raise ValueError('echo ' + str(r == p and q == p))"
    ),
    "echo True",
  )
  for name, payload in (
    ("pickle", repr("cos\nsystem\n(S'touch pwned'\ntR.")),
    ("frame_header", "chr(0) * 3 + chr(9) + chr(0x93) + 'done'"),
    ("msgpack_ext", "chr(0xc7) + chr(40) + chr(2) + '|O' * 20"),
    ("huge_length", "chr(0xff) * 8 + 'x' * 100"),
    ("surrogates", "chr(0xd800) + chr(0xdfff)"),
    ("nul", "chr(0) * 1000"),
  )
]


class Clip:
  """A stand-in for experts.VideoClip: frames stay in the host, the program gets a handle."""

  def __init__(self, frames):
    self.frames = frames
    self.start_frame = 0

  def __len__(self):
    return len(self.frames)

  def trim(self):  # a method: programs must not call it through a handle
    return self

  @property
  def slow(self):  # host work on a handle operation counts against the program's time
    time.sleep(0.2)
    return 1

  @property
  def fresh(self):  # a new 2 MB copy on every read (beyond array_by_value_bytes: a handle)
    return np.zeros(2 << 20, np.uint8)


def _tools():
  def fail(clip):
    raise RuntimeError("detector exploded")

  def raise_(x):
    raise ValueError(x)

  return {
    "Noop": lambda: None,
    "Fail": fail,
    "Big": lambda: "x" * (65 << 20),
    "Echo": lambda x: x,
    "Find": lambda clip, name: name,
    "Raise": raise_,
    "Lookup": lambda key: {}[key],
    "Count": lambda clip, name: int(clip.frames.shape[0]),
  }


def _args():
  return {
    "video_clip": Clip(np.zeros((4, 8, 8, 3), np.uint8)),
    "query": "what?",
    "possible_answers": ["a", "b", "c", "d"],
  }


def _read(path: str) -> str:
  """A /proc file, or "" when its thread or process ended meanwhile (JAX and pytest threads come
  and go while the test looks)."""
  try:
    with open(path) as f:
      return f.read()
  except (FileNotFoundError, ProcessLookupError):
    return ""


def _children() -> list[str]:
  """Pids of this process's children (every thread's)."""
  return [
    pid
    for task in os.listdir("/proc/self/task")
    for pid in _read(f"/proc/self/task/{task}/children").split()
  ]


def _open_fds():
  return len(os.listdir("/proc/self/fd"))


def _rss_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return 0.0


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
  cwd = tmp_path_factory.mktemp("sandbox_cwd")
  with Sandbox(
    num_workers=2,
    memory_mb=256,
    cwd=str(cwd),
    max_message_bytes=1 << 20,
    max_handle_bytes=64 << 20,
    max_message_nodes=100_000,
  ) as sb:
    yield sb, cwd


def test_corpus_is_large_enough():
  assert len(HOSTILE) >= 150
  assert len({name for name, _, _ in HOSTILE}) == len(HOSTILE)


def test_hostile_corpus(sandbox, tmp_path, monkeypatch):
  sb, cwd = sandbox
  monkeypatch.chdir(tmp_path)
  threads, fds, rss = threading.active_count(), _open_fds(), _rss_mb()
  earlier_children = set(_children())  # other tests' processes are not this test's business

  def run(item):
    name, source, _ = item
    t0 = time.perf_counter()
    # 20 tool calls: `tool_flood` passes the limit in 21 round trips, well inside 1 s even on
    # a loaded box (at load ~33, 50 round trips once ran past it).
    ex = sb.run(source, _tools(), _args(), timeout_s=TIMEOUT_S, max_steps=STEPS, max_tool_calls=20)
    return name, ex, time.perf_counter() - t0

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(run, HOSTILE))
  failures = []
  for (name, _, expected), (_, ex, seconds) in zip(HOSTILE, results):
    if ex.ok:
      failures.append(f"{name}: ran (value {ex.value!r})")
    elif (
      not ex.error or "\n" in ex.error or len(ex.error) > 1000 or not re.search(expected, ex.error)
    ):
      failures.append(f"{name}: reason {ex.error!r} does not match {expected!r}")
    elif seconds > TIMEOUT_S + 60.0:
      # A stall, not a speed check: unmetered host work on program data (a 2^60-leaf DAG
      # walked, a summary of it) runs for hours; a loaded CI box has taken 7 s for a run
      # that a kill plus a replacement worker ends.
      failures.append(f"{name}: took {seconds:.2f} s (the host stalled)")
  assert not failures, "\n".join(failures)

  # The host is healthy: no new threads, no leaked descriptors, memory barely moved, and
  # nothing was written where the programs ran or where the test runs.
  assert threading.active_count() == threads
  assert _open_fds() <= fds + 2
  assert _rss_mb() - rss < 100
  assert os.listdir(cwd) == [] and os.listdir(tmp_path) == []
  # Every killed worker was reaped (no zombie child) and replaced (the pool is full).
  children = [pid for pid in _children() if pid not in earlier_children]
  states = [_read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()[:1] for pid in children]
  assert ["Z"] not in states, states
  pool = list(sb._idle.queue)
  assert len(pool) == 2 and all(w.alive() for w in pool)

  # Valid programs still run, with their full trace.
  src = body("""
      n = Count(video_clip, "cup")
      print("frames", len(video_clip), n)
      return possible_answers[n % 4]
  """)
  ex = sb.run(src, _tools(), _args(), timeout_s=TIMEOUT_S)
  assert ex.ok, ex.error
  assert ex.value == "a" and ex.stdout == "frames 4 4\n"
  assert [c.name for c in ex.trace] == ["Count"]
  assert ex.trace[0].args["name"] == "cup" and ex.trace[0].result == 4


def test_failed_runs_keep_the_trace_so_far(sandbox):
  sb, _ = sandbox
  src = body("""
      n = Count(video_clip, "cup")
      while True:
          pass
  """)
  ex = sb.run(src, _tools(), _args(), timeout_s=TIMEOUT_S, max_steps=10_000)
  assert not ex.ok and "step limit" in ex.error
  assert [c.name for c in ex.trace] == ["Count"]


def test_worker_holds_even_if_the_allow_list_were_bypassed(tmp_path, monkeypatch):
  """Defence in depth: with the AST check switched off and `open` handed to the program,
  the worker still cannot create a file, import a module or start a process."""
  from aotd_jax.agent import sandbox_policy

  monkeypatch.setattr(sandbox_policy, "validate", lambda source, **kw: None)
  monkeypatch.setattr(
    sandbox_policy,
    "ALLOWED_NAMES",
    sandbox_policy.ALLOWED_NAMES | {"open", "OSError", "ImportError"},
  )
  tmp_path.chmod(0o777)  # writable by anyone: only the worker's limits stop it
  attempts = {
    "open": "open('made_by_worker.txt', 'w')",
    "open_abs": f"open({str(tmp_path / 'abs.txt')!r}, 'w')",
    "import_os": "__import__('os').system('touch via_shell')",
    "import_new": "__import__('json')",
    "read_etc": "open('/etc/hostname').read()",
    "read_proc": "open('/proc/self/environ').read()",
  }
  with Sandbox(num_workers=1, memory_mb=256, cwd=str(tmp_path)) as sb:
    for name, code in attempts.items():
      ex = sb.run(body(code + "\nreturn 'escaped'"), {}, _args(), timeout_s=TIMEOUT_S)
      assert not ex.ok, name
      assert re.search("OSError|PermissionError|ImportError|FileNotFoundError", ex.error), (
        name,
        ex.error,
      )
  assert os.listdir(tmp_path) == []


def test_host_time_past_the_budget_stops_a_run_whose_worker_answers_at_once():
  # In CI, 20 host-side reads of 0.2 s each ran to the end under a 1 s timeout: the host
  # thread lost the GIL after each reply, the worker's next request was already waiting, and
  # poll(0) let it through. A worker connection that always has the next request ready:
  from aotd_jax.agent import sandbox as sandbox_module

  class Slow:
    @property
    def slow(self):
      time.sleep(0.1)
      return 1

  handles = sandbox_module._Handles(array_by_value_bytes=1 << 16)
  handles.dumps(Slow())  # handle 0
  request, done = handles.dumps(["op", 0, "attr", "slow"]), handles.dumps(["done", 10, ""])

  class Conn:
    served = 0

    def poll(self, timeout):
      return True

    def recv_bytes(self, limit):
      Conn.served += 1
      return request if Conn.served <= 10 else done

    def send_bytes(self, data):
      pass

  host = types.SimpleNamespace(max_message_bytes=1 << 20)
  worker = types.SimpleNamespace(conn=Conn())
  with pytest.raises(sandbox_module._Overrun, match="timed out after 0.25 s"):
    Sandbox._serve(host, worker, handles, {}, [], 0.25, 50, False)
  assert Conn.served == 3  # 0.1 s of host work each: the third one crosses 0.25 s
