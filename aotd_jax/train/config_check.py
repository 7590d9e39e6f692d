"""Checks a training config before anything is built, naming the `--config.` flag at fault.

A bad value (`total_steps=-1`, `batch_size=0`, ...) otherwise surfaces as a traceback deep in
optax, Grain or the mesh code that does not say which setting to change.
"""

from __future__ import annotations

from typing import Any

from aotd_jax.layers.compute import ComputeOptions


class ConfigError(ValueError):
  """A config value that cannot train; the message names the flag (`--config.total_steps`)."""


def _get(cfg, path: str) -> Any:
  node = cfg
  for part in path.split("."):
    if node is None or not hasattr(node, "get"):
      return None
    node = node.get(part, None)
  return node


def _int(
  errors: list[str], cfg, path: str, *, minimum: int, required: bool = True, what: str = ""
) -> None:
  value = _get(cfg, path)
  if value is None:
    if required:
      errors.append(f"--config.{path} is missing")
    return
  if isinstance(value, bool) or not isinstance(value, int):
    errors.append(f"--config.{path}={value!r}: expected an integer")
  elif value < minimum:
    errors.append(f"--config.{path}={value}: must be >= {minimum}{what}")


def _float(
  errors: list[str],
  cfg,
  path: str,
  *,
  low: float,
  high: float | None = None,
  low_open: bool = False,
  what: str = "",
) -> None:
  value = _get(cfg, path)
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    errors.append(f"--config.{path}={value!r}: expected a number")
    return
  if (value <= low if low_open else value < low) or (high is not None and value > high):
    bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    errors.append(f"--config.{path}={value}: must be {bound}{what}")


def check_train_config(cfg) -> None:
  """Raises `ConfigError` listing every bad value of a `launch.train` config by its flag."""
  errors: list[str] = []
  _int(errors, cfg, "total_steps", minimum=1)
  _int(errors, cfg, "batch_size", minimum=1)
  _int(errors, cfg, "checkpoint_every", minimum=1)
  _int(errors, cfg, "log_every", minimum=1, required=False)
  _int(errors, cfg, "keep_checkpoints", minimum=1, required=False)
  _int(errors, cfg, "seed", minimum=0, required=False)
  _float(errors, cfg, "rationale_weight", low=0.0)
  _float(errors, cfg, "neftune_alpha", low=0.0)
  _float(errors, cfg, "optim.learning_rate", low=0.0, low_open=True)
  _float(errors, cfg, "optim.warmup_ratio", low=0.0, high=1.0)
  _float(errors, cfg, "optim.final_lr_ratio", low=0.0, high=1.0)
  _float(errors, cfg, "optim.weight_decay", low=0.0)
  _float(errors, cfg, "optim.grad_clip", low=0.0)
  _int(errors, cfg, "data.seq_len", minimum=1)
  kind = _get(cfg, "data.kind") or "synthetic"
  if kind not in ("synthetic", "pipeline"):
    errors.append(f"--config.data.kind={kind!r}: expected 'synthetic' or 'pipeline'")
  if kind == "pipeline" or _get(cfg, "student.architecture") != "LlamaForCausalLM":
    _int(errors, cfg, "data.num_frames", minimum=1, required=False)
  _int(errors, cfg, "data.num_workers", minimum=0, required=False)
  _float(errors, cfg, "data.max_skip_fraction", low=0.0, high=1.0)
  mixing = _get(cfg, "data.mixing")
  if mixing is not None and mixing not in ("weighted", "concat_epoch"):
    errors.append(f"--config.data.mixing={mixing!r}: expected 'weighted' or 'concat_epoch'")
  from aotd_jax.data import annotations, video_processing

  for key, allowed in (
    ("window", annotations.WINDOWS),
    ("frame_sampling", video_processing.FRAME_SAMPLINGS),
  ):
    value = _get(cfg, f"data.{key}")
    if value is not None and value not in allowed:
      errors.append(f"--config.data.{key}={value!r}: expected one of {allowed}")
  compute = _get(cfg, "student.compute")
  if compute is not None:
    try:
      ComputeOptions.from_mapping(compute, where="--config.student.compute")
    except (TypeError, ValueError) as e:
      errors.append(str(e))
  mesh = _get(cfg, "mesh")
  if mesh is not None:
    for axis, size in dict(mesh).items():
      if isinstance(size, bool) or not isinstance(size, int) or size == 0 or size < -1:
        errors.append(f"--config.mesh.{axis}={size!r}: expected a positive size or -1 (fill)")
  if errors:
    raise ConfigError("bad training config:\n  " + "\n  ".join(errors))


def check_devices(cfg, device_count: int, platform: str) -> None:
  """Raises `ConfigError` when `cfg.expected_devices` (set by the real configs' presets; 0 or
  unset: no check) is not `device_count`: a preset sized for 8 GPUs started on a CPU box would
  otherwise end in an out-of-memory traceback while building the 7B student."""
  expected = int(cfg.get("expected_devices", 0) or 0)
  if expected and device_count != expected:
    raise ConfigError(
      f"--config.expected_devices={expected}: this config's mesh {dict(cfg.mesh)} and batch "
      f"size {cfg.batch_size} are sized for {expected} devices, and this run has "
      f"{device_count} ({platform}). To check a setup on one machine add `,runlocal` to the "
      f"config argument; to run on {device_count} devices deliberately pass "
      f"--config.expected_devices={device_count} (0: no check)"
    )
