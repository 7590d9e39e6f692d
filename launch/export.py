r"""Export a training run to Hugging Face format (a convenience over `python -m aotd_jax.hf export`).

  python -m launch.export --workdir=W --hf_dir=D [--step=N] [--tokenizer=TOK_DIR]

Writes `config.json` + safetensors for `transformers.LlavaNextVideoForConditionalGeneration`
(the latest step unless `--step`), and copies the tokenizer files when `--tokenizer` is given.
"""
from __future__ import annotations

import os
import shutil

from absl import app, flags

from aotd_jax.hf import orbax_io

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (holds checkpoints/).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Output Hugging Face directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Directory whose tokenizer files to copy.")
flags.mark_flags_as_required(["workdir", "hf_dir"])

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json")


def main(argv):
  del argv
  orbax_io.export(os.path.join(_WORKDIR.value, "checkpoints"), _HF_DIR.value, step=_STEP.value)
  if _TOKENIZER.value:
    for name in TOKENIZER_FILES:
      src = os.path.join(_TOKENIZER.value, name)
      if os.path.isfile(src):
        shutil.copy(src, os.path.join(_HF_DIR.value, name))
  print(f"exported {_WORKDIR.value} -> {_HF_DIR.value}")


if __name__ == "__main__":
  app.run(main)
