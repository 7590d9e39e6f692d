"""The trainer checks each CoT set's manifest against its own frames before it builds anything
(`aotd_jax.train.cot_frames`, `launch.train`): window, frame sampling and frame count."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from aotd_jax.data import pipeline
from aotd_jax.train import cot_frames
from aotd_jax.train.config_check import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = {
  "qid": "q1",
  "video_path": "v.mp4",
  "conversation": [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A."}],
  "kept": True,
}


def _identity(fmt="star", window="whole", sampling="official", frames=32):
  data = {"format": fmt, "path": "a.json", "video_dir": "v", "read_kwargs": {}}
  if window is not None:
    data["read_kwargs"]["window"] = window
  identity = {"data": data, "max_frames": frames, "frame_numbers": "sampled"}
  if sampling is not None:
    identity["frame_sampling"] = sampling
  return identity


def _cot_dir(path, identity=None, ref="manifest.json#abc", manifest_id="abc"):
  """A CoT job's output folder: one kept record naming `ref`, and (unless `identity` is None)
  the manifest."""
  os.makedirs(path)
  record = {**RECORD, **({"manifest": ref} if ref else {})}
  pipeline.write_cot_array_record(os.path.join(path, "cot-00000-of-00001.array_record"), [record])
  if identity is not None:
    with open(os.path.join(path, "manifest.json"), "w") as f:
      json.dump({"id": manifest_id, "roles": {}, "identity": identity}, f)
  return os.path.join(path, "cot-*.array_record")


def _config(cots, **data):
  d = dict(window="whole", frame_sampling="official", num_frames=32, kind="pipeline")
  d.update(data)
  d["datasets"] = {"star": {"format": "star", "annotations": "a", "video_root": "v", "cots": cots}}
  return ml_collections.ConfigDict({"data": d})


def test_matching_frames_pass_and_are_reported(tmp_path):
  report = cot_frames.check(_config(_cot_dir(str(tmp_path / "c"), _identity())))
  [source] = report["sources"]
  assert source["source"] == "--config.data.datasets.star.cots" and source["mismatches"] == []
  assert source["recorded"]["frame_sampling"] == {"value": "official", "recorded": True}
  assert report["trainer"] == {"window": "whole", "frame_sampling": "official", "num_frames": 32}
  # how the traces number frames, for evaluating the student's rationales
  assert cot_frames.frame_numbers(report) == "sampled"
  other = {"manifest": "m", "recorded": {"frame_numbers": {"value": "source"}}}
  assert cot_frames.frame_numbers({"sources": [source, other]}) is None
  path = cot_frames.write_report(report, str(tmp_path / "w"))
  assert json.load(open(path))["sources"][0]["manifest"].endswith("manifest.json")
  assert cot_frames.read_report(str(tmp_path / "w")) == json.load(open(path))


@pytest.mark.parametrize(
  "data, key, cot_value, ours",
  [
    ({"frame_sampling": "ours"}, "frame_sampling", "official", "ours"),
    ({"window": "question"}, "window", "whole", "question"),
    ({"num_frames": 16}, "num_frames", 32, 16),
  ],
)
def test_a_mismatch_names_both_values_the_manifest_and_the_flags(
  tmp_path, data, key, cot_value, ours
):
  cots = _cot_dir(str(tmp_path / "c"), _identity())
  with pytest.raises(ConfigError) as e:
    cot_frames.check(_config(cots, **data))
  msg = str(e.value)
  manifest = os.path.join(str(tmp_path / "c"), "manifest.json")
  assert f"made with {key}={cot_value!r} ({manifest})" in msg
  assert f"trains with --config.data.{key}={ours!r}" in msg
  assert f"Set --config.data.{key}={cot_value} " in msg
  setting = {"num_frames": "frames"}.get(key, key)
  assert f"regenerate the CoTs with {setting}={ours} in the configs/cot/*.py string" in msg
  assert "--config.data.datasets.star.cots" in msg
  assert "--config.data.allow_cot_frame_mismatch=True" in msg
  # deliberate: trains, and the report says what differed
  report = cot_frames.check(_config(cots, allow_cot_frame_mismatch=True, **data))
  assert report["allow_cot_frame_mismatch"] and report["sources"][0]["mismatches"] == [key]
  assert len(report["errors_allowed"]) == 1


def test_a_manifest_from_before_the_frame_keys_reads_as_its_old_defaults(tmp_path):
  cots = _cot_dir(str(tmp_path / "c"), _identity(window=None, sampling=None))
  with pytest.raises(ConfigError) as e:
    cot_frames.check(_config(cots))
  msg = str(e.value)
  assert "made with window='question'" in msg and "made with frame_sampling='ours'" in msg
  assert "not recorded: its run's default before 2026-12-04" in msg
  report = cot_frames.check(_config(cots, window="question", frame_sampling="ours"))
  assert report["sources"][0]["recorded"]["window"] == {"value": "question", "recorded": False}


def test_window_is_compared_only_where_questions_have_windows(tmp_path):
  # NExT-QA's records have no question window: its CoTs' window setting changes nothing
  cots = _cot_dir(str(tmp_path / "c"), _identity(fmt="nextqa", window=None))
  report = cot_frames.check(_config(cots))
  assert "window" not in report["sources"][0]["recorded"]


def test_frame_count_is_compared_only_when_traces_number_the_sampled_frames(tmp_path):
  identity = {**_identity(), "frame_numbers": "source"}
  report = cot_frames.check(_config(_cot_dir(str(tmp_path / "c"), identity), num_frames=8))
  assert report["sources"][0]["mismatches"] == []


def test_missing_or_foreign_manifests(tmp_path):
  # the records name a manifest that was not copied beside them
  cots = _cot_dir(str(tmp_path / "a"), None)
  with pytest.raises(
    ConfigError, match=r"name manifest.json#abc, but .*/a/manifest.json is missing"
  ):
    cot_frames.check(_config(cots))
  report = cot_frames.check(_config(cots, allow_cot_frame_mismatch=True))
  assert report["sources"][0]["unchecked"] == "its manifest is missing (allowed)"
  # hand-made CoTs name none: nothing to check, and the report says so
  report = cot_frames.check(_config(_cot_dir(str(tmp_path / "b"), None, ref=None)))
  assert report["sources"][0]["unchecked"] == "its records name no manifest"
  # a manifest of another run beside them
  cots = _cot_dir(str(tmp_path / "c"), _identity(), manifest_id="other")
  with pytest.raises(ConfigError, match="has id 'other': the files beside it were made by another"):
    cot_frames.check(_config(cots))
  # an unreadable manifest
  cots = _cot_dir(str(tmp_path / "d"), _identity())
  with open(os.path.join(str(tmp_path / "d"), "manifest.json"), "w") as f:
    f.write("{")
  with pytest.raises(ConfigError, match="manifest .*/d/manifest.json is not readable JSON"):
    cot_frames.check(_config(cots))
  with pytest.raises(ConfigError, match="CoT glob matches no file"):
    cot_frames.check(_config(str(tmp_path / "none" / "cot-*.array_record")))


def test_launch_train_stops_before_building_anything(tmp_path):
  """The production config's command with CoTs made on other frames: a one-line usage error
  (exit 2) naming both values, before the student (a config.json without weights) is built."""
  cots = _cot_dir(str(tmp_path / "c"), _identity(window="question", sampling="ours"))
  (tmp_path / "no_model").mkdir()
  (tmp_path / "no_model" / "config.json").write_text("{}")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      f"--config=configs/distill/lnv7b.py:h100x8,hf_dir={tmp_path}/no_model,datasets=star",
      f"--config.data.datasets.star.cots={cots}",
      f"--workdir={tmp_path}/w",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "made with frame_sampling='ours'" in result.stderr
  assert "trains with --config.data.window='whole'" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_shards_of_two_splits_in_one_folder_are_refused(tmp_path):
  """Two runs over the same questions (--num_shards 8, then 2) in one folder: every CoT twice."""
  cots = _cot_dir(str(tmp_path / "c"), _identity())
  pipeline.write_cot_array_record(str(tmp_path / "c" / "cot-00000-of-00002.array_record"), [RECORD])
  with pytest.raises(ConfigError, match=r"2 different splits \(-of-00001, -of-00002\)"):
    cot_frames.check(_config(cots))


def test_the_cot_job_refuses_another_split_in_its_out_dir(tmp_path):
  from aotd_jax.agent import job

  out = tmp_path / "cots"
  out.mkdir()
  job.check_split(str(out), job.shard_name(0, 2))  # an empty folder takes any split
  (out / "records-00003-of-00008.jsonl").write_text("")
  job.check_split(str(out), job.shard_name(5, 8))  # the same split resumes
  with pytest.raises(job.JobError, match="holds shards of a 8-worker split and this worker is one"):
    job.check_split(str(out), job.shard_name(0, 2))


def test_launch_export_refuses_a_cot_manifest_the_run_did_not_train_on(tmp_path):
  """The card must name the run's CoTs: a --cot_manifest whose id is none of those in the
  run's cot_frames.json is one line (exit 2) listing them, before anything is written."""
  cots = _cot_dir(str(tmp_path / "c"), _identity())
  report = cot_frames.check(_config(cots))
  assert cot_frames.manifest_ids(report) == {
    "abc": os.path.join(str(tmp_path / "c"), "manifest.json")
  }
  (tmp_path / "w" / "checkpoints").mkdir(parents=True)
  cot_frames.write_report(report, str(tmp_path / "w"))
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"id": "zzz", "roles": {}}))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.export",
      f"--workdir={tmp_path / 'w'}",
      f"--hf_dir={tmp_path / 'hub'}",
      f"--cot_manifest={other}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"--cot_manifest={other} (id 'zzz') is not one of the CoT sets" in result.stderr
  assert "(id 'abc')" in result.stderr and not (tmp_path / "hub").exists()
