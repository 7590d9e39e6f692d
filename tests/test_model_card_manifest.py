"""The export's model card summarises a CoT job's real `manifest.json` (roles as
`registry.describe` writes them, counts per shard) without local paths."""

from aotd_jax.agent import manifest as manifest_lib
from aotd_jax.hf import hub


def _job_manifest(tmp_path) -> dict:
  """A manifest as `launch.generate_cots` leaves it after two shards (the roles' shapes as
  `experts.registry.describe` and `manifest.llm_role` write them)."""
  import json

  models = tmp_path / "models"
  roles = {
    "detector": {"kind": "owlv2", "path": str(models / "owlv2"), "threshold": 0.2},
    "grounder": {"kind": "univtg", "path": str(models / "u.ckpt"), "clip_path": str(models)},
    "video_qa": {"kind": "llava", "path": str(models / "llava"), "num_frames": 32},
    "program_llm": {"kind": "openai", "base_url": "http://x/v1", "model": "deepseek-coder"},
    "cot_llm": {"kind": "local", "model_dir": str(models / "coder")},
    "tools": {"find": "crops", "exist": "detector+qa"},
    "object_vocabulary": {"kind": f"star:{tmp_path / 'classes'}", "size": 6},
  }
  out = str(tmp_path / "cots")
  manifest_lib.open_manifest(out, roles, {"max_frames": 32}, {})
  manifest_lib.add_counts(out, "00000-of-00002", {"total": 3, "kept": 2, "rates": {"kept": 0.6}})
  manifest_lib.add_counts(out, "00001-of-00002", {"total": 2, "kept": 1, "rates": {"kept": 0.5}})
  return json.loads((tmp_path / "cots" / "manifest.json").read_text())


def test_card_names_backends_and_counts_without_local_paths(tmp_path):
  manifest = _job_manifest(tmp_path)
  lines = hub.manifest_summary(manifest)
  assert str(tmp_path) not in "\n".join(lines)
  assert lines == [
    "- vision experts: real",
    "- cot_llm: local",
    "- detector: owlv2",
    "- grounder: univtg",
    "- object_vocabulary: star (6 names)",
    "- program_llm: openai deepseek-coder",
    "- tools: exist=detector+qa, find=crops",
    "- video_qa: llava",
    "- counts: kept 3, total 5",
  ]
  card = hub.model_card(base_model="b", config={}, manifest=manifest)
  assert "## Chains of thought" in card and "- counts: kept 3, total 5" in card


def test_without_a_manifest_flag_the_card_names_every_cot_set_the_run_trained_on(tmp_path):
  """`launch.export` without `--cot_manifest` (docs/export.md) read no manifest, so the card of
  a run trained on STAR's and NExT-QA's CoTs said nothing of them; now it takes the sets the
  trainer checked (`WORKDIR/cot_frames.json`), one section each, read where the run found them."""
  import json
  import logging

  from aotd_jax.train import cot_frames

  sets = {}
  for fmt in ("star", "nextqa"):
    out = tmp_path / "cots" / fmt
    roles = {"detector": {"kind": "owlv2", "path": str(tmp_path / "owlv2")}}
    manifest_lib.open_manifest(str(out), roles, {"data": {"format": fmt}}, {})
    manifest_lib.add_counts(str(out), "00000-of-00001", {"total": 4, "kept": 2})
    sets[fmt] = json.loads((out / "manifest.json").read_text())
  report = {
    "sources": [
      {
        "source": f"--config.data.datasets.{f}.cots",
        "manifest": str(tmp_path / "cots" / f / "manifest.json"),
        "id": m["id"],
      }
      for f, m in sets.items()
    ]
    + [{"source": "--config.data.cot[0].path", "manifest": None, "unchecked": "no manifest"}]
  }
  manifests = cot_frames.trained_manifests(report)
  assert [m["id"] for m in manifests] == [sets["star"]["id"], sets["nextqa"]["id"]]
  card = hub.model_card(base_model="b", config={}, manifests=manifests)
  body = card.split("## Chains of thought", 1)[1]
  assert f"### star (manifest {sets['star']['id']})" in body
  assert f"### nextqa (manifest {sets['nextqa']['id']})" in body
  assert body.count("- counts: kept 2, total 4") == 2 and str(tmp_path) not in card
  # a set whose manifest was moved away, or replaced by another run's, is left out, logged
  (tmp_path / "cots" / "nextqa" / "manifest.json").write_text(json.dumps({"id": "other"}))
  (tmp_path / "cots" / "star" / "manifest.json").unlink()
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger("absl").addHandler(handler)
  try:
    assert cot_frames.trained_manifests(report) == []
  finally:
    logging.getLogger("absl").removeHandler(handler)
  text = " ".join(r.getMessage() for r in records)
  assert "no longer readable" in text and "now holds another run's manifest" in text
