"""Checks that an older transformers (default 4.45.2) loads our Hub exports; needs the network
(pip), so it is not part of CI. docs/export.md records its last result.

  python tools/check_export_compat.py                        # 4.45.2 on the three toy exports
  python tools/check_export_compat.py --transformers=4.46.3 --keep_dir=/tmp/compat

1. With this interpreter (the project's transformers) it writes random tiny LLaVA-NeXT-Video,
   LLaVA-OneVision and Qwen2-VL students with `hf.save_pretrained` + `hub.write_hub_files`
   (toy tokenizer; processor files and chat template from `aotd_jax/hf/processor_files.py`).
2. It makes a throwaway venv whose own site-packages hold only the older transformers (and
   what it needs that the project's venv lacks or has too new); a `.pth` file puts the
   project's site-packages after it, so torch, numpy and safetensors are the project's.
3. In that venv, for each export (`--child`): `AutoTokenizer` (chat template rendered),
   `GenerationConfig`, the config's architecture class with no missing or unexpected keys,
   `AutoProcessor` on a 4-frame clip, and the logits of that input (4.47+ build video
   processors only with torchvision: without it, the logits of the pipeline's own inputs).
4. Back here: the project's transformers runs the same export on the old processor's inputs
   (logits must agree), and the old processor's pixels and placeholder count must be what the
   student's pipeline makes.
Exits 1 if any check fails; prints one line per check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENTS = {
  "llava": "LlavaNextVideoForConditionalGeneration",
  "onevision": "LlavaOnevisionForConditionalGeneration",
  "qwen2vl": "Qwen2VLForConditionalGeneration",
}
# The video placeholder of each student's prompt (Qwen2-VL's M-RoPE needs it between its
# vision start / end tokens, as its chat template writes it).
PROMPTS = {
  "llava": "<video>",
  "onevision": "<video>",
  "qwen2vl": "<|vision_start|><|video_pad|><|vision_end|>",
}
LOGIT_TOL = 1e-4


def clip():
  """The 4-frame square clip both sides feed (square: every processor keeps its size)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  return np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# In the old transformers (no aotd_jax import: only transformers, torch, numpy)
# ----------------------------------------------------------------------------------------------


def child(name: str, export_dir: str, out: str) -> None:
  """Loads `export_dir` with this interpreter's transformers; writes the processor's inputs and
  the model's logits to `out` (.npz) and the checks' results to `out`.json."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  report = {"transformers": transformers.__version__}
  tok = transformers.AutoTokenizer.from_pretrained(export_dir)
  text = tok.apply_chat_template(
    [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
  )
  report["chat_template"] = bool(text) and "hi" in text
  gen = transformers.GenerationConfig.from_pretrained(export_dir)
  report["generation_config"] = gen.do_sample is False
  with open(os.path.join(export_dir, "config.json")) as f:
    arch = json.load(f)["architectures"][0]
  model, info = getattr(transformers, arch).from_pretrained(export_dir, output_loading_info=True)
  report["weights"] = not info["missing_keys"] and not info["unexpected_keys"]
  if not report["weights"]:
    report["weights_detail"] = {k: sorted(info[k])[:5] for k in ("missing_keys", "unexpected_keys")}
  try:
    processor = transformers.AutoProcessor.from_pretrained(export_dir)
  except ImportError as e:  # 4.47+ build video processors with torchvision only
    if "orchvision" not in str(e):
      raise
    report["processor"] = "AutoProcessor needs torchvision (absent): the pipeline's inputs"
    inputs = {
      k: torch.from_numpy(v) for k, v in np.load(out.replace(".npz", "_pipeline.npz")).items()
    }
  else:
    report["processor"] = type(processor).__name__
    inputs = processor(text=f"{PROMPTS[name]} what happens?", videos=[clip()], return_tensors="pt")
  extra = {}
  if "video_grid_thw" in inputs and hasattr(model, "get_rope_index"):
    # 4.45's Qwen2-VL forward leaves M-RoPE positions to `prepare_inputs_for_generation`: a
    # plain forward call passes them, as generation does.
    extra["position_ids"], _ = model.get_rope_index(
      inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"]
    )
  with torch.no_grad():
    logits = model.eval()(**inputs, **extra).logits
  np.savez(out, logits=logits.float().numpy(), **{k: v.numpy() for k, v in inputs.items()})
  with open(out + ".json", "w") as f:
    json.dump(report, f)


# ----------------------------------------------------------------------------------------------
# In the project's interpreter
# ----------------------------------------------------------------------------------------------


def write_exports(where: str) -> dict[str, str]:
  """The three toy exports under `where`; name -> directory."""
  import copy  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, ROOT)
  from aotd_jax import hf  # pylint: disable=g-import-not-at-top
  from aotd_jax.data.toy_tokenizer import train_tokenizer  # pylint: disable=g-import-not-at-top
  from aotd_jax.hf import hub, io, registry  # pylint: disable=g-import-not-at-top
  from aotd_jax.rehearsal.checkpoints import QWEN_SPECIALS  # pylint: disable=g-import-not-at-top
  from configs.toyworld import distill as toy  # pylint: disable=g-import-not-at-top

  shutil.rmtree(where, ignore_errors=True)
  base = train_tokenizer(
    ["what is on the table? the red cube.", "what happens? step 1"] * 20,
    os.path.join(where, "tok"),
    vocab_size=300,
  )
  dirs = {}
  for name, arch in STUDENTS.items():
    init, tok = dict(toy.STUDENTS[name][1]), copy.deepcopy(base)
    if name == "llava":
      # 4.x's pooling divides by image_size // patch_size**2 (at least 1 from 64 // 8**2), and
      # its model takes a prompt with fewer <video> than `video_seq_length` (or <image> than
      # `image_seq_length`) for an unexpanded one: the released 288 / 576, not a toy's counts.
      init["vision_config"] = dict(init["vision_config"], image_size=64)
      init["image_grid_pinpoints"] = [[64, 64], [64, 128], [128, 64]]
      init.update(image_seq_length=(64 // 8) ** 2, video_seq_length=(64 // 8 // 2) ** 2)
    if name == "qwen2vl":
      tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
      ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
      init.update(
        video_token_id=ids["<|video_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
      )
    adapter = registry.adapter_for(arch)
    model = adapter.model_class(adapter.config_from_hf(init), rngs=nnx.Rngs(0))
    out, tok_dir = os.path.join(where, name), os.path.join(where, f"{name}_tok")
    hf.save_pretrained(model, out)
    tok.save_pretrained(tok_dir)
    hub.write_hub_files(out, hf_config=io.read_config(out), tokenizer_dir=tok_dir)
    dirs[name] = out
  return dirs


def make_venv(path: str, requirement: str) -> str:
  """A venv at `path` with `requirement` installed over the project's site-packages; returns
  its python."""
  venv.EnvBuilder(with_pip=True, clear=True).create(path)
  python = os.path.join(path, "bin", "python")
  own = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  with open(os.path.join(own, "zz_project.pth"), "w") as f:  # after the venv's own packages
    f.write("\n".join(site.getsitepackages()) + "\n")
  subprocess.run(
    [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement], check=True
  )
  return python


def expected_pixels(name: str, hf_config: dict):
  """What the student's pipeline feeds for `clip()` (patchified for Qwen2-VL)."""
  from aotd_jax.data import qwen2_vl_processing, video_processing  # pylint: disable=g-import-not-at-top
  from aotd_jax.hf import registry  # pylint: disable=g-import-not-at-top

  cfg = registry.adapter_for(STUDENTS[name]).config_from_hf(hf_config)
  size = cfg.vision_config.image_size
  mean, std = cfg.pixel_normalization  # the export's processor files hold the released values
  x = video_processing.preprocess_video(
    clip(),
    shortest_edge=size,
    crop_size=size,
    resize=getattr(cfg, "video_resize", "shortest_edge"),
    image_mean=mean,
    image_std=std,
  )
  grid = None
  if name == "qwen2vl":
    v = cfg.vision_config
    x, grid = qwen2_vl_processing.patchify(
      x,
      patch_size=v.patch_size,
      merge_size=v.spatial_merge_size,
      temporal_patch_size=v.temporal_patch_size,
    )
  else:
    x = x[None]
  video_id = getattr(cfg, "video_token_id", None) or cfg.video_token_index
  return x, cfg.video_tokens(4), video_id, grid


def pipeline_inputs(name: str, export_dir: str, out: str) -> None:
  """The student pipeline's inputs for `clip()` (placeholders expanded, pixels), saved for a
  transformers whose AutoProcessor cannot be built without torchvision."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from aotd_jax.hf import io  # pylint: disable=g-import-not-at-top

  hf_config = io.read_config(export_dir)
  pixels, tokens, _, grid = expected_pixels(name, hf_config)
  token = "<|video_pad|>" if name == "qwen2vl" else "<video>"
  text = f"{PROMPTS[name]} what happens?".replace(token, token * tokens)
  ids = transformers.AutoTokenizer.from_pretrained(export_dir)(text, return_tensors="np")
  arrays = {
    "input_ids": ids["input_ids"],
    "attention_mask": ids["attention_mask"],
    "pixel_values_videos": pixels,
  }
  if grid is not None:
    arrays["video_grid_thw"] = np.asarray([grid], np.int64)
  np.savez(out, **arrays)


def compare(name: str, export_dir: str, out: str, processor_ran: bool) -> dict[str, bool]:
  """The project's transformers on the old processor's inputs, and the pipeline's pixels."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from aotd_jax.hf import io  # pylint: disable=g-import-not-at-top

  data = dict(np.load(out))
  hf_config = io.read_config(export_dir)
  model = getattr(transformers, STUDENTS[name]).from_pretrained(export_dir).eval()
  inputs = {k: torch.from_numpy(v) for k, v in data.items() if k != "logits"}
  if name == "qwen2vl" and "mm_token_type_ids" not in inputs:  # 5's M-RoPE input, after 4.x
    ids = data["input_ids"]
    types = np.where(
      ids == hf_config["image_token_id"], 1, np.where(ids == hf_config["video_token_id"], 2, 0)
    )
    inputs["mm_token_type_ids"] = torch.from_numpy(types)
  with torch.no_grad():
    logits = model(**inputs).logits.float().numpy()
  pixels, tokens, video_id, _ = expected_pixels(name, hf_config)
  checks = {"same_logits": bool(np.allclose(logits, data["logits"], atol=LOGIT_TOL))}
  if processor_ran:  # else the inputs are the pipeline's own: nothing to compare
    checks["pipeline_pixels"] = bool(np.allclose(data["pixel_values_videos"], pixels, atol=1e-5))
    checks["video_tokens"] = int((data["input_ids"] == video_id).sum()) == tokens
  return checks


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transformers", default="4.45.2", help="the older version to check")
  parser.add_argument("--keep_dir", default="", help="work here and keep it (default: a temp dir)")
  parser.add_argument("--child", nargs=3, metavar=("NAME", "EXPORT", "OUT"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    child(*args.child)
    return 0
  work = args.keep_dir or tempfile.mkdtemp(prefix="export_compat_")
  os.makedirs(work, exist_ok=True)
  import transformers  # pylint: disable=g-import-not-at-top

  print(f"exports written with transformers {transformers.__version__} in {work}")
  dirs = write_exports(os.path.join(work, "exports"))
  python = make_venv(os.path.join(work, "venv"), f"transformers=={args.transformers}")
  failed = 0
  for name, export_dir in dirs.items():
    out = os.path.join(work, f"{name}.npz")
    pipeline_inputs(name, export_dir, out.replace(".npz", "_pipeline.npz"))
    r = subprocess.run(
      [python, os.path.abspath(__file__), "--child", name, export_dir, out],
      capture_output=True,
      text=True,
      cwd=work,
    )
    if r.returncode:
      print(f"{name}: FAILED to load with transformers {args.transformers}:\n{r.stderr[-3000:]}")
      failed += 1
      continue
    with open(out + ".json") as f:
      report = json.load(f)
    ran = "torchvision" not in report["processor"]
    checks = {k: v for k, v in report.items() if isinstance(v, bool)} | compare(
      name, export_dir, out, ran
    )
    bad = [k for k, v in checks.items() if not v]
    failed += bool(bad)
    print(
      f"{name}: transformers {report['transformers']} {report['processor']}: "
      + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items())
      + (f" {report.get('weights_detail', '')}" if "weights" in bad else "")
    )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
