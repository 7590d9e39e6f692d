"""Resuming a CoT directory whose manifest predates the frame keys (frame sampling, window, the
grounder's frame preprocessing): refused naming the keys and their old defaults, resumed with
`accept_old_defaults` when the run asks for those defaults (`aotd_jax.agent.manifest_added`)."""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = "owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://x/v1,model=m"


def _provenance(arg: str = ""):
  sys.path.insert(0, str(ROOT))
  from configs.cot import star
  from launch import generate_cots

  config = star.get_config(f"ann=a.json,videos=v,{PATHS}{',' + arg if arg else ''}")
  return config, generate_cots.provenance(config)


def _old_manifest(out: pathlib.Path, roles: dict, identity: dict) -> str:
  """A manifest as runs wrote it before 2026-12-04's frame keys: without them, its id over
  what it held then."""
  from aotd_jax.agent import manifest

  roles = json.loads(json.dumps(roles))
  identity = json.loads(json.dumps(identity))
  del identity["frame_sampling"], identity["data"]["read_kwargs"]["window"]
  del roles["grounder"]["frame_preprocess"]
  old_id = manifest.manifest_id(roles, identity)
  out.mkdir()
  (out / "manifest.json").write_text(
    json.dumps({"id": old_id, "roles": roles, "identity": identity, "runs": [], "shards": {}})
  )
  return old_id


def test_resume_with_other_values_names_the_keys_old_defaults_and_differences(tmp_path):
  from aotd_jax.agent import manifest

  _, (roles, identity, info) = _provenance()  # the real config: whole, official, official
  out = tmp_path / "cots"
  _old_manifest(out, roles, identity)
  for accept in (False, True):
    with pytest.raises(manifest.ManifestError) as e:
      manifest.open_manifest(str(out), roles, identity, {}, info, accept_old_defaults=accept)
    msg = str(e.value)
    assert str(out / "manifest.json") in msg
    assert "identity.frame_sampling (before 2026-12-04 always 'ours')" in msg
    assert "identity.data.read_kwargs.window (before 2026-12-04 always 'question')" in msg
    assert "roles.grounder.frame_preprocess (before 2026-12-04 always 'clip_processor')" in msg
    assert "frame_sampling: 'ours' -> 'official'" in msg
    assert "data.read_kwargs.window: 'question' -> 'whole'" in msg
    assert "grounder: frame_preprocess: 'clip_processor' -> 'official'" in msg
    assert "--accept_old_defaults" in msg and "new out_dir" in msg


def test_resume_with_the_old_defaults_needs_the_flag_and_is_recorded(tmp_path):
  from aotd_jax.agent import manifest

  config, (roles, identity, info) = _provenance("window=question,frame_sampling=ours")
  config.experts.grounder.frame_preprocess = "clip_processor"
  from launch import generate_cots

  roles, identity, info = generate_cots.provenance(config)
  out = tmp_path / "cots"
  old_id = _old_manifest(out, roles, identity)
  with pytest.raises(manifest.ManifestError, match="rerun with --accept_old_defaults") as e:
    manifest.open_manifest(str(out), roles, identity, {}, info)
  assert "This run's config asks for those same values" in str(e.value)
  ref = manifest.open_manifest(str(out), roles, identity, {}, info, accept_old_defaults=True)
  assert ref == f"manifest.json#{old_id}"  # the records already written keep their reference
  data = json.loads((out / "manifest.json").read_text())
  assert data["identity"]["frame_sampling"] == "ours"
  assert data["identity"]["data"]["read_kwargs"]["window"] == "question"
  assert data["roles"]["grounder"]["frame_preprocess"] == "clip_processor"
  [accepted] = data["old_defaults_accepted"]
  assert accepted["keys"] == {
    "identity.frame_sampling": "ours",
    "identity.data.read_kwargs.window": "question",
    "roles.grounder.frame_preprocess": "clip_processor",
  }
  # the keys are recorded now: a later resume needs no flag, another value is still refused
  assert manifest.open_manifest(str(out), roles, identity, {}, info) == ref
  with pytest.raises(manifest.ManifestError, match="frame_sampling: 'ours' -> 'official'"):
    manifest.open_manifest(str(out), roles, {**identity, "frame_sampling": "official"}, {}, info)


def test_a_current_manifest_with_other_settings_is_the_plain_refusal(tmp_path):
  from aotd_jax.agent import manifest

  _, (roles, identity, info) = _provenance()
  out = str(tmp_path / "cots")
  manifest.open_manifest(out, roles, identity, {}, info)
  with pytest.raises(manifest.ManifestError) as e:
    manifest.open_manifest(out, roles, {**identity, "frame_sampling": "ours"}, {}, info)
  assert "frame_sampling: 'official' -> 'ours'" in str(e.value)
  assert "--accept_old_defaults" not in str(e.value)
