"""Every `launch.tpu.pod` command the docs show runs in its dry run and prints what the docs say:
the setup step installs the TPU build of JAX with the tested pins; the run passes the config,
the overrides and the XLA / libtpu settings to every worker, in the background with one log
per worker; the configs it names load."""

import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("docs/pods.md", "launch/tpu/README.md", "launch/tpu/pod.py")
SETUP = "python -m pip install -q -c constraints.txt -e '.[tpu,gcs]'"


def pod_commands(doc: str) -> list[list[str]]:
  """The argv (after `python -m launch.tpu.pod`) of each pod command in `doc`."""
  with open(os.path.join(ROOT, doc)) as f:
    text = f.read().replace("\\\n", "")  # the shell's line continuation
  return [
    shlex.split(line.strip())[3:]
    for line in text.splitlines()
    if line.strip().startswith("python -m launch.tpu.pod ")
  ]


def dry_run(argv: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "launch.tpu.pod", *argv],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )


def remote_command(stdout: str) -> str:
  """The command the printed gcloud line runs on every worker."""
  gcloud = shlex.split(stdout.strip())
  return next(a for a in gcloud if a.startswith("--command="))[len("--command=") :]


def _flag(argv: list[str], name: str) -> str | None:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  return values[-1] if values else None


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  assert os.path.isfile(os.path.join(ROOT, path)), f"{path} does not exist"
  module = importlib.import_module(path[: -len(".py")].replace("/", "."))
  return module.get_config(arg or None)


@pytest.mark.parametrize("doc", DOCS)
def test_documented_pod_commands_do_what_the_docs_say(doc):
  commands = pod_commands(doc)
  assert any("--setup" in c for c in commands), f"{doc}: no setup command"
  assert any("--setup" not in c for c in commands), f"{doc}: no run command"
  for argv in commands:
    assert "--dry_run" in argv, f"{doc}: {argv} would run gcloud"
    r = dry_run(argv)
    assert r.returncode == 0, f"{doc}: {argv}: {r.stderr[-2000:]}"
    out = r.stdout.strip()
    gcloud = shlex.split(out)
    assert gcloud[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", _flag(argv, "tpu")]
    assert f"--zone={_flag(argv, 'zone')}" in gcloud and "--worker=all" in gcloud
    remote = remote_command(out)
    repo = _flag(argv, "repo_dir") or "~/aotd_jax"
    assert remote.startswith(f"cd {repo} && "), remote
    config = _load_config(_flag(argv, "config"))
    assert config is not None
    if "--setup" in argv:
      assert "python3 -m venv .venv && . .venv/bin/activate" in remote and SETUP in remote
      assert "launch." not in remote
      continue
    module = _flag(argv, "module") or "launch.train"
    short = module.rsplit(".", 1)[-1]
    assert f"nohup python -m {module} " in remote, remote
    assert f"> ~/aotd_logs/{short}-$(hostname).log 2>&1 < /dev/null &" in remote
    assert "--config.distributed=True" in remote and "distributed" in config
    for a in argv:
      if a.startswith("--config."):
        assert shlex.quote(a) in remote, f"{a} does not reach the workers"
    if _flag(argv, "workdir"):
      assert shlex.quote(f"--workdir={_flag(argv, 'workdir')}") in remote
    for name, var in (("libtpu_init_args", "LIBTPU_INIT_ARGS"), ("xla_flags", "XLA_FLAGS")):
      if _flag(argv, name):
        assert f"export {var}={shlex.quote(_flag(argv, name))} && " in remote


def test_setup_installs_the_tpu_build_at_the_tested_pins():
  with open(os.path.join(ROOT, "setup.py")) as f:
    assert '"tpu": ["jax[tpu]"]' in f.read()
  with open(os.path.join(ROOT, "constraints.txt")) as f:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", f.read(), re.M))
  assert pins["jax"] == pins["jaxlib"], pins  # jax[tpu] then takes the libtpu of this jaxlib
  r = dry_run(
    [
      "--tpu=t",
      "--zone=z",
      "--config=configs/distill/lnv7b.py:tpu_v5p_128",
      "--workdir=gs://b/r",
      "--setup",
      "--python=python3.11",
      "--dry_run",
    ]
  )
  assert r.returncode == 0, r.stderr
  remote = remote_command(r.stdout)
  assert remote.startswith("cd ~/aotd_jax && python3.11 -m venv .venv") and SETUP in remote


def test_foreground_runs_and_a_training_run_without_workdir():
  base = ["--tpu=t", "--zone=z", "--config=configs/distill/lnv7b.py:tpu_v5p_128", "--dry_run"]
  attached = dry_run(base + ["--workdir=gs://b/r", "--background=false"])
  assert attached.returncode == 0, attached.stderr
  remote = remote_command(attached.stdout)
  assert "nohup" not in remote and remote.endswith(
    "python -m launch.train "
    "--config=configs/distill/lnv7b.py:tpu_v5p_128 "
    "--workdir=gs://b/r --config.distributed=True"
  )
  missing = dry_run(base)
  assert missing.returncode != 0 and "launch.train needs --workdir" in missing.stderr


def test_installed_launchers_find_the_documented_configs_from_any_directory(tmp_path):
  """`--config=configs/...` resolves against the installed `configs` package when the working
  directory has no such file (a launcher run outside the checkout)."""
  from launch import cli

  packaged = os.path.join(ROOT, "configs", "toyworld", "distill.py")
  assert cli.packaged_configs(
    ["x", "--config=configs/toyworld/distill.py:llama"], cwd=str(tmp_path)
  ) == ["x", f"--config={packaged}:llama"]
  for argv in (
    ["--config=configs/toyworld/distill.py:llama"],
    ["--config=configs/nope.py"],
    ["--config=my/own.py:a"],
    ["--config.total_steps=3"],
  ):
    assert cli.packaged_configs(argv, cwd=ROOT if "toyworld" in argv[0] else str(tmp_path)) == argv
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      "--workdir=w",
      "--config=configs/toyworld/distill.py:llama",
      "--config.no_such_key=1",
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2 and "the config has no key 'no_such_key'" in r.stderr, r.stderr[-2000:]
