"""What makes an exported directory a Hub model beside `config.json` + safetensors: the
tokenizer and processor files, the chat template, `generation_config.json` and a model card
(`README.md`). Nothing of the project's own bookkeeping goes in."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from aotd_jax.data import files
from aotd_jax.hf import processor_files

# Files copied from the tokenizer / processor directory (the student's base model folder).
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "vocab.json",
  "merges.txt",
  "added_tokens.json",
  "chat_template.jinja",
  "chat_template.json",
)
PROCESSOR_FILES = processor_files.FILES


def generation_config(hf_config: Mapping[str, Any]) -> dict:
  """`generation_config.json` from the model config's special-token ids (greedy decoding, as
  the evaluation runs)."""
  text = hf_config.get("text_config") or hf_config
  out = {"_from_model_config": True, "do_sample": False}
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    value = hf_config.get(key, text.get(key))
    if value is not None:
      out[key] = value
  return out


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
  """Copies the tokenizer, processor and chat-template files of `src` that exist; returns
  their names."""
  copied = []
  for name in TOKENIZER_FILES + PROCESSOR_FILES:
    path = files.join(src, name)
    if files.isfile(path):
      files.copy_file(path, files.join(dst, name))
      copied.append(name)
  if "tokenizer_config.json" in copied:
    _portable_tokenizer_class(files.join(dst, "tokenizer_config.json"))
  return copied


def _portable_tokenizer_class(path: str) -> None:
  """A `tokenizer_config.json` transformers 5 wrote, made readable by 4.x too: the class
  `TokenizersBackend` (unknown to 4.x) becomes `PreTrainedTokenizerFast`, which loads the same
  tokenizer in both, with 5's model inputs spelt out (4.x's would add `token_type_ids`, which
  the VLMs' forward rejects); 5's list of `extra_special_tokens` (a dict of named tokens in
  4.47+, which fails on a list) goes back to `additional_special_tokens`, which 5 reads too."""
  config = json.loads(files.read_text(path))
  changed = False
  if config.get("tokenizer_class") == "TokenizersBackend":
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    changed = True
  extra = config.get("extra_special_tokens")
  if isinstance(extra, list):
    config.setdefault("additional_special_tokens", list(extra))
    del config["extra_special_tokens"]
    changed = True
  if changed:
    files.write_text(path, json.dumps(config, indent=2, ensure_ascii=False))


def _has_chat_template(hf_dir: str) -> bool:
  if any(
    files.isfile(files.join(hf_dir, n)) for n in ("chat_template.jinja", "chat_template.json")
  ):
    return True
  path = files.join(hf_dir, "tokenizer_config.json")
  if not files.isfile(path):
    return False
  return bool(json.loads(files.read_text(path)).get("chat_template"))


def student_chat_template(hf_config: Mapping[str, Any], *, has_own: bool) -> str | None:
  """The chat template the student was trained with, to write into the export, or None to keep
  the copied one: LLaVA-OneVision and Qwen2-VL students always use theirs
  (`conversation.STUDENT_CHAT_TEMPLATES`, which replaces the tokenizer's own in training);
  a LLaVA-NeXT-Video student whose tokenizer has none was trained on the plain format."""
  from aotd_jax.data import conversation  # pylint: disable=g-import-not-at-top

  architectures = hf_config.get("architectures") or [""]
  template = conversation.STUDENT_CHAT_TEMPLATES.get(architectures[0])
  if template is None and not has_own and hf_config.get("model_type") == "llava_next_video":
    template = conversation.PLAIN_CHAT_TEMPLATE
  return template


def _datasets(config: Mapping[str, Any]) -> list[str]:
  data = config.get("data") or {}
  names = list((data.get("datasets") or {}).keys())
  for part in ("qa", "cot"):
    for source in data.get(part) or ():
      if isinstance(source, Mapping) and source.get("name"):
        names.append(str(source["name"]))
  return sorted(set(names))


def _role_line(role: str, info: Mapping[str, Any]) -> str:
  """`- detector: owlv2`, `- program_llm: openai deepseek-coder-6.7b-instruct`: the backend and
  a served model's name, never a local path (a vocabulary `star:<dir>` is named `star`)."""
  if role == "tools":
    return f"- tools: {', '.join(f'{k}={v}' for k, v in sorted(info.items()))}"
  kind = str(info.get("kind", "")).partition(":")[0]
  parts = [kind] + [str(info[k]) for k in ("model", "name") if info.get(k)]
  if role == "object_vocabulary" and info.get("size") is not None:
    parts.append(f"({info['size']} names)")
  return f"- {role}: {' '.join(p for p in parts if p)}".rstrip()


def _counts(manifest: Mapping[str, Any]) -> dict:
  """The run's counts: `counts`, or the sum of its shards' (`shards`: name -> counts)."""
  if isinstance(manifest.get("counts"), Mapping):
    return dict(manifest["counts"])
  total: dict = {}
  for shard in (manifest.get("shards") or {}).values():
    for key, value in (shard or {}).items():
      if isinstance(value, int) and not isinstance(value, bool):
        total[key] = total.get(key, 0) + value
  return total


def manifest_summary(manifest: Mapping[str, Any]) -> list[str]:
  """Lines for the card from a CoT job's `manifest.json` (roles and counts, no local paths)."""
  lines = []
  if manifest.get("vision_experts"):
    lines.append(f"- vision experts: {manifest['vision_experts']}")
  for role, info in sorted((manifest.get("roles") or {}).items()):
    if isinstance(info, Mapping):
      lines.append(_role_line(role, info))
  counts = _counts(manifest)
  if counts:
    lines.append("- counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
  return lines


def _cot_set_name(manifest: Mapping[str, Any]) -> str:
  """A CoT set's heading on the card: its dataset format and manifest id."""
  data = (manifest.get("identity") or {}).get("data") or {}
  name = str(data.get("format") or "CoT set")
  return f"{name} (manifest {manifest['id']})" if manifest.get("id") else name


def model_card(
  *,
  base_model: str = "",
  config: Mapping[str, Any] | None = None,
  manifest: Mapping[str, Any] | None = None,
  manifests: Sequence[Mapping[str, Any]] = (),
) -> str:
  """The README.md of an export: Hub metadata (front matter) and what the model was trained on.

  `manifest` (one CoT job's manifest.json) or `manifests` (several: one section each) give the
  chains of thought's experts, LLMs and counts."""
  config = config or {}
  datasets = _datasets(config)
  lam = config.get("rationale_weight")
  meta = [
    "---",
    "library_name: transformers",
    "license: \"\"  # fill in: the base model's and the datasets' licences apply",
    "pipeline_tag: video-text-to-text",
  ]
  if base_model:
    meta.append(f"base_model: {base_model}")
  if datasets:
    meta.append("datasets:")
    meta += [f"- {d}" for d in datasets]
  meta += ["tags:", "- aotd", "- video-question-answering", "---", ""]
  body = [
    "# AoTD student",
    "",
    "A Video-LLM distilled with Agent-of-Thoughts Distillation (AoTD, CVPR 2025): "
    "L = L_label + λ·L_rationale over multiple-choice QA and agent chains of thought.",
    "",
  ]
  facts = []
  if base_model:
    facts.append(f"- base model: {base_model}")
  if datasets:
    facts.append(f"- datasets: {', '.join(datasets)}")
  if lam is not None:
    facts.append(f"- λ (rationale weight): {lam}")
  for key in ("total_steps", "batch_size"):
    if config.get(key) is not None:
      facts.append(f"- {key.replace('_', ' ')}: {config[key]}")
  body += facts + [""]
  sets = ([manifest] if manifest else []) + [m for m in manifests if m]
  if len(sets) == 1:
    body += ["## Chains of thought", ""] + manifest_summary(sets[0]) + [""]
  elif sets:
    body += ["## Chains of thought", ""]
    for m in sets:
      body += [f"### {_cot_set_name(m)}", ""] + manifest_summary(m) + [""]
  return "\n".join(meta + body)


def write_hub_files(
  hf_dir: str,
  *,
  hf_config: Mapping[str, Any],
  tokenizer_dir: str = "",
  config: Mapping[str, Any] | None = None,
  manifest: Mapping[str, Any] | None = None,
  base_model: str = "",
  normalization: tuple | None = None,
  manifests: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
  """Writes `README.md`, the tokenizer/processor files and (when `save_pretrained` has not)
  `generation_config.json` into `hf_dir`, beside config.json + safetensors; returns the names
  written. Processor files come from `tokenizer_dir` (a Qwen2-VL student's with the pixel
  bounds of the frames it trained at, `processor_files.pin_training_geometry`) or, where it has
  none, from the model's config (`processor_files.processor_configs`) with `normalization`,
  the (image_mean, image_std) the model was trained with (default: its released processor's).
  The chat template the student was trained with (`student_chat_template`) goes to
  `chat_template.jinja` and `tokenizer_config.json`.
  The card's `base_model` is `base_model` (a Hub repo id) or else the name of the config's
  `student.hf_dir` folder."""
  written = []

  def write_json(name: str, content: Mapping[str, Any], **kw) -> None:
    files.write_text(files.join(hf_dir, name), json.dumps(content, indent=2, **kw))

  if not files.isfile(files.join(hf_dir, "generation_config.json")):
    write_json("generation_config.json", generation_config(hf_config), sort_keys=True)
    written.append("generation_config.json")
  if tokenizer_dir:
    written += copy_tokenizer_files(tokenizer_dir, hf_dir)
  if not set(written) & set(PROCESSOR_FILES):
    written += processor_files.write_processor_files(hf_dir, hf_config, normalization)
  else:
    processor_files.pin_training_geometry(hf_dir, hf_config)
  # the source folder's template counts, not one left in `hf_dir` by an earlier export
  template = student_chat_template(
    hf_config, has_own=bool(tokenizer_dir) and _has_chat_template(tokenizer_dir)
  )
  if template is not None:
    files.write_text(files.join(hf_dir, "chat_template.jinja"), template)
    if "chat_template.jinja" not in written:
      written.append("chat_template.jinja")
    if files.isfile(files.join(hf_dir, "chat_template.json")):  # the older form: one template
      files.remove(files.join(hf_dir, "chat_template.json"))
      written = [n for n in written if n != "chat_template.json"]
    tok_config = files.join(hf_dir, "tokenizer_config.json")
    if files.isfile(tok_config):  # where transformers 4.x tokenizers read it
      config_json = json.loads(files.read_text(tok_config))
      config_json["chat_template"] = template
      write_json("tokenizer_config.json", config_json, ensure_ascii=False)
  base = str((config or {}).get("student", {}).get("hf_dir", "") or "")
  files.write_text(
    files.join(hf_dir, "README.md"),
    model_card(
      base_model=base_model or os.path.basename(base.rstrip("/")),
      config=config,
      manifest=manifest,
      manifests=manifests,
    ),
  )
  written.append("README.md")
  return written
