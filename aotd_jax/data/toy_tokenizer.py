"""A small byte-level BPE tokenizer trained on the toy world's text (questions, choices,
programs, rationales), saved as `tokenizer.json` + `tokenizer_config.json` so that
transformers' `AutoTokenizer` loads it from the directory like any real checkpoint's.

Byte-level BPE keeps whitespace, so generated programs decode to exactly the text the model
produced (indentation and string literals intact)."""

from __future__ import annotations

import os
from typing import Iterable

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>")


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = 1024):
  """Trains the tokenizer on `texts`, saves it in `out_dir` and returns it (a
  `transformers.PreTrainedTokenizerFast` with pad/bos/eos/unk and the `<video>` token)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=list(SPECIAL_TOKENS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(list(texts), trainer=trainer)
  bos = tok.token_to_id("<s>")
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="<s>",
    eos_token="</s>",
    unk_token="<unk>",
    pad_token="<pad>",
    additional_special_tokens=["<video>", "<image>"],
  )
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(str(out_dir))
  return fast
