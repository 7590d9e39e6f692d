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
