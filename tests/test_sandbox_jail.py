"""The worker's OS jail on its own: the seccomp allow-list, and the jail of a host that is not root.

Both tests switch the AST allow-list off and hand the program `ctypes` (reached through a numpy
module the worker has loaded), so the program makes raw system calls and only the OS layers
stand in its way.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap

import pytest

from aotd_jax.agent import Sandbox, sandbox_policy

# A program that, with the policy off, calls libc directly; returns {name: [result, errno]}.
ESCAPES = textwrap.dedent("""\
    def execute_command(video_clip, query, possible_answers):
        ct = __import__("numpy._core._internal", fromlist=["ctypes"]).ctypes
        libc = ct.CDLL(None, use_errno=True)
        page = ct.create_string_buffer(3 * 4096)
        aligned = ct.c_void_p((ct.addressof(page) + 4095) & ~4095)
        calls = {
            "socket": lambda: libc.socket(2, 1, 0),
            "open_for_writing": lambda: libc.open(b"/made_by_worker", 0o101, 0o644),
            "execve": lambda: libc.execve(b"/bin/sh", None, None),
            "uname": lambda: libc.syscall(63, ct.create_string_buffer(512)),
            "unshare": lambda: libc.unshare(0x10000000),
            "clone_new_net": lambda: libc.syscall(56, 0x40000000 | 17, 0, 0, 0, 0),
            "mprotect_exec": lambda: libc.mprotect(aligned, 4096, 7),
            "prlimit_other": lambda: libc.prlimit(1, 7, None, ct.create_string_buffer(16)),
            "ptrace": lambda: libc.ptrace(0, 0, None, None),
            "ioctl": lambda: libc.ioctl(0, 0x5401, ct.create_string_buffer(64)),
            "kill_everyone": lambda: libc.kill(-1, 0),
            "kill_host": lambda: libc.kill(int(query), 0),
            "kill_a_group": lambda: libc.kill(-2, 0),
            "getpid": lambda: libc.getpid(),
        }
        out = {}
        for name, call in calls.items():
            ct.set_errno(0)
            result = call()
            out[name] = [result, ct.get_errno()]
        return out
    """)
REFUSED = (
  "socket",
  "open_for_writing",
  "execve",
  "uname",
  "unshare",
  "clone_new_net",
  "mprotect_exec",
  "prlimit_other",
  "ptrace",
  "ioctl",
  "kill_everyone",
  "kill_a_group",
)
EPERM = 1
ARGS = {"video_clip": 0, "query": str(os.getpid()), "possible_answers": []}  # the host's pid
ESRCH = 3


def _policy_off(monkeypatch):
  monkeypatch.setattr(sandbox_policy, "validate", lambda source, **kw: None)


def _escapes(sb: Sandbox) -> dict:
  ex = sb.run(ESCAPES, {}, ARGS, timeout_s=10.0)
  assert ex.ok, ex.error
  return ex.value


def test_seccomp_allows_only_what_the_worker_needs(monkeypatch):
  """Not a deny-list: `uname`, `ioctl` and `ptrace` (which no earlier filter named) are
  refused like sockets, file writes, programs, namespaces, executable memory and signals to
  every process or a process group, with EPERM, while the calls the worker needs (getpid
  here; the rest of the suite for the others) work."""
  _policy_off(monkeypatch)
  with Sandbox(num_workers=1, memory_mb=256, spare_children=0) as sb:
    assert sb.run(ESCAPES.replace("ct = ", "return 1\n    ct = ", 1), {}, ARGS, timeout_s=10.0).ok
    report = list(sb._idle.queue)[0].jail_report
    if "seccomp" not in report["applied"]:
      pytest.skip(f"no seccomp filter on this platform: {report['missing']}")
    got = _escapes(sb)
  assert got["getpid"][0] > 0, got
  assert {name: got[name] for name in REFUSED} == {name: [-1, EPERM] for name in REFUSED}
  # The host is out of reach: not in the children's PID namespace, or not theirs to signal.
  assert got["kill_host"] in ([-1, ESRCH], [-1, EPERM]), got


# Run by the non-root test in a process of its own (as `nobody`, or as uid 1000 of a user
# namespace): the sandbox's own checks, printed as JSON.
_AS_USER = textwrap.dedent("""\
    import json, os, sys
    from aotd_jax.agent import Sandbox, sandbox_policy
    sandbox_policy.validate = lambda source, **kw: None
    out = {"uid": os.geteuid()}
    with Sandbox(num_workers=1, memory_mb=256, spare_children=0) as sb:
        ex = sb.run("def execute_command(video_clip, query, possible_answers):\\n"
                    "    return len(query)\\n", {}, {"video_clip": 0, "query": "abc",
                    "possible_answers": []}, timeout_s=10.0)
        out["ran"] = [ex.ok, ex.value, ex.error]
        worker = list(sb._idle.queue)[0]
        out["report"], pid = worker.jail_report, worker.proc.pid
        out["worker_uid_map"] = open(f"/proc/{pid}/uid_map").read().split()
        out["own_net"] = os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        out["root"] = os.readlink(f"/proc/{pid}/root")
        out["status"] = [l for l in open(f"/proc/{pid}/status").read().splitlines()
                         if l.startswith(("Uid:", "Seccomp:", "NoNewPrivs:"))]
        ex = sb.run(sys.argv[1], {}, {"video_clip": 0, "query": str(os.getpid()),
                    "possible_answers": []}, timeout_s=10.0)
        out["escapes"] = ex.value if ex.ok else ex.error
    print(json.dumps(out))
    """)


def _run_as(prefix: list[str], **kwargs) -> subprocess.CompletedProcess | None:
  """`_AS_USER` in a new process started with `prefix` (a wrapper command) or `kwargs`
  (`user=`, `group=`: no Python code runs between fork and exec)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  try:
    return subprocess.run(
      prefix + [sys.executable, "-c", _AS_USER, ESCAPES],
      capture_output=True,
      text=True,
      timeout=120,
      env=env,
      cwd=root,
      **kwargs,
    )
  except (PermissionError, subprocess.SubprocessError, OSError):
    return None


def test_jail_when_the_host_is_not_root():
  """The host as a user without root: the worker makes its own user namespace (mapped to
  `nobody` inside), mount and network namespaces, chroot and seccomp; or, where the platform
  refuses, the host says so once on stderr and the remaining layers still hold."""
  how = None
  if os.geteuid() != 0:
    pytest.skip("the whole suite runs as a non-root user here: every sandbox test covers it")
  try:
    nobody = pwd.getpwnam("nobody")
  except KeyError:
    nobody = None
  proc = None
  if nobody is not None:
    proc = _run_as([], user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    how = "nobody"
    if proc is not None and proc.returncode != 0 and "Permission denied" in proc.stderr:
      proc = None  # e.g. the interpreter lives under a directory only root may enter
  unshare = shutil.which("unshare")  # util-linux: a user namespace where we are uid 1000
  if proc is None and unshare:
    proc = _run_as([unshare, "--map-user=1000", "--map-group=1000", "--"])
    how = "uid 1000 of a user namespace"
    if proc is not None and proc.returncode != 0 and "unshare failed" in proc.stderr:
      proc = None
  if proc is None:
    pytest.skip(
      "cannot run a process as a non-root user here (nobody cannot run this "
      "interpreter, and there is no `unshare` or user namespaces are refused)"
    )
  assert proc.returncode == 0, (how, proc.stderr[-3000:])
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["uid"] != 0, how
  assert out["ran"] == [True, 3, None], out
  report = out["report"]
  if report["missing"]:  # said loudly, once
    assert proc.stderr.count("WARNING: the OS jail is incomplete") == 1, proc.stderr
  if "namespaces" in report["applied"]:
    # Its own user namespace: nobody inside, this process's uid outside.
    assert out["worker_uid_map"] == ["65534", str(out["uid"]), "1"], out
    assert out["own_net"], out
  if "chroot" in report["applied"]:
    assert out["root"] != "/", out
  if "seccomp" in report["applied"]:
    assert "Seccomp:\t2" in out["status"] and "NoNewPrivs:\t1" in out["status"], out
    escapes = out["escapes"]
    assert {n: escapes[n] for n in REFUSED} == {n: [-1, EPERM] for n in REFUSED}, escapes
  if "namespaces" in report["applied"]:  # the host, same uid outside: not in the namespace
    assert out["escapes"]["kill_host"] == [-1, ESRCH], out["escapes"]
  else:  # the layers that remain still refuse a file write and a program
    escapes = out["escapes"]
    assert escapes["open_for_writing"][0] == -1 and escapes["execve"][0] == -1, escapes
