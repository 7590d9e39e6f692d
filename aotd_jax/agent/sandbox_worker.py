"""The sandbox's worker: a zygote that forks one fresh child per program.

Started by `aotd_jax.agent.sandbox` as
`python -I -OO sandbox_worker.py FD MEMORY_MB RUNS_PER_CHILD JAIL SPARES WARM BUILTINS` (BUILTINS:
the comma-separated names programs may use); it must import nothing
from `aotd_jax` (that would load JAX): only the standard library, numpy, msgpack,
`sandbox_wire` (the data-only message format) and `sandbox_turns` (whose turn it is on the
channel), both next to this file.

The zygote imports everything once, closes every file, applies the jail (`_jail`,
when asked and where the platform allows) and the process-wide OS limits, says hello, fills
the holes of its object pools (`_fill_pools`), then keeps SPARES children forked ahead of the
one on the channel and reaps them as they end. A child (with WARM: after copying the pages a
typical run writes) waits for its turn, reads one "run", runs the program with the per-run
limits, hands the channel to the next child and exits, so no state survives from one program
to the next, and whatever the program did to its interpreter dies with it.

Protocol (msgpack lists via `sandbox_wire`; host objects travel as handles):
  zygote -> host   ["ready", pid, jail_report]
  child -> host    ["hello", n, pid]          (first, so the host knows the channel is in step;
                                              n: the child's number, new for every run
                                              unless RUNS_PER_CHILD > 1)
  host -> child    ["run", nonce, source, args, tool_names, limits]
  child -> host    ["call", tool, args, kwargs] | ["op", handle_id, op, operand]
  host -> child    ["ok", value] | ["err", message]
  child -> host    ["done", value, stdout] | ["fail", reason, stdout]
  zygote -> host   ["exit", n, status]        (only when a child died before it was done
                                              with the channel; the host replaces the worker)

The child's own code never lets the program see a channel failure: any exception while
sending or receiving (a `MemoryError` after a frame's header, a frame that does not decode)
ends the child at once (`os._exit`), and the host reports the run as failed and replaces the
whole worker. Limits the child enforces itself (steps, printed output, `MemoryError`,
`RecursionError`) also end the child: the reason is sent and the process exits, so no
`try`/`finally` in the program can swallow them. Wall time and CPU are enforced by the host
killing the worker (and RLIMIT_CPU).
"""

import ast
import builtins
import gc
import os
import resource
import signal
import sys
import unicodedata  # noqa: F401 -- compile() needs it for non-ASCII names; no file later

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's dir out
import sandbox_turns  # noqa: E402
import sandbox_wire  # noqa: E402

PROGRAM_FILENAME = "<program>"
CHANNEL_FD = 3
NOBODY = 65534
CHECK_NAME = "__sandbox_check__"  # a dunder: programs cannot spell it
EXIT_CHANNEL = 70  # the child's channel failed
MAX_FRAME = 64 << 20


class ToolError(Exception):
  """A tool (run in the host) raised; the program may catch this."""


class Handle:
  """A stand-in for an object the host keeps (e.g. a VideoClip holding frames)."""

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
    return _CHANNEL.request(["op", self._hid, "attr", name])

  def __len__(self):
    return _CHANNEL.request(["op", self._hid, "len", None])

  def __bool__(self):
    return _CHANNEL.request(["op", self._hid, "bool", None])

  def __getitem__(self, key):
    return _CHANNEL.request(["op", self._hid, "item", key])

  def __contains__(self, item):
    return _CHANNEL.request(["op", self._hid, "contains", item])

  def __iter__(self):
    return iter(_CHANNEL.request(["op", self._hid, "iter", None]))


def _encode_handle(obj):
  if type(obj) is Handle:
    return obj._hid
  raise TypeError(f"a {type(obj).__name__} cannot be sent")


def _decode_handle(p):
  if (
    type(p) is not list
    or len(p) != 3
    or type(p[0]) is not int
    or type(p[1]) is not str
    or type(p[2]) is not str
  ):
    raise sandbox_wire.WireError("bad handle")
  return Handle(*p)


class Channel:
  """Framed data-only messages to and from the host (`sandbox_wire`)."""

  def __init__(self, conn):
    self.conn = conn
    self.codec = sandbox_wire.Codec(_encode_handle, _decode_handle)

  def send(self, msg):
    self.conn.send_bytes(self.codec.encode(msg))

  def recv(self):
    return self.codec.decode(self.conn.recv_bytes(MAX_FRAME))

  def request(self, msg):
    """One call to the host. Only an unsendable argument is the program's error; any other
    failure here ends the child (the channel's state is unknown)."""
    try:
      data = self.codec.encode(msg)
    except (TypeError, ValueError, OverflowError) as e:
      raise TypeError(f"tool argument cannot be sent: {e}") from None
    except BaseException:
      _die()
    try:
      self.conn.send_bytes(data)
      reply = self.codec.decode(self.conn.recv_bytes(MAX_FRAME))
      kind, payload = reply
      ok = kind == "ok"
      if not ok and not (kind == "err" and type(payload) is str):
        _die()
    except BaseException:
      _die()
    if not ok:
      raise ToolError(payload)
    return payload


_CHANNEL = None
_CLEAN = [False]  # whether the last run ended in a way that leaves the child reusable
_OUTPUT = None
_DEPTH = 100


def _die():
  os._exit(EXIT_CHANNEL)


def _end(reason):
  """Ends the run from inside the child: reports `reason`, then exits (not an exception, so
  the program cannot catch it)."""
  sys.settrace(None)
  sys.setrecursionlimit(_DEPTH + 1000)  # room to send from the depth the program reached
  try:
    _CHANNEL.send(["fail", reason, _OUTPUT.text() if _OUTPUT is not None else ""])
  except BaseException:
    _die()
  _release()


class _Tool:
  """The worker's proxy for one tool: calls are forwarded to the host."""

  __slots__ = ("_name",)

  def __init__(self, name):
    self._name = name

  def __call__(self, *args, **kwargs):
    return _CHANNEL.request(["call", self._name, args, kwargs])

  def __repr__(self):
    return f"<tool {self._name}>"


def _print(*args, sep=" ", end="\n"):
  """The programs' `print`: this run's `_Output`."""
  _OUTPUT.print(*args, sep=sep, end=end)


class _Output:
  """Captured, bounded `print`."""

  def __init__(self, max_chars):
    self.parts, self.size, self.max_chars = [], 0, max_chars

  def print(self, *args, sep=" ", end="\n"):
    text = str(sep).join(str(a) for a in args) + str(end)
    self.size += len(text)
    if self.size > self.max_chars:
      _end(f"output limit exceeded (more than {self.max_chars} chars printed)")
    self.parts.append(text)

  def text(self):
    return "".join(self.parts)


def _check(types=None):
  """Runs where every `except` clause of the program is matched (`except
  __sandbox_check__(T):`, returning T) and first in every `finally` block: a `MemoryError`
  or `RecursionError` in flight ends the run, as does a step counter the interpreter
  dropped."""
  exc = sys.exc_info()[1]
  if isinstance(exc, MemoryError):
    _end("memory limit exceeded")
  if isinstance(exc, RecursionError):
    _end(f"recursion limit exceeded (depth > {_DEPTH})")
  if sys.gettrace() is None:
    _end("step counter lost (the program overflowed it)")
  return types


class _Guard(ast.NodeTransformer):
  """Puts `__sandbox_check__()` first in every handler and `finally` block (for a program
  the host could not guard in its text: `sandbox_policy.guard_source`)."""

  @staticmethod
  def _call(node):
    call = ast.Expr(ast.Call(ast.Name(CHECK_NAME, ast.Load()), [], []))
    return ast.copy_location(call, node)

  def visit_ExceptHandler(self, node):
    self.generic_visit(node)
    node.body.insert(0, self._call(node))
    return node

  def visit_Try(self, node):
    self.generic_visit(node)
    if node.finalbody:
      node.finalbody.insert(0, self._call(node.finalbody[0]))
    return node


def _install_step_budget(max_steps):
  """Counts the program's line and call events; past the budget the run ends."""
  steps = [0]

  def local(frame, event, arg):
    if event == "line":
      steps[0] += 1
      if steps[0] > max_steps:
        _end(f"step limit exceeded (more than {max_steps} steps)")
    return local

  def global_(frame, event, arg):
    if frame.f_code.co_filename != PROGRAM_FILENAME:
      return None
    steps[0] += 1
    if steps[0] > max_steps:
      _end(f"step limit exceeded (more than {max_steps} steps)")
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


def _run(source, args, tool_names, limits, tool=None):
  """Runs one program (in the child); returns the final message for the host."""
  global _OUTPUT, _DEPTH
  _CLEAN[0] = False
  out = _OUTPUT = _Output(limits["max_output_chars"])
  # The zygote's table itself, whose `print` writes to this run's `_OUTPUT`: a copy would
  # write the reference count of every builtin in it, a page copy for each page they are on
  # (~15 per child). A child that serves several runs gives each its own copy.
  builtins_ = _BUILTINS if RUNS_PER_CHILD == 1 else dict(_BUILTINS)
  env = {"__builtins__": builtins_, "__name__": "program", CHECK_NAME: _check}
  for name in tool_names:
    env[name] = tool or _Tool(name)
  _DEPTH = depth = limits["max_depth"]
  try:
    if limits["guarded"]:  # the host put the checks in the text (same line numbers)
      # optimize=0: the worker runs with -OO, the program as written (its asserts kept)
      code = compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True, optimize=0)
    else:
      tree = ast.fix_missing_locations(_Guard().visit(ast.parse(source, PROGRAM_FILENAME)))
      code = compile(tree, PROGRAM_FILENAME, "exec", dont_inherit=True, optimize=0)
  except Exception as e:
    return ["fail", f"program could not be compiled: {type(e).__name__}", ""]
  sys.setrecursionlimit(depth + 50)
  try:
    _install_step_budget(limits["max_steps"])
    exec(code, env)
    fn = env.get(limits["entry_point"])
    if not callable(fn):
      sys.settrace(None)
      return ["fail", f"program does not define {limits['entry_point']}", out.text()]
    value = fn(**args)
    sys.settrace(None)
  except RecursionError:
    sys.settrace(None)
    return ["fail", f"recursion limit exceeded (depth > {depth})", out.text()]
  except MemoryError:
    sys.settrace(None)
    return ["fail", "memory limit exceeded", out.text()]
  except ToolError as e:
    sys.settrace(None)
    _CLEAN[0] = True
    line = _program_line(e.__traceback__)
    return ["fail", f"line {line}: {e}", out.text()]
  except BaseException as e:  # the program's own error, reported as one line
    sys.settrace(None)
    _CLEAN[0] = isinstance(e, Exception)
    line = _program_line(e.__traceback__)
    where = f"line {line}: " if line else ""
    try:
      text = str(e)
      msg = text.splitlines()[0][:300] if text else ""
    except BaseException:  # a str() that fails or is absurd (a huge int in the message)
      msg = "(message could not be shown)"
    return ["fail", f"{where}{type(e).__name__}: {msg}".rstrip(": "), out.text()]
  return ["done", value, out.text()]


_TURN = [None, 0]  # the zygote's `sandbox_turns.Turns` page and this child's number
_PRCTL = [None]  # libc's prctl through ctypes, looked up by the zygote before its jail
_BUILTINS = {}  # name -> builtin a program may use (from the host), built by the zygote
_ZYGOTE = [0]  # the zygote's pid
_PIDNS = [False]  # whether the children live in a PID namespace of their own
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
SIGKILL = int(signal.SIGKILL)


def _release():
  """Hands the channel to the next child (this one has sent its last message), then exits."""
  turns, seq = _TURN
  if turns is not None:
    turns.pass_turn(seq)
  os._exit(0)


RUNS_PER_CHILD = 1  # from the host (Sandbox(runs_per_child=...)); 1: a fresh child per run
SPARES = 2  # from the host (Sandbox(spare_children=...)): children forked ahead of need
PREFAULT = False  # from the host (Sandbox(warm_spares=...)): warm each spare before its turn


def _child(seq, turns):
  """The forked child: warms its own copy of the zygote's pages, waits for its turn, says
  hello, reads a program, runs it; exits after it (or, with RUNS_PER_CHILD > 1, serves the
  next run when this one ended cleanly)."""
  resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no grandchildren
  # Dies with the zygote, so no child outlives its worker. In a PID namespace of the
  # children's own that holds already: the namespace's process 1 dies with the zygote, and
  # the kernel then kills every process in it.
  if _PRCTL[0] is not None and not _PIDNS[0]:
    _PRCTL[0](PR_SET_PDEATHSIG, SIGKILL)
  # The zygote died before that took effect? (Outside a PID namespace of the children's own
  # it is our parent; inside, it is not visible: 0.)
  if os.getppid() != (0 if _PIDNS[0] else _ZYGOTE[0]):
    os._exit(EXIT_CHANNEL)
  _TURN[:] = [turns, seq]
  turns.announce(seq, os.getpid())
  if PREFAULT:
    _prefault()
  pid = turns.pid_of(seq)  # the host knows us by the zygote's pid
  while not pid:  # the zygote registers a child right after its fork (0 until then)
    os.sched_yield()
    pid = turns.pid_of(seq)
  try:  # before the turn: the encoder's page copies are then not on the run's path
    hello = _CHANNEL.codec.encode(["hello", seq, pid])
  except BaseException:
    _die()
  turns.wait(seq)
  for served in range(1, RUNS_PER_CHILD + 1):
    try:
      _CHANNEL.conn.send_bytes(hello)
      msg = _CHANNEL.recv()
      ok = type(msg) is list and len(msg) == 6 and msg[0] == "run"
    except BaseException:
      _die()
    if not ok:
      _die()
    _, _, source, args, tool_names, limits = msg
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime + limits["timeout_s"] + 2)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    result = _run(source, args, tool_names, limits)
    clean = result[0] == "done" or _CLEAN[0]
    try:
      data = _CHANNEL.codec.encode(result)
    except BaseException as e:  # a lambda, a self-containing list, out of memory ...
      clean = False
      try:
        data = _CHANNEL.codec.encode(
          [
            "fail",
            f"program returned a value that cannot be sent: {type(e).__name__}",
            result[2][-10000:],
          ]
        )
      except BaseException:
        _die()
    del result, args, msg
    try:
      _CHANNEL.conn.send_bytes(data)
    except BaseException:
      _die()
    if not clean:
      break
    sys.setrecursionlimit(1000)
  _release()


# The system calls a jailed worker makes after its jail is in place (measured with `strace -f`
# on the zygote and its children over the sandbox's tests and benchmarks); every other one is
# refused with EPERM: files, sockets, programs, namespaces, mounts, tracing, ioctls, new file
# descriptors, kernel interfaces. A few are allowed only with safe arguments (`_seccomp`).
_ALLOWED_SYSCALLS = (
  # memory (mmap and mprotect never with PROT_EXEC)
  "brk",
  "mmap",
  "munmap",
  "mremap",
  "madvise",
  "mprotect",
  # the channel (fd 3) and the standard streams (/dev/null)
  "read",
  "write",
  "readv",
  "writev",
  "close",
  "fstat",
  "lseek",
  # the zygote's fork loop and its children's turns (clone without new namespaces;
  # RLIMIT_NPROC=0 stops a child's; kill only to a pid >= 0)
  "clone",
  "wait4",
  "waitid",
  "kill",
  "getpid",
  "getppid",
  "gettid",
  "set_robust_list",
  "rseq",
  "futex",
  "sched_yield",
  "exit",
  "exit_group",
  "restart_syscall",
  # signals
  "rt_sigaction",
  "rt_sigprocmask",
  "rt_sigreturn",
  "rt_sigtimedwait",
  "rt_sigpending",
  "sigaltstack",
  # limits on itself (prlimit64 only on pid 0; prctl only the two the worker uses)
  "prlimit64",
  "getrlimit",
  "setrlimit",
  "getrusage",
  "prctl",
  # clocks, identity, randomness
  "clock_gettime",
  "clock_getres",
  "gettimeofday",
  "time",
  "nanosleep",
  "clock_nanosleep",
  "getuid",
  "geteuid",
  "getgid",
  "getegid",
  "getrandom",
)
_CLONE_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | ...
_PROT_EXEC = 4


def _jail(as_root):
  """The OS jail, applied once in the zygote before its fork loop: its own mount and network
  namespaces (and user namespace when not root), a chroot into an empty read-only tmpfs, then
  (by the caller, after the rlimits) a seccomp filter. Returns what was applied and what
  was not, for the host to report."""
  import ctypes

  libc = ctypes.CDLL(None, use_errno=True)
  done, missing = [], []
  seccomp = None  # loaded now: after the chroot there is no library to find
  try:  # the usual soname first: find_library runs a program (and imports subprocess)
    seccomp = ctypes.CDLL("libseccomp.so.2")
  except OSError:
    import ctypes.util

    path = ctypes.util.find_library("seccomp")
    try:
      seccomp = ctypes.CDLL(path) if path else None
    except OSError:
      seccomp = None
  newns, newnet, newuser, newpid = 0x00020000, 0x40000000, 0x10000000, 0x20000000
  uid, gid = os.getuid(), os.getgid()
  # The PID namespace is the children's (the zygote's next fork is its first process): they
  # see only each other, not the host or any other process.
  if libc.unshare(newns | newnet | newpid | (0 if as_root else newuser)) == 0:
    done.append("namespaces")
    if not as_root:
      try:
        for path, text in (
          ("/proc/self/setgroups", "deny"),
          ("/proc/self/uid_map", f"{NOBODY} {uid} 1"),
          ("/proc/self/gid_map", f"{NOBODY} {gid} 1"),
        ):
          with open(path, "w") as f:
            f.write(text)
      except OSError:
        pass
    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_remount, ms_rec, ms_private = (
      1,
      2,
      4,
      8,
      32,
      16384,
      1 << 18,
    )
    flags = ms_nosuid | ms_nodev | ms_noexec
    if (
      libc.mount(None, b"/", None, ms_rec | ms_private, None) == 0
      and libc.mount(b"none", b"/tmp", b"tmpfs", flags, b"size=4k,mode=0555") == 0
      and libc.mount(None, b"/tmp", None, ms_remount | ms_rdonly | flags, None) == 0
      and libc.chroot(b"/tmp") == 0
    ):
      os.chdir("/")
      done.append("chroot")
    else:
      missing.append(f"chroot (errno {ctypes.get_errno()})")
  else:
    missing.append(f"namespaces (errno {ctypes.get_errno()})")
    missing.append("chroot")
  if seccomp is None:
    missing.append("seccomp (no libseccomp)")
  return done, missing, seccomp


def _seccomp(lib):
  """Loads a filter that allows `_ALLOWED_SYSCALLS` and answers EPERM to every other system
  call; True when it is in force."""
  import ctypes

  class ArgCmp(ctypes.Structure):  # libseccomp's struct scmp_arg_cmp
    _fields_ = [
      ("arg", ctypes.c_uint),
      ("op", ctypes.c_int),
      ("datum_a", ctypes.c_uint64),
      ("datum_b", ctypes.c_uint64),
    ]

  lib.seccomp_init.restype = ctypes.c_void_p
  lib.seccomp_init.argtypes = [ctypes.c_uint32]
  lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.POINTER(ArgCmp),
  ]
  lib.seccomp_load.argtypes = [ctypes.c_void_p]
  lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
  ctx = lib.seccomp_init(0x00050000 | 1)  # default: SCMP_ACT_ERRNO(EPERM)
  if not ctx:
    return False
  allow, cmp_eq, cmp_masked_eq = 0x7FFF0000, 4, 7
  only = {  # syscall -> (argument, comparison, a, b): allowed only when it holds
    "clone": [(0, cmp_masked_eq, _CLONE_NEW_NAMESPACES, 0)],
    "mmap": [(2, cmp_masked_eq, _PROT_EXEC, 0)],
    "mprotect": [(2, cmp_masked_eq, _PROT_EXEC, 0)],
    "prlimit64": [(0, cmp_eq, 0, 0)],
    "prctl": [(0, cmp_eq, PR_SET_PDEATHSIG, 0), (0, cmp_eq, PR_GET_DUMPABLE, 0)],
    # A pid >= 0 (one process, or the worker's own process group): never -1 (every process
    # the worker's uid may signal, the host's too when the host is not root) or another
    # process group.
    "kill": [(0, cmp_masked_eq, 0x80000000, 0)],
  }
  for name in _ALLOWED_SYSCALLS:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not on this architecture
      continue
    for cond in only.get(name, [None]):  # several conditions: several rules (any one holds)
      args = (ArgCmp * 1)(ArgCmp(*cond)) if cond else None
      if lib.seccomp_rule_add_array(ctx, allow, nr, 1 if cond else 0, args) != 0:
        return False
  return lib.seccomp_load(ctx) == 0


def _limit_process(memory_mb):
  """OS limits that hold for the zygote and every child."""
  mem = memory_mb * 1024 * 1024
  resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
  resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  os.closerange(CHANNEL_FD + 1, 4096)  # fds 0-2 stay open on /dev/null: no free slot
  resource.setrlimit(resource.RLIMIT_NOFILE, (CHANNEL_FD + 1, CHANNEL_FD + 1))
  if os.geteuid() == 0:
    # Root may raise hard limits and write anywhere: run as nobody.
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def main():
  global _CHANNEL
  global RUNS_PER_CHILD, SPARES, PREFAULT
  fd, memory_mb = int(sys.argv[1]), int(sys.argv[2])
  RUNS_PER_CHILD = max(1, int(sys.argv[3])) if len(sys.argv) > 3 else 1
  jail = sys.argv[4] if len(sys.argv) > 4 else "on"
  SPARES = max(0, int(sys.argv[5])) if len(sys.argv) > 5 else 2
  PREFAULT = len(sys.argv) > 6 and sys.argv[6] == "warm"
  # The names come from the host (sandbox_policy is the one list); never a dunder.
  names = sys.argv[7].split(",") if len(sys.argv) > 7 else []
  _BUILTINS.update(
    (name, getattr(builtins, name))
    for name in names
    if not name.startswith("_") and hasattr(builtins, name)
  )
  # C code (numpy's lazy `from numpy._core import _methods`) imports through the calling
  # frame's builtins. Programs cannot spell a dunder, so only such internals reach this.
  _BUILTINS["__import__"] = _loaded_module
  _BUILTINS["print"] = _print
  import ctypes
  import numpy  # noqa: F401 -- loaded before files can no longer be opened

  try:
    _PRCTL[0] = ctypes.CDLL(None, use_errno=True).prctl
    _PRCTL[0](PR_GET_DUMPABLE, 0)  # a harmless call: ctypes' call path is built here once
  except (OSError, AttributeError):  # pragma: no cover -- no dlopen(NULL) or no prctl
    _PRCTL[0] = None
  compile("ñ = 1", "<warm>", "exec")  # loads what non-ASCII identifiers need
  if fd != CHANNEL_FD:
    os.dup2(fd, CHANNEL_FD)
    os.close(fd)
  _CHANNEL = Channel(sandbox_wire.Frames(CHANNEL_FD))
  as_root = os.geteuid() == 0
  done, missing, seccomp = _jail(as_root) if jail == "on" else ([], ["all (jail off)"], None)
  _limit_process(memory_mb)
  if seccomp is not None:
    if _seccomp(seccomp):
      done.append("seccomp")
    else:
      missing.append("seccomp (load failed)")
  report = {"applied": done, "missing": missing}
  try:
    _CHANNEL.send(["ready", os.getpid(), report])
  except BaseException:
    _die()
  # Children are forked ahead of need (SPARES of them besides the one on the channel) and
  # wait for their turn (`sandbox_turns`), so the fork is not on the host's path (nor, with
  # PREFAULT, the copy-on-write faults of a typical run). Only one child uses the channel
  # at a time, in fork order; one that is done hands it to the next itself.
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD})
  _warm_up()
  gc.collect()
  gc.freeze()  # the children's collections skip the zygote's objects (no copy-on-write)
  _ZYGOTE[0] = os.getpid()
  _PIDNS[0] = "namespaces" in done
  turns, init = sandbox_turns.Turns(SPARES + 2), _start_init() if _PIDNS[0] else 0
  _FILLERS.extend(_fill_pools())
  _zygote(turns, init)


POOL_BYTES = 16384  # CPython 3.10-3.12 obmalloc: 16 KiB pools of one block size each
_POOL_HEADER = 48  # where a fresh pool's first block starts
_FILLERS = []  # what `_fill_pools` allocated (kept: freeing it would make the holes again)


def _fill_pools(max_per_class: int = 100_000) -> list:
  """Fills the free blocks of the zygote's partly used object pools, for each of the 32
  small-object size classes, and returns the objects that fill them (inert: bytes, floats,
  bare objects; no program can reach them).

  A child's first allocations of each size would otherwise go into those holes: pages
  spread over the whole heap that the child shares with the zygote, each copied on the
  child's first write. Filled, its allocations go into a new pool, one page after another
  (~50 fewer page copies per run). A class is filled when an allocation lands at the
  start of a pool (a pool just made). Python builds other than obmalloc's (a debug
  allocator, `PYTHONMALLOC=malloc`) lose only the effect."""
  fillers = []
  for c in range(32):
    size = 16 * (c + 1)
    skip = 0
    if c == 0:
      make = object  # 16 bytes
    elif c == 1:
      make, skip = float, 200  # 24 bytes: the 32-byte class; past float's free list first
    else:
      n = size - sys.getsizeof(b"")  # a bytes object of exactly `size` bytes
      make = lambda n=n: bytes(n)  # noqa: E731
    for i in range(max_per_class):
      obj = make()
      fillers.append(obj)
      if i >= skip and id(obj) & (POOL_BYTES - 1) == _POOL_HEADER:
        break
  return fillers


def _start_init():
  """Forks process 1 of the children's PID namespace: it must outlive every child (when it
  ends, the kernel kills the namespace and no process can be forked into it), so it only
  reaps what is handed to it and dies with the zygote."""
  pid = os.fork()
  if pid == 0:
    try:
      resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
      if _PRCTL[0] is not None:
        _PRCTL[0](PR_SET_PDEATHSIG, SIGKILL)
      sigchld = {signal.SIGCHLD}  # blocked (the zygote blocked it before this fork)
      while True:
        signal.sigwaitinfo(sigchld)
        _reap()
    finally:
      os._exit(EXIT_CHANNEL)
  return pid


MAX_SPARE_DEATHS = 10  # spares killed in a row before the zygote gives up


def _zygote(turns, init=0):
  """Keeps the current child and SPARES spares alive, in turn order, forever. A child that
  dies holding the channel (before it passed its turn) is reported to the host and the
  zygote stops (the channel may hold half a message); a spare that dies before its turn is
  replaced under the same number. `init`: the pid of the children's PID namespace's first
  process (0: none); if it ends, so do the zygote and its children."""
  children = {}  # pid -> number
  next_seq, deaths = 1, 0

  def spawn(seq):
    pid = _fork_child(seq, turns)
    children[pid] = seq
    turns.register(seq, pid)

  # Every write after a fork copies a page its children still share, so the loop allocates
  # little: no generator, no new set per wait.
  sigchld = {signal.SIGCHLD}
  while True:
    turn = turns.turn
    ahead = 0
    for seq in children.values():
      if seq >= turn:
        ahead += 1
    while ahead <= SPARES:
      spawn(next_seq)
      next_seq += 1
      ahead += 1
    turns.wake(turn)  # in case its predecessor could not (no harm if it did)
    signal.sigwaitinfo(sigchld)
    for pid, code in _reap():
      if pid == init and init:
        for other in children:
          os.kill(other, signal.SIGKILL)
        _die()
      seq = children.pop(pid, None)
      turn = turns.turn
      if seq is None or seq < turn:  # a child that passed its turn, then exited
        deaths = 0
        continue
      if seq == turn:
        try:
          _CHANNEL.send(["exit", seq, code])
        finally:
          for other in children:
            os.kill(other, signal.SIGKILL)
          _die()
      deaths += 1
      if deaths > MAX_SPARE_DEATHS:
        for other in children:
          os.kill(other, signal.SIGKILL)
        _die()
      turns.register(seq, 0)  # its replacement must not read the dead one's pid
      spawn(seq)


_WARM_UP = """
def execute_command(video_clip, query, possible_answers):
    n = len([b for b in possible_answers if b]) + sum(range(3))
    try:
        x = {"a": [1.5, (2, 3)], "b": set()}
    except __sandbox_check__(Exception) as e:
        x = str(e)
    finally:
        __sandbox_check__(None); n += 1
    print(query, n)
    return select_answer(query, [str(n)], possible_answers)
"""


def _warm_up(times=8):
  """Runs a typical program in the zygote, so what the first run of a process initialises
  (caches, lazily built tables) is built once and shared by every child. `times` > 1 lets
  the adaptive interpreter specialise the code."""
  global _OUTPUT
  import numpy as np

  codec = _CHANNEL.codec
  msg = [
    "call",
    "f",
    (1, "a", [2.5, None], {"k": b"x"}, np.zeros((2, 2)), np.float32(1)),
    {"z": complex(1, 2), "s": {1}, "r": range(2)},
  ]
  for _ in range(times):
    codec.decode(codec.encode(msg))
  limits = {
    "max_output_chars": 1000,
    "max_depth": 100,
    "max_steps": 10000,
    "entry_point": "execute_command",
    "guarded": True,
  }
  args = {
    "video_clip": Handle(0, "VideoClip", "<clip>"),
    "query": "q",
    "possible_answers": ["a", "b"],
  }
  for _ in range(times):
    try:
      _run(_WARM_UP, args, ["select_answer"], limits, tool=lambda *a, **k: "a")
    except Exception:  # pragma: no cover -- a warm-up only
      pass
  sys.setrecursionlimit(1000)
  _OUTPUT, _CLEAN[0] = None, False


def _prefault():
  """In a fresh child, before its turn: the warm-up once more, so the pages a typical run
  writes (reference counts, interpreter caches) are copied from the zygote now rather than
  one fault at a time during the host's run. Our own program on our own data: the child
  still meets exactly one untrusted program."""
  _warm_up(times=1)


def _reap():
  """The (pid, exit code) of every child that has ended."""
  ended = []
  while True:
    try:
      pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
      return ended
    if pid == 0:
      return ended
    ended.append((pid, os.waitstatus_to_exitcode(status)))


def _fork_child(seq, turns):
  pid = os.fork()
  if pid == 0:
    try:
      _child(seq, turns)
    finally:
      os._exit(EXIT_CHANNEL)
  return pid


if __name__ == "__main__":
  main()
