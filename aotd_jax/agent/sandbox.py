"""Running untrusted generated programs: `run_program` and the worker pool behind it.

`sandbox_policy.validate` refuses, by spelling, anything outside a small subset of Python
(imports, dunders, frame walks, format tricks, dangerous builtins). What passes runs in a
worker (`sandbox_worker.py`): a zygote, jailed once (namespaces, chroot, seccomp where the
platform allows) and under OS limits (RLIMIT_AS memory, RLIMIT_CPU, RLIMIT_FSIZE=0,
RLIMIT_NOFILE, no core files, its own session), forks a fresh child per run, with a
line-step budget, a recursion limit and a bounded `print` that end the child rather than
raise. The wall-clock limit is enforced from here: a C-level operation such as
`10 ** (10 ** 9)` ignores signals, so on overrun the worker's process group is SIGKILLed and
a fresh worker replaces it. docs/agent_sandbox.md has the threat model and what each layer
stops.

Tools run here, in the parent, where the models are loaded: the worker's tool names are
proxies that forward each call over a socket. Plain data (numbers, strings, containers,
numpy arrays up to `array_by_value_bytes`) is copied; any other object a tool returns
(a `VideoClip` with its frames, a detection record) stays here and the program gets a
handle that supports public attribute reads, `len`, indexing, iteration, `in` and truth.
What travels between the two is data only (`sandbox_wire`: msgpack with explicit array and
handle extensions, no pickle), so even a compromised worker cannot make the host build an
object.
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import itertools
import json
import math
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Mapping

import numpy as np

from aotd_jax.agent import sandbox_policy, sandbox_wire
from aotd_jax.agent.trace import ToolCall, Trace, safe_str, summarize

_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
_EXIT_CHANNEL = 70  # sandbox_worker.EXIT_CHANNEL
MAX_ITER_ITEMS = 100_000


@dataclasses.dataclass
class Execution:
  """The outcome of one program: `ok` with `value`, or not `ok` with a one-line `error`.

  `trace` lists every tool call in order (also for failed runs, up to the failure);
  `stdout` is what the program printed (bounded); `seconds` is the whole run's wall time.
  """

  ok: bool
  value: Any = None
  error: str | None = None
  trace: list[ToolCall] = dataclasses.field(default_factory=list)
  stdout: str = ""
  seconds: float = 0.0

  def to_trace(self, program: str | None = None) -> Trace:
    """The JSON-serialisable `Trace` of this execution."""
    return Trace(
      calls=list(self.trace),
      value=self.value,
      ok=self.ok,
      error=self.error,
      seconds=self.seconds,
      stdout=self.stdout,
      program=program,
    )


class _Handles:
  """Objects kept in the host for one run, by id, and the run's codec."""

  def __init__(
    self, array_by_value_bytes: int, max_bytes: int = 1 << 62, max_nodes: int | None = None
  ):
    self.objects: list[Any] = []
    self.ids: dict[int, int] = {}
    self.bytes, self.max_bytes = 0, max_bytes
    self.codec = sandbox_wire.Codec(
      self._encode_other,
      self._decode_handle,
      max_array_bytes=array_by_value_bytes,
      max_nodes=max_nodes,
    )

  def _encode_other(self, obj):
    hid = self.ids.get(id(obj))
    if hid is None:
      # Arrays count their bytes (a property that returns a fresh copy of the frames on
      # every read would otherwise grow the host by one copy per read until the run ends).
      self.bytes += obj.nbytes if isinstance(obj, np.ndarray) else 64
      if self.bytes > self.max_bytes:
        raise _HandleCap(
          f"handle memory cap exceeded (more than {self.max_bytes} bytes of "
          "tool results kept for this run)"
        )
      hid = len(self.objects)
      self.objects.append(obj)
      self.ids[id(obj)] = hid
    return [hid, type(obj).__name__, _handle_text(obj)]

  def _decode_handle(self, hid):
    if type(hid) is not int or not 0 <= hid < len(self.objects):
      raise sandbox_wire.WireError(f"worker sent an unknown handle {str(hid)[:40]}")
    return self.objects[hid]

  def dumps(self, msg) -> bytes:
    return self.codec.encode(msg)

  def loads(self, data: bytes):
    return self.codec.decode(data)


def _handle_text(obj) -> str:
  """What the program sees as the handle's repr: the type and a bounded summary (never the
  object's own repr, whose cost is unbounded)."""
  if type(obj) is np.ndarray:
    return f"array(shape={obj.shape}, dtype={obj.dtype})"
  try:
    text = json.dumps(summarize(obj, max_array_elements=8, max_nodes=64))
  except Exception:  # a tool object whose to_json() fails is still usable
    text = ""
  text = f"{type(obj).__name__}({text})"
  return text if len(text) <= 200 else text[:197] + "..."


def _exc_text(e: BaseException, limit: int = 300) -> str:
  """A bounded message for an exception a tool raised (its args may hold program data)."""
  if len(e.args) == 1 and type(e.args[0]) is str:
    text = e.args[0]
  elif not e.args:
    text = ""
  else:
    text = json.dumps(summarize(list(e.args), max_array_elements=8, max_nodes=64))
  return safe_str(text.splitlines()[0] if text else "", limit)


def _short(value) -> str:
  """A bounded rendering of program data for an error message."""
  return safe_str(json.dumps(summarize(value, max_array_elements=8, max_nodes=32)), 80)


class _HandleCap(BaseException):
  """The run's handles passed their memory cap (ends the run; not a tool error)."""


class _Connection(Connection):
  """A `Connection` whose `poll` waits on one `select.poll` object made once (the base class
  builds and closes a selector on every call: ~15 us, several times per run)."""

  def __init__(self, handle: int):
    super().__init__(handle)
    self._poller = select.poll()
    self._poller.register(handle, select.POLLIN)

  def _poll(self, timeout):
    # None, or more than poll() can count: wait without a limit.
    ms = -1 if timeout is None or timeout > 1e6 else max(0, math.ceil(timeout * 1000))
    return bool(self._poller.poll(ms))


class _Worker:
  """One worker (a zygote that forks a child per run) and our end of its socket."""

  def __init__(
    self,
    memory_mb: int,
    cwd: str | None,
    runs_per_child: int = 1,
    jail: bool = True,
    spares: int = 2,
    warm_spares: bool = False,
  ):
    parent_sock, child_sock = socket.socketpair()
    env = {
      "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
      "OPENBLAS_NUM_THREADS": "1",
      "OMP_NUM_THREADS": "1",
      "MKL_NUM_THREADS": "1",
      "LC_ALL": "C.UTF-8",
      # Every library symbol bound when it is loaded, in the zygote: a child's first
      # call of a function would otherwise look it up and write the table (a page copy).
      "LD_BIND_NOW": "1",
      # Allocations up to 4 MB from the heap, which is not trimmed below 64 MB free: no
      # brk() up and down for each message buffer msgpack allocates (~9 per run).
      "GLIBC_TUNABLES": (
        "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864"
      ),
    }
    fd = child_sock.fileno()
    self.proc = subprocess.Popen(
      [
        sys.executable,
        "-I",
        # No docstrings (numpy's are most of them) and no asserts: ~1.7 MB less memory in
        # the zygote, which every fork copies the page tables of and every exit tears down.
        "-OO",
        _WORKER_PATH,
        str(fd),
        str(memory_mb),
        str(runs_per_child),
        "on" if jail else "off",
        str(spares),
        "warm" if warm_spares else "cold",
        ",".join(sorted(sandbox_policy.ALLOWED_NAMES - {"print"})),
      ],
      pass_fds=(fd,),
      stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      start_new_session=True,
      env=env,
      cwd=cwd,
      close_fds=True,
    )
    child_sock.close()
    self.conn = _Connection(parent_sock.detach())
    self.ready = False
    self.runs = 0
    self.child = (0, 0)  # (number, pid) of the child that said hello for the last run
    self.codec = sandbox_wire.Codec()

  def wait_ready(self, timeout: float) -> str | None:
    """Waits for the worker's hello; returns an error message or None."""
    if self.ready:
      return None
    try:
      if not self.conn.poll(timeout):
        return f"sandbox worker did not start within {timeout:.0f} s"
      msg = self.codec.decode(self.conn.recv_bytes(4096))
    except (EOFError, OSError, sandbox_wire.WireError) as e:
      return f"sandbox worker failed to start ({self.exit_reason() or e})"
    if not (type(msg) is list and len(msg) == 3 and msg[0] == "ready"):
      return "sandbox worker sent a bad hello"
    self.jail_report = msg[2]
    _warn_jail(msg[2])
    self.ready = True
    return None

  def exit_reason(self) -> str | None:
    try:
      code = self.proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
      return None
    return _status_text(code)

  def kill(self) -> None:
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    try:
      self.proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:  # pragma: no cover
      pass
    self.conn.close()

  def alive(self) -> bool:
    return self.proc.poll() is None


def _status_text(code: int) -> str:
  if code < 0:
    name = signal.Signals(-code).name
    extra = {
      "SIGXCPU": " (CPU time limit)",
      "SIGSEGV": " (crashed)",
      "SIGKILL": " (killed)",
      "SIGSYS": " (a forbidden system call)",
    }.get(name, "")
    return f"killed by {name}{extra}"
  if code == _EXIT_CHANNEL:
    return "its channel failed (the run was ended)"
  return f"exited with status {code}"


class _Overrun(Exception):
  """The run must end with the worker killed; the message is the reason."""


_JAIL_WARNED = False


def _warn_jail(report) -> None:
  """Says once per process, loudly, which layers of the OS jail a worker could not apply."""
  global _JAIL_WARNED
  missing = report.get("missing") if isinstance(report, dict) else ["(no report)"]
  if _JAIL_WARNED or not missing:
    return
  _JAIL_WARNED = True
  applied = ", ".join(map(str, report.get("applied") or [])) if isinstance(report, dict) else ""
  print(
    f"aotd_jax sandbox: WARNING: the OS jail is incomplete: missing "
    f"{'; '.join(map(str, missing))} (applied: {applied or 'nothing'}). The worker "
    "still has the allow-list, the data-only channel, a fresh child per run, rlimits "
    "and the host's kill (docs/agent_sandbox.md says which layer stops what).",
    file=sys.stderr,
    flush=True,
  )


class Sandbox:
  """A pool of warm worker processes that run generated programs.

  Thread-safe: concurrent `run` calls use different workers (tools are then called from
  several threads at once). Use as a context manager, or call `close()`.

  Args:
    num_workers: warm workers kept ready (runs beyond this wait for a free one).
    memory_mb: RLIMIT_AS of each worker (address space, numpy included: ~100 MB).
    cwd: working directory of the workers (default: this process's).
    array_by_value_bytes: numpy arrays up to this size are copied to the program; larger
      ones stay here behind a handle.
    max_message_bytes: the largest message accepted from a worker.
    max_runs_per_worker: a worker (its zygote) is replaced after this many runs (and after
      any failure). Programs never run in the zygote, so this is hygiene, not isolation.
    max_handle_bytes: the run ends when the arrays kept here for its handles pass this.
    max_message_nodes: the most lists, maps and extension values in one worker message.
    runs_per_child: 1 (default): every run in a fresh child forked from the warm zygote.
      N > 1 lets a child that ended its run cleanly (a value, or an ordinary exception of
      the program) serve up to N runs: cheaper on a loaded machine, but a later run then
      shares an interpreter with earlier programs (see docs/agent_sandbox.md).
    spare_children: children each worker forks ahead of need, each waiting for its turn,
      so a run does not wait for a fork (0: fork the next one when a run ends).
    warm_spares: each spare runs the zygote's warm-up program once before its turn, so the
      copy-on-write faults of a typical run are not on the run's path: lower latency where
      cores are idle, ~1 ms more CPU per run (which costs throughput where they are not).
    jail: put each worker in its own mount and network namespaces (and user namespace when
      not root), chrooted into an empty read-only tmpfs, under a seccomp filter; what the
      platform does not allow is reported once on stderr.
  """

  def __init__(
    self,
    num_workers: int = 2,
    *,
    memory_mb: int = 512,
    cwd: str | None = None,
    array_by_value_bytes: int = 1 << 20,
    max_message_bytes: int = 64 << 20,
    max_runs_per_worker: int = 10_000,
    start_timeout_s: float = 60.0,
    max_handle_bytes: int = 512 << 20,
    max_message_nodes: int = 1_000_000,
    runs_per_child: int = 1,
    jail: bool = True,
    spare_children: int = 2,
    warm_spares: bool = False,
  ):
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if spare_children < 0:
      raise ValueError(f"spare_children must be >= 0, got {spare_children}")
    if memory_mb < 64:
      raise ValueError(f"memory_mb must be >= 64 (numpy alone needs ~100), got {memory_mb}")
    self.memory_mb, self.cwd = memory_mb, cwd
    self.array_by_value_bytes = array_by_value_bytes
    self.max_message_bytes = max_message_bytes
    self.max_runs_per_worker = max_runs_per_worker
    self.max_handle_bytes = max_handle_bytes
    self.runs_per_child = runs_per_child
    self.spare_children = spare_children
    self.warm_spares = warm_spares
    self.jail = jail
    self.max_message_nodes = max_message_nodes
    self.start_timeout_s = start_timeout_s
    self._idle: queue.Queue[_Worker] = queue.Queue()
    self._closed = False
    self._lock = threading.Lock()
    self._nonces = itertools.count(1)
    self._signatures: dict[Callable, tuple] = {}  # tool -> (signature, names, required)
    for _ in range(num_workers):
      self._idle.put(self._new_worker())

  def _new_worker(self) -> _Worker:
    return _Worker(
      self.memory_mb,
      self.cwd,
      self.runs_per_child,
      self.jail,
      self.spare_children,
      self.warm_spares,
    )

  def __enter__(self) -> "Sandbox":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Kills the idle workers (busy ones are killed when their run ends)."""
    self._closed = True
    while True:
      try:
        self._idle.get_nowait().kill()
      except queue.Empty:
        return

  def _checkin(self, worker: _Worker, healthy: bool) -> None:
    worker.runs += 1
    if healthy and not self._closed and worker.runs < self.max_runs_per_worker:
      self._idle.put(worker)
      return
    worker.kill()
    if not self._closed:
      self._idle.put(self._new_worker())

  def run(
    self,
    source: str,
    tools: Mapping[str, Callable],
    args: Mapping[str, Any],
    *,
    timeout_s: float,
    max_steps: int = 1_000_000,
    max_output_chars: int = 100_000,
    max_depth: int = 100,
    max_tool_calls: int = 1000,
    entry_point: str = "execute_command",
    keep_raw: bool = False,
  ) -> Execution:
    """Validates and runs `source`, calling `entry_point(**args)`. Never raises for
    anything the program does; see `run_program` for the arguments."""
    t_start = time.perf_counter()
    if self._closed:
      raise RuntimeError("Sandbox is closed")
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
      raise ValueError(f"timeout_s must be > 0 and finite, got {timeout_s}")
    bad = [n for n in tools if not n.isidentifier() or n.startswith("_")]
    if bad:
      raise ValueError(f"tool names must be public identifiers, got {bad}")
    try:
      tree = sandbox_policy.validate(source, entry_point=entry_point)
      guarded = sandbox_policy.guard_source(source, tree)
    except sandbox_policy.PolicyError as e:
      return Execution(ok=False, error=f"refused: {e}", seconds=time.perf_counter() - t_start)
    except RecursionError:  # a check that recursed on an absurdly nested program
      return Execution(
        ok=False,
        error="refused: program is nested too deeply",
        seconds=time.perf_counter() - t_start,
      )
    # `guarded`: the checks are in the text (the worker compiles it as it is); otherwise
    # the worker inserts them into its own parse.
    limits = {
      "timeout_s": timeout_s,
      "max_steps": max_steps,
      "max_output_chars": max_output_chars,
      "max_depth": max_depth,
      "entry_point": entry_point,
      "guarded": guarded is not None,
    }
    handles = _Handles(self.array_by_value_bytes, self.max_handle_bytes, self.max_message_nodes)
    try:
      msg = handles.dumps(
        [
          "run",
          next(self._nonces),
          source if guarded is None else guarded,
          dict(args),
          sorted(tools),
          limits,
        ]
      )
    except (TypeError, ValueError, OverflowError) as e:  # the caller's args: a host error
      raise ValueError(f"run_program args cannot be sent to the sandbox: {e}") from None
    for attempt in range(2):
      worker = self._idle.get()
      if not worker.alive():  # killed while idle (OOM killer, an operator): replace it
        worker.kill()
        worker = self._new_worker()
      err = worker.wait_ready(self.start_timeout_s)
      if err is not None:
        self._checkin(worker, healthy=False)
        return Execution(ok=False, error=err, seconds=time.perf_counter() - t_start)
      calls: list[ToolCall] = []
      healthy = False
      try:
        worker.conn.send_bytes(msg)
        if not self._verified(worker):
          # The last run's child did not end cleanly: this run never started; retry it once
          # on a fresh worker.
          if attempt == 0:
            continue
          raise _Overrun("sandbox worker failed its check before the run")
        kind, value, stdout = self._serve(
          worker, handles, tools, calls, timeout_s, max_tool_calls, keep_raw
        )
        healthy = True  # the zygote's report on this child is read before the next run
        ex = Execution(
          ok=kind == "done",
          value=value if kind == "done" else None,
          error=None if kind == "done" else value,
          trace=calls,
          stdout=stdout,
        )
      except _Overrun as e:
        ex = Execution(ok=False, error=str(e), trace=calls)
      except OSError:  # the socket broke under a send: the worker is gone
        ex = Execution(
          ok=False, error=f"worker died: {worker.exit_reason() or 'connection lost'}", trace=calls
        )
      finally:
        self._checkin(worker, healthy)
      break
    ex.seconds = time.perf_counter() - t_start
    return ex

  def _verified(self, worker: _Worker) -> bool:
    """The channel is in step: the first message of a run is a child's hello (a leftover of
    the last run, or the zygote's report that the last child died, fails this), and with
    `runs_per_child == 1` that child is one this worker has not used before."""
    try:
      if not worker.conn.poll(self.start_timeout_s):
        return False
      msg = worker.codec.decode(worker.conn.recv_bytes(256))
    except (EOFError, OSError, sandbox_wire.WireError):
      return False
    if not (
      type(msg) is list
      and len(msg) == 3
      and msg[0] == "hello"
      and type(msg[1]) is int
      and type(msg[2]) is int
    ):
      return False
    seq = msg[1]
    if seq < worker.child[0] or (seq == worker.child[0] and self.runs_per_child == 1):
      return False
    worker.child = (seq, msg[2])
    return True

  def _serve(
    self, worker: _Worker, handles: _Handles, tools, calls, timeout_s, max_tool_calls, keep_raw
  ):
    """Answers the worker's requests until it reports. The program's own time and the
    host's work on its requests (handle operations, summaries, encoding) count against
    `timeout_s`; the time inside tools does not."""
    budget = timeout_s
    while True:
      # Checked before polling: a worker whose next request is already waiting (the host
      # thread lost the GIL after its reply) would otherwise pass poll(0) run after run.
      if budget <= 0:
        raise _Overrun(f"timed out after {timeout_s:g} s (worker killed)")
      t0 = time.perf_counter()
      try:
        if not worker.conn.poll(budget):
          raise _Overrun(f"timed out after {timeout_s:g} s (worker killed)")
        data = worker.conn.recv_bytes(self.max_message_bytes)
      except (EOFError, ConnectionError):
        raise _Overrun(f"worker died: {worker.exit_reason() or 'connection lost'}") from None
      except OSError as e:
        raise _Overrun(
          f"worker message rejected: {e} (limit {self.max_message_bytes} bytes)"
        ) from None
      budget -= time.perf_counter() - t0
      try:
        msg = handles.loads(data)
      except sandbox_wire.WireError as e:
        raise _Overrun(f"worker sent an unreadable message: {e}") from None
      t_host = time.perf_counter()  # host work on this message counts against the budget
      kind = msg[0] if type(msg) is list and msg else None
      if kind in ("done", "fail") and len(msg) == 3 and type(msg[2]) is str:
        if kind == "fail" and type(msg[1]) is not str:
          raise _Overrun("worker sent a bad message (fail)")
        return msg
      if kind == "exit" and len(msg) == 3:
        raise _Overrun(f"worker died: {_status_text(msg[2]) if type(msg[2]) is int else '?'}")
      if kind == "call" and len(msg) == 4:
        if len(calls) >= max_tool_calls:
          raise _Overrun(f"tool-call limit exceeded (more than {max_tool_calls} calls)")
        before = len(calls)
        reply = self._call_tool(tools, msg[1], msg[2], msg[3], calls, keep_raw, self._signatures)
        if len(calls) > before:  # the tool's own time is not the program's
          t_host += calls[-1].seconds
      elif kind == "op" and len(msg) == 4:
        reply = _handle_op(handles, *msg[1:])
      else:
        raise _Overrun(f"worker sent a bad message (kind {_short(kind)})")
      try:
        data = handles.dumps(reply)
      except _HandleCap as e:
        raise _Overrun(str(e)) from None
      except Exception as e:  # a tool result that cannot be encoded (a huge nested value)
        data = handles.dumps(["err", f"result could not be sent: {type(e).__name__}"])
      budget -= time.perf_counter() - t_host
      worker.conn.send_bytes(data)

  @staticmethod
  def _call_tool(tools, name, args, kwargs, calls, keep_raw, signatures):
    fn = tools.get(name) if isinstance(name, str) else None
    if fn is None or not isinstance(args, tuple) or not isinstance(kwargs, dict):
      return ["err", f"unknown tool {_short(name)}"]
    named = _bind(fn, args, kwargs, signatures)
    t0 = time.perf_counter()
    try:
      result = fn(*args, **kwargs)
    except Exception as e:
      seconds = time.perf_counter() - t0
      msg = f"tool {name} failed: {type(e).__name__}: {_exc_text(e)}"
      calls.append(ToolCall(name, summarize(named), None, seconds, error=msg))
      return ["err", msg]
    seconds = time.perf_counter() - t0
    call = ToolCall(name, summarize(named), summarize(result), seconds)
    if keep_raw:
      call.raw = (named, result)
    calls.append(call)
    return ["ok", result]


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _bind(fn: Callable, args: tuple, kwargs: dict, signatures: dict | None = None) -> dict:
  """Names the arguments of a call by the tool's signature (arg0, arg1... if it can't).
  `signatures` caches each tool's signature, its parameter names when all are positional,
  and how many are required (at most 256 tools; then it starts over)."""
  entry = None
  if signatures is not None:
    try:
      entry = signatures.get(fn)
    except TypeError:  # an unhashable callable: no cache
      signatures = None
  try:
    if entry is None:
      sig = inspect.signature(fn)
      params = sig.parameters.values()
      names = tuple(p.name for p in params) if all(p.kind in _POSITIONAL for p in params) else None
      entry = (sig, names, sum(p.default is p.empty for p in params))
      if signatures is not None:
        if len(signatures) >= 256:
          signatures.clear()
        signatures[fn] = entry
    sig, names, required = entry
    if not kwargs and names is not None and required <= len(args) <= len(names):
      return dict(zip(names, args))  # what bind() gives, without its cost
    return dict(sig.bind(*args, **kwargs).arguments)
  except (TypeError, ValueError):
    named = {f"arg{i}": a for i, a in enumerate(args)}
    named.update(kwargs)
    return named


def _handle_op(handles: _Handles, hid, op, operand):
  """Runs a program's operation on an object kept in the parent."""
  if not isinstance(hid, int) or not 0 <= hid < len(handles.objects):
    return ["err", f"unknown handle {_short(hid)}"]
  obj = handles.objects[hid]
  tname = type(obj).__name__
  try:
    if op == "attr":
      if (
        not isinstance(operand, str)
        or operand.startswith(sandbox_policy.FORBIDDEN_ATTRIBUTE_PREFIXES)
        or operand in sandbox_policy.FORBIDDEN_ATTRIBUTES
      ):
        return ["err", f"attribute {_short(operand)} of {tname} is not allowed"]
      value = getattr(obj, operand)
      if callable(value):
        return ["err", f"calling methods of tool results is not allowed ({tname}.{operand})"]
      return ["ok", value]
    if op == "len":
      return ["ok", len(obj)]
    if op == "bool":
      return ["ok", bool(obj)]
    if op == "item":
      # Basic keys only: a fancy index (a list of 10**7 ints) would make the parent copy
      # an arbitrarily large array out of the program's small message.
      keys = operand if isinstance(operand, tuple) else (operand,)
      if not all(k is None or k is Ellipsis or type(k) in (int, str, slice, bool) for k in keys):
        return ["err", f"{tname} index must be ints, slices or strings, got {_short(operand)}"]
      return ["ok", obj[operand]]
    if op == "contains":
      return ["ok", operand in obj]
    if op == "iter":
      items = list(itertools.islice(iter(obj), MAX_ITER_ITEMS + 1))
      if len(items) > MAX_ITER_ITEMS:
        return ["err", f"{tname} has more than {MAX_ITER_ITEMS} items to iterate"]
      return ["ok", items]
  except Exception as e:
    return ["err", f"{tname} {op} failed: {type(e).__name__}: {_exc_text(e, 200)}"]
  return ["err", f"unknown operation {_short(op)}"]


_DEFAULT: Sandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def default_sandbox() -> Sandbox:
  """The process-wide pool used by `run_program` when no `sandbox` is given."""
  global _DEFAULT
  with _DEFAULT_LOCK:
    if _DEFAULT is None or _DEFAULT._closed:
      _DEFAULT = Sandbox()
      atexit.register(_DEFAULT.close)
    return _DEFAULT


def run_program(
  source: str,
  tools: Mapping[str, Callable],
  args: Mapping[str, Any],
  *,
  timeout_s: float,
  sandbox: Sandbox | None = None,
  **limits,
) -> Execution:
  """Runs an untrusted program's `execute_command(**args)` with `tools` available.

  Args:
    source: Python source defining `def execute_command(video_clip, query,
      possible_answers)`; validated against `sandbox_policy` before it runs.
    tools: tool name -> callable, run in this process when the program calls them.
    args: keyword arguments of `execute_command`.
    timeout_s: wall-clock limit on the program's own execution (time inside tools is not
      counted); on overrun the worker is killed.
    sandbox: the worker pool to use (default: a shared pool of 2 workers, 512 MB each).
    **limits: `max_steps` (1e6 line events), `max_output_chars` (1e5), `max_depth` (100),
      `max_tool_calls` (1000), `entry_point`, `keep_raw` (keep raw tool arguments/results
      on each ToolCall as `.raw`, for viewers).

  Returns:
    `Execution(ok, value, error, trace, stdout, seconds)`; never raises for anything the
    program does (bad arguments to this function do raise ValueError).
  """
  return (sandbox or default_sandbox()).run(source, tools, args, timeout_s=timeout_s, **limits)
