r"""Export a training run as a Hub-ready Hugging Face directory.

  python -m launch.export --workdir=W --hf_dir=D [--step=N] [--tokenizer=TOK_DIR] \
      [--cot_manifest=COTS/manifest.json] [--base_model=ORG/NAME]

Writes `config.json` (with a top-level `rope_theta`), safetensors (sharded with an index above
5 GiB), `generation_config.json`, the tokenizer / processor / chat-template files of
`--tokenizer` (default: the student's `hf_dir` from the checkpoint's config, when it exists;
processor files made from the model's config where that folder has none) and a model card
(`README.md`: base model, datasets, λ, the CoT manifest's summary (without `--cot_manifest`:
each CoT set's the run trained on, listed in `WORKDIR/cot_frames.json`), library name, a
licence field to fill in) and `aotd_training.json`, the frames, prompt format and QA target the run
trained with, and how its CoTs' traces numbered frames (`launch.evaluate --student=D` takes
them as its defaults). The latest step unless
`--step`. Any of the paths may be a URL
(`gs://bucket/...`, with the `gcs` extra).
"""

from __future__ import annotations

import json

from absl import flags

from aotd_jax.data import files
from aotd_jax.hf import hub, io, orbax_io, processor_files
from aotd_jax.train import cot_frames, data as train_data
from aotd_jax.train.checkpoint import Checkpointer
from aotd_jax.train.config_check import ConfigError
from launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (holds checkpoints/).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Output Hugging Face directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_TOKENIZER = flags.DEFINE_string(
  "tokenizer",
  "",
  "Directory whose tokenizer / processor files to copy (default: the "
  "student's hf_dir from the saved config).",
)
_MANIFEST = flags.DEFINE_string(
  "cot_manifest",
  "",
  "One CoT job's manifest.json for the card (default: those of every CoT set the run trained "
  "on, from WORKDIR/cot_frames.json).",
)
_BASE_MODEL = flags.DEFINE_string(
  "base_model",
  "",
  "The base model's Hub repo id for the card (e.g. llava-hf/LLaVA-NeXT-Video-7B-hf; "
  "default: the name of the student's hf_dir folder).",
)
flags.mark_flags_as_required(["workdir", "hf_dir"])


def check_workdir(workdir: str) -> None:
  """Refuses a `--workdir` that is not a `launch.train` workdir, saying what it is instead.

  Raises:
    ConfigError: no such directory, or the run's `checkpoints/` directory itself.
  """
  if not files.isdir(workdir):
    raise ConfigError(f"--workdir={workdir}: no such directory (the launch.train --workdir)")
  if not files.isdir(files.join(workdir, "checkpoints")) and files.isfile(
    files.join(workdir, orbax_io.HF_CONFIG)
  ):
    parent = workdir.rstrip("/").rpartition("/")[0]
    raise ConfigError(
      f"--workdir={workdir} is a run's checkpoints directory; --workdir is the launch.train "
      f"workdir that holds it: --workdir={parent}"
    )


def read_cot_manifest(cot_manifest: str, report: dict, workdir: str) -> dict | None:
  """`--cot_manifest`'s JSON (None without it), checked against the CoT sets the run trained on
  (its `cot_frames.json`), so the card never names another run's CoTs.

  Raises:
    ConfigError: an unreadable manifest, or one whose id is none of the run's CoT sets'.
  """
  if not cot_manifest:
    return None
  try:
    manifest = json.loads(files.read_text(cot_manifest))
  except (OSError, ValueError) as e:
    raise ConfigError(
      f"--cot_manifest={cot_manifest}: not a readable manifest.json ({e})"
    ) from None
  trained = cot_frames.manifest_ids(report)
  if trained and manifest.get("id") not in trained:
    raise ConfigError(
      f"--cot_manifest={cot_manifest} (id {manifest.get('id')!r}) is not one of the CoT sets "
      f"this run trained on ({', '.join(f'{p} (id {i!r})' for i, p in trained.items())}, "
      f"{files.join(workdir, cot_frames.REPORT)}): give one of those, or leave the flag out"
    )
  return manifest


def export(
  workdir: str,
  hf_dir: str,
  *,
  step: int | None = None,
  tokenizer: str = "",
  cot_manifest: str = "",
  base_model: str = "",
) -> list[str]:
  ckpt_dir = files.join(workdir, "checkpoints")
  check_workdir(workdir)
  report = cot_frames.read_report(workdir) or {}
  manifest = read_cot_manifest(cot_manifest, report, workdir)  # before anything is written
  # without --cot_manifest, the card names every CoT set the run trained on
  manifests = [] if cot_manifest else cot_frames.trained_manifests(report)
  orbax_io.export(ckpt_dir, hf_dir, step=step)
  checkpointer = Checkpointer(ckpt_dir)
  try:
    config = checkpointer.restore_meta(step).get("config")
  finally:
    checkpointer.close()
  config = config if isinstance(config, dict) else {}
  tokenizer = tokenizer or str(config.get("student", {}).get("hf_dir", "") or "")
  if tokenizer and not files.isdir(tokenizer):
    tokenizer = ""
  # the normalisation the trainer wrote beside its checkpoints (build.write_hf_config), for
  # processor files made where the tokenizer folder has none
  found = processor_files.read_normalization(ckpt_dir)
  written = hub.write_hub_files(
    hf_dir,
    hf_config=io.read_config(hf_dir),
    tokenizer_dir=tokenizer,
    config=config,
    manifest=manifest,
    manifests=manifests,
    base_model=base_model,
    normalization=found[0] if found else None,
  )
  data = config.get("data")
  if isinstance(data, dict):
    inputs = {"data": train_data.trained_inputs(data)}
    # how the CoTs' traces number frames, which the student's rationales follow
    numbering = cot_frames.frame_numbers(report)
    if numbering:
      inputs["data"]["frame_numbers"] = numbering
    files.write_text(
      files.join(hf_dir, train_data.TRAINED_INPUTS_FILE), json.dumps(inputs, indent=1)
    )
    written.append(train_data.TRAINED_INPUTS_FILE)
  return written


def main(argv):
  del argv
  written = export(
    _WORKDIR.value,
    _HF_DIR.value,
    step=_STEP.value,
    tokenizer=_TOKENIZER.value,
    cot_manifest=_MANIFEST.value,
    base_model=_BASE_MODEL.value,
  )
  print(f"exported {_WORKDIR.value} -> {_HF_DIR.value} (+ {', '.join(written)})")


if __name__ == "__main__":
  cli.run(main)
