"""Multi-host training proven on one CPU machine: 2 processes × 4 host devices on the loopback
(`jax.distributed.initialize` with a local coordinator, Gloo collectives), an 8-device mesh.

One scenario (the processes are the slow part): the single-process run on 8 devices is the
reference; the 2-process run is SIGKILLed on process 1 after its step-2 checkpoint, process 0
is killed too (a pod that lost a VM), both restart and resume. Checked: every step's loss
equals the reference (same global batch), each host restored its own data position (one
state file per process, naming its shard), only process 0 wrote metrics / TensorBoard /
hf_config.json.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = [
  "--config.total_steps=4",
  "--config.checkpoint_every=2",
  "--config.log_every=1",
  "--config.batch_size=8",
  "--config.mesh.data=-1",
]


def _env(devices: int, **extra) -> dict:
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    OMP_NUM_THREADS="1",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
    "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0",  # conftest.py
    **extra,
  )
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None) if k not in extra else None
  return env


def _cmd(workdir, *overrides):
  # tests.fault_train: launch.train with the --kill_at_step / --kill_process fault injection
  return [
    sys.executable,
    "-m",
    "tests.fault_train",
    f"--config={ROOT}/configs/toyworld/distill.py:llama",
    f"--workdir={workdir}",
    *STEPS,
    *overrides,
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_pair(workdir, *overrides):
  port = _free_port()
  procs = []
  for pid in range(2):
    env = _env(
      4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)
    )
    procs.append(
      subprocess.Popen(
        _cmd(workdir, "--config.distributed=True", *overrides),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  return procs


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
  steps = [r["step"] for r in rows]
  assert len(steps) == len(set(steps)), f"metrics.jsonl written twice per step: {steps}"
  return {r["step"]: r["train/loss"] if "train/loss" in r else r["loss"] for r in rows}


@pytest.mark.slow
def test_two_processes_match_one_and_resume_every_host_after_sigkill(tmp_path):
  ref_dir, pod_dir = tmp_path / "one", tmp_path / "pod"
  ref = subprocess.Popen(
    _cmd(ref_dir), cwd=ROOT, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  # 1) both processes start; process 1 is SIGKILLed once its step-2 checkpoint is durable
  p0, p1 = _start_pair(pod_dir, "--kill_at_step=2", "--kill_process=1")
  _, err1 = p1.communicate(timeout=240)
  assert p1.returncode == -signal.SIGKILL, err1[-3000:]
  time.sleep(1.0)
  p0.kill()  # its next collective has no peer: the pod lost a VM
  p0.communicate(timeout=60)
  ckpt = pod_dir / "checkpoints" / "2"
  assert ckpt.is_dir(), sorted(os.listdir(pod_dir / "checkpoints"))
  states = {p.name: json.loads(p.read_text()) for p in (ckpt / "data").glob("process_*.json")}
  assert sorted(states) == ["process_0-of-2.json", "process_1-of-2.json"]
  assert states["process_0-of-2.json"] == {"index": 2, "shard": 0, "shards": 2}
  assert states["process_1-of-2.json"] == {"index": 2, "shard": 1, "shards": 2}
  # 2) both restart and resume from step 2
  q0, q1 = _start_pair(pod_dir)
  out1, err1 = q1.communicate(timeout=240)
  out0, err0 = q0.communicate(timeout=240)
  assert q0.returncode == 0 and q1.returncode == 0, (err0[-3000:], err1[-3000:])
  assert "resumed from step 2" in err0 and "resumed from step 2" in err1
  out, err = ref.communicate(timeout=240)
  assert ref.returncode == 0, err[-3000:]
  # 3) the same global batch gives the same loss at every step, before and after the resume
  one, pod = _losses(ref_dir), _losses(pod_dir)
  assert sorted(one) == [1, 2, 3, 4] and sorted(pod) == [1, 2, 3, 4], (one, pod)
  np.testing.assert_allclose(
    [pod[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=2e-5
  )
  # 4) only process 0 wrote logs and files: one TensorBoard file per run, one hf_config
  events = list((pod_dir / "tensorboard").glob("events.*"))
  assert len(events) == 2, events  # one per launch of process 0 (killed run + resumed run)
  assert (pod_dir / "checkpoints" / "hf_config.json").exists()


def test_coordinator_without_process_count_is_refused():
  from aotd_jax import sharding

  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
    sharding.maybe_initialize_distributed(
      {"distributed": True}, environ={"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}
    )
  assert not sharding.maybe_initialize_distributed({"distributed": False})


def test_synthetic_shards_make_the_global_batch_and_refuse_another_hosts_state():
  from aotd_jax.train.synthetic import SyntheticBatches

  kw = dict(batch_size=4, seq_len=12, vocab_size=64, seed=3)
  whole = next(SyntheticBatches(**kw, process_index=0, process_count=1))
  hosts = [SyntheticBatches(**kw, process_index=i, process_count=2) for i in range(2)]
  parts = [next(h) for h in hosts]
  np.testing.assert_array_equal(np.concatenate([p["input_ids"] for p in parts]), whole["input_ids"])
  with pytest.raises(ValueError, match="host 0 of 2 restored on host 1"):
    hosts[1].set_state(hosts[0].get_state())


def test_resume_on_another_number_of_hosts_names_the_missing_state(tmp_path):
  """A checkpoint written by 2 processes, restored by 1: the error names the file this process
  needs and the files the checkpoint holds."""
  from aotd_jax.train import checkpoint

  (tmp_path / "process_0-of-2.json").write_text('{"index": 2}')
  (tmp_path / "process_1-of-2.json").write_text('{"index": 2}')
  handler = checkpoint.PerProcessJsonHandler()
  with pytest.raises(
    FileNotFoundError,
    match=r"process_0-of-1.json: no data-iterator state for "
    r"this process \(1 processes now; the checkpoint holds \['process_0-of-2",
  ):
    handler.restore(tmp_path)
  handler.save(tmp_path, checkpoint.PerProcessJsonSave({"index": 3}))
  assert handler.restore(tmp_path) == {"index": 3}
