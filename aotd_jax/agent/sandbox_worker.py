"""The sandbox's worker process: runs one validated program at a time under OS limits.

Started by `aotd_jax.agent.sandbox` as `python -I sandbox_worker.py FD MEMORY_MB`; it must
import nothing from `aotd_jax` (that would load JAX), only the standard library (and numpy,
if present, so tool results that are arrays unpickle without opening files later).

Protocol over the socket (pickled tuples; objects the parent keeps travel as handles via
pickle's persistent ids):
  worker -> parent  ("ready", pid)
  parent -> worker  ("run", source, args, tool_names, limits)   (limits["builtins"]: the
                    allowed builtin names, from sandbox_policy)
  worker -> parent  ("call", tool, args, kwargs) | ("op", handle_id, op, operand)
  parent -> worker  ("ok", value) | ("err", message)
  worker -> parent  ("done", value, stdout) | ("fail", reason, stdout)
"""
import builtins
import io
import os
import pickle
import resource
import signal
import sys

PROGRAM_FILENAME = "<program>"
CHANNEL_FD = 3
NOBODY = 65534


class Limit(BaseException):
  """A worker limit was hit. BaseException: programs may only catch Exception subclasses."""


class ToolError(Exception):
  """A tool (run in the parent) raised; the program may catch this."""


class Handle:
  """A stand-in for an object the parent keeps (e.g. a VideoClip holding frames)."""
  __slots__ = ("_hid", "_type", "_repr")

  def __init__(self, hid, type_name, text):
    self._hid, self._type, self._repr = hid, type_name, text

  def __repr__(self):
    return self._repr

  __str__ = __repr__

  def __eq__(self, other):
    return isinstance(other, Handle) and other._hid == self._hid

  def __hash__(self):
    return hash(self._hid)

  def __getattr__(self, name):
    if name.startswith("_"):
      raise AttributeError(name)
    return _CHANNEL.request(("op", self._hid, "attr", name))

  def __len__(self):
    return _CHANNEL.request(("op", self._hid, "len", None))

  def __bool__(self):
    return _CHANNEL.request(("op", self._hid, "bool", None))

  def __getitem__(self, key):
    return _CHANNEL.request(("op", self._hid, "item", key))

  def __contains__(self, item):
    return _CHANNEL.request(("op", self._hid, "contains", item))

  def __iter__(self):
    return iter(_CHANNEL.request(("op", self._hid, "iter", None)))


class _Pickler(pickle.Pickler):

  def persistent_id(self, obj):
    return ("h", obj._hid) if type(obj) is Handle else None


class _Unpickler(pickle.Unpickler):

  def persistent_load(self, pid):
    _, hid, type_name, text = pid
    return Handle(hid, type_name, text)


class Channel:
  """Framed pickled messages to and from the parent."""

  def __init__(self, conn):
    self.conn = conn

  def send(self, msg):
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(msg)
    self.conn.send_bytes(buf.getbuffer())

  def recv(self):
    return _Unpickler(io.BytesIO(self.conn.recv_bytes())).load()

  def request(self, msg):
    self.send(msg)
    kind, payload = self.recv()
    if kind == "err":
      raise ToolError(payload)
    return payload


_CHANNEL = None


class _Tool:
  """The worker's proxy for one tool: calls are forwarded to the parent."""
  __slots__ = ("_name",)

  def __init__(self, name):
    self._name = name

  def __call__(self, *args, **kwargs):
    return _CHANNEL.request(("call", self._name, args, kwargs))

  def __repr__(self):
    return f"<tool {self._name}>"


class _Output:
  """Captured, bounded `print`."""

  def __init__(self, max_chars):
    self.parts, self.size, self.max_chars = [], 0, max_chars

  def print(self, *args, sep=" ", end="\n"):
    text = str(sep).join(str(a) for a in args) + str(end)
    self.size += len(text)
    if self.size > self.max_chars:
      raise Limit(f"output limit exceeded (more than {self.max_chars} chars printed)")
    self.parts.append(text)

  def text(self):
    return "".join(self.parts)


def _install_step_budget(max_steps):
  """Counts the program's line and call events; past the budget every event raises."""
  steps = [0]

  def local(frame, event, arg):
    if event == "line":
      steps[0] += 1
      if steps[0] > max_steps:
        raise Limit(f"step limit exceeded (more than {max_steps} steps)")
    return local

  def global_(frame, event, arg):
    if frame.f_code.co_filename != PROGRAM_FILENAME:
      return None
    steps[0] += 1
    if steps[0] > max_steps:
      raise Limit(f"step limit exceeded (more than {max_steps} steps)")
    return local

  sys.settrace(global_)


def _loaded_module(name, globals=None, locals=None, fromlist=(), level=0):
  """`__import__` limited to numpy's own modules, already loaded (no file is opened)."""
  top = name.partition(".")[0]
  if level != 0 or top not in ("numpy", "warnings") or name not in sys.modules:
    raise ImportError(f"import of {name!r} is not allowed in the sandbox")
  return sys.modules[name] if fromlist else sys.modules[name.partition(".")[0]]


def _program_line(tb):
  line = None
  while tb is not None:
    if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME:
      line = tb.tb_lineno
    tb = tb.tb_next
  return line


def _run(source, args, tool_names, limits):
  """Runs one program; returns the final message for the parent."""
  out = _Output(limits["max_output_chars"])
  # The names come from the parent (sandbox_policy is the one list); never a dunder.
  builtins_ = {name: getattr(builtins, name) for name in limits["builtins"]
               if not name.startswith("_") and hasattr(builtins, name)}
  builtins_["print"] = out.print
  # C code (numpy's lazy `from numpy._core import _methods`) imports through the calling
  # frame's builtins. Programs cannot spell a dunder, so only such internals reach this.
  builtins_["__import__"] = _loaded_module
  env = {"__builtins__": builtins_, "__name__": "program"}
  for name in tool_names:
    env[name] = _Tool(name)
  used = resource.getrusage(resource.RUSAGE_SELF)
  cpu_used = used.ru_utime + used.ru_stime
  _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
  soft = int(cpu_used + limits["timeout_s"] + 2)
  if cpu_hard != resource.RLIM_INFINITY:
    soft = min(soft, cpu_hard)
  resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
  depth = limits["max_depth"]
  sys.setrecursionlimit(depth + 50)
  try:
    code = compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True)
    _install_step_budget(limits["max_steps"])
    try:
      exec(code, env)
      fn = env.get(limits["entry_point"])
      if not callable(fn):
        return ("fail", f"program does not define {limits['entry_point']}", out.text())
      value = fn(**args)
    finally:
      sys.settrace(None)
  except Limit as e:
    return ("fail", str(e), out.text())
  except RecursionError:
    return ("fail", f"recursion limit exceeded (depth > {depth})", out.text())
  except MemoryError:
    return ("fail", "memory limit exceeded", out.text())
  except ToolError as e:
    line = _program_line(e.__traceback__)
    return ("fail", f"line {line}: {e}", out.text())
  except BaseException as e:  # the program's own error, reported as one line
    line = _program_line(e.__traceback__)
    where = f"line {line}: " if line else ""
    msg = str(e).splitlines()[0][:300] if str(e) else ""
    return ("fail", f"{where}{type(e).__name__}: {msg}".rstrip(": "), out.text())
  finally:
    sys.setrecursionlimit(1000)
  return ("done", value, out.text())


def _limit_process(memory_mb):
  """OS limits that hold for the worker's whole life."""
  mem = memory_mb * 1024 * 1024
  resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
  resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  os.closerange(CHANNEL_FD + 1, 4096)
  resource.setrlimit(resource.RLIMIT_NOFILE, (CHANNEL_FD + 1, CHANNEL_FD + 1))
  if os.geteuid() == 0:
    # Root ignores RLIMIT_NPROC and may raise hard limits and write anywhere: run as nobody.
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def main():
  global _CHANNEL
  fd, memory_mb = int(sys.argv[1]), int(sys.argv[2])
  try:
    import numpy  # noqa: F401  -- so array results unpickle once files can't be opened
  except ImportError:
    pass
  from multiprocessing.connection import Connection
  if fd != CHANNEL_FD:
    os.dup2(fd, CHANNEL_FD)
    os.close(fd)
  _CHANNEL = Channel(Connection(CHANNEL_FD))
  _limit_process(memory_mb)
  _CHANNEL.send(("ready", os.getpid()))
  while True:
    try:
      msg = _CHANNEL.recv()
    except (EOFError, OSError):
      return
    if msg[0] != "run":
      return
    _, source, args, tool_names, limits = msg
    result = _run(source, args, tool_names, limits)
    try:
      _CHANNEL.send(result)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as e:
      _CHANNEL.send(("fail", f"program returned a value that cannot be sent: "
                     f"{type(e).__name__}: {str(e)[:200]}", result[2]))
    except MemoryError:
      _CHANNEL.send(("fail", "memory limit exceeded while sending the value", ""))
    del result


if __name__ == "__main__":
  main()
