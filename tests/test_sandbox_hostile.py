"""A corpus of hostile programs: every one must fail cleanly, fast, and leave the host intact.

Each program is refused by the AST allow-list or stopped by the worker's limits; the test
checks `ok=False` with a one-line reason that names what was refused, a run time within
timeout + 2 s, that this process's threads / file descriptors / memory are unchanged, that
no file appears in the (temporary) working directory, and that a valid program still runs
with its full trace afterwards.
"""
import concurrent.futures
import re
import os
import resource
import textwrap
import threading
import time

import numpy as np
import pytest

from aotd_jax.agent import Sandbox

TIMEOUT_S = 1.0
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
    ("gen_frame", body("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals"),
     "'.gi_frame'"),
    ("tb_frame", body("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                      "    return e.__traceback__.tb_frame"), "'.__traceback__'"),
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
    ("except_nested_minus", body("try:\n    pass\nexcept " + "-" * 900 + "x:\n    pass"),
     "'except <UnaryOp expression>' is not allowed"),
    ("null_byte", body("return 1") + "\x00", "null bytes|could not be parsed"),
    # --- loops that try to swallow the limits
    ("catch_baseexception", body("while True:\n    try:\n        pass\n"
                                 "    except BaseException:\n        pass"),
     "'except BaseException'"),
    ("bare_except", body("while True:\n    try:\n        pass\n    except:\n        pass"),
     "bare 'except:'"),
    ("finally_continue", body("while True:\n    try:\n        pass\n"
                              "    finally:\n        continue"), "inside 'finally'"),
    # --- runtime limits: steps, time, memory, recursion, output, tool calls, values
    ("infinite_loop", body("while True:\n    pass"), "step limit"),
    ("loop_catch_exception", body("while True:\n    try:\n        1 / 0\n"
                                  "    except Exception:\n        pass"), "step limit"),
    ("loop_finally", body("while True:\n    try:\n        pass\n    finally:\n"
                          "        x = 1"), "step limit"),
    ("huge_int", body("return 10 ** (10 ** 9)"), "timed out"),
    ("huge_pow", body("return pow(7, 10 ** 10)"), "timed out"),
    ("c_level_loop", body("return max(range(10 ** 18))"), "timed out"),
    ("memory_string", body("return 'a' * (10 ** 12)"), "memory limit"),
    ("memory_list", body("return [0] * (10 ** 10)"), "memory limit"),
    ("memory_growth", body("x = []\nwhile True:\n    x.append('a' * 10 ** 6)"),
     "memory limit|timed out"),
    ("recursion", body("def f(n):\n    return f(n + 1)\nreturn f(0)"), "recursion limit"),
    ("lambda_recursion", body("f = lambda g: g(g)\nreturn f(f)"), "recursion limit"),
    ("recursion_caught", body("def f(n):\n    try:\n        return f(n + 1)\n"
                              "    except Exception:\n        return f(n + 1)\nreturn f(0)"),
     "recursion limit|step limit|timed out"),
    ("output_flood", body("while True:\n    print('x' * 1000)"), "output limit"),
    ("output_once", body("print('x' * 10 ** 7)"), "output limit"),
    ("tool_flood", body("while True:\n    Noop()"), "tool-call limit"),
    ("handle_method", body("return video_clip.trim()"), "calling methods"),
    ("unsendable_value", body("return lambda: 1"), "cannot be sent"),
    ("oversized_value", body("return 'a' * (4 << 20)"), "message rejected"),
    ("deep_value", body("x = []\nfor i in range(20000):\n    x = [x]\nreturn x"),
     "cannot be sent|recursion"),
    ("fancy_index_on_handle", body("return len(video_clip[[0] * 100000])"),
     "index must be ints, slices or strings"),
    ("tool_error", body("return Fail(video_clip)"), "tool Fail failed"),
    # --- limits a program tries to catch or dodge (they end the run from outside it)
    ("raise_in_finally", body("while True:\n    try:\n        try:\n            pass\n"
                              "        finally:\n            raise ValueError('x')\n"
                              "    except ValueError:\n        pass"), "step limit"),
    ("memory_caught", body("try:\n    x = 'a' * (10 ** 12)\nexcept Exception:\n"
                           "    return 'survived'"), "memory limit exceeded"),
    ("memory_caught_then_tool", body("try:\n    x = [0] * (10 ** 10)\nexcept Exception:\n"
                                     "    pass\nreturn Noop()"), "memory limit exceeded"),
    ("memory_in_finally", body("try:\n    x = [0] * (10 ** 10)\nfinally:\n"
                               "    raise ValueError('swallowed')"), "memory limit exceeded"),
    ("recursion_caught_once", body("def f(n):\n    return f(n + 1)\ntry:\n    f(0)\n"
                                   "except Exception:\n    return 'survived'"),
     "recursion limit exceeded"),
    ("recursion_in_handler", body("def f(n):\n    try:\n        return f(n + 1)\n"
                                  "    except RuntimeError:\n        return 0\nreturn f(0)"),
     "recursion limit exceeded"),
    ("output_caught", body("try:\n    print('x' * 10 ** 6)\nexcept Exception:\n"
                           "    return 'survived'"), "output limit"),
    ("step_limit_in_finally", body("try:\n    while True:\n        pass\nfinally:\n"
                                   "    return_value = 1"), "step limit"),
    # --- the channel: a result too large for the worker's frame limit ends the worker
    ("oversized_tool_result", body("return len(Big())"), "channel failed"),
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


def _tools():
  def fail(clip):
    raise RuntimeError("detector exploded")

  return {"Noop": lambda: None, "Fail": fail, "Big": lambda: "x" * (65 << 20),
          "Count": lambda clip, name: int(clip.frames.shape[0])}


def _args():
  return {"video_clip": Clip(np.zeros((4, 8, 8, 3), np.uint8)), "query": "what?",
          "possible_answers": ["a", "b", "c", "d"]}


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
  return [pid for task in os.listdir("/proc/self/task")
          for pid in _read(f"/proc/self/task/{task}/children").split()]


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
  with Sandbox(num_workers=2, memory_mb=256, cwd=str(cwd),
               max_message_bytes=1 << 20) as sb:
    yield sb, cwd


def test_corpus_is_large_enough():
  assert len(HOSTILE) >= 40
  assert len({name for name, _, _ in HOSTILE}) == len(HOSTILE)


def test_hostile_corpus(sandbox, tmp_path, monkeypatch):
  sb, cwd = sandbox
  monkeypatch.chdir(tmp_path)
  threads, fds, rss = threading.active_count(), _open_fds(), _rss_mb()
  earlier_children = set(_children())  # other tests' processes are not this test's business

  def run(item):
    name, source, _ = item
    t0 = time.perf_counter()
    ex = sb.run(source, _tools(), _args(), timeout_s=TIMEOUT_S, max_steps=200_000,
                max_tool_calls=50)
    return name, ex, time.perf_counter() - t0

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(run, HOSTILE))
  failures = []
  for (name, _, expected), (_, ex, seconds) in zip(HOSTILE, results):
    if ex.ok:
      failures.append(f"{name}: ran (value {ex.value!r})")
    elif not ex.error or "\n" in ex.error or not re.search(expected, ex.error):
      failures.append(f"{name}: reason {ex.error!r} does not match {expected!r}")
    elif seconds > TIMEOUT_S + 2.0:
      failures.append(f"{name}: took {seconds:.2f} s")
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
  monkeypatch.setattr(sandbox_policy, "ALLOWED_NAMES",
                      sandbox_policy.ALLOWED_NAMES | {"open", "OSError", "ImportError"})
  tmp_path.chmod(0o777)  # writable by anyone: only the worker's limits stop it
  attempts = {
      "open": "open('made_by_worker.txt', 'w')",
      "open_abs": f"open({str(tmp_path / 'abs.txt')!r}, 'w')",
      "import_os": "__import__('os').system('touch via_shell')",
      "import_new": "__import__('json')",
  }
  with Sandbox(num_workers=1, memory_mb=256, cwd=str(tmp_path)) as sb:
    for name, code in attempts.items():
      ex = sb.run(body(code + "\nreturn 'escaped'"), {}, _args(), timeout_s=TIMEOUT_S)
      assert not ex.ok, name
      assert re.search("OSError|PermissionError|ImportError", ex.error), (name, ex.error)
  assert os.listdir(tmp_path) == []
