"""The toy world's tokenizer and tiny language experts (aotd_jax.demo.language_experts)."""
import json
import os

import numpy as np
import pytest

from aotd_jax.demo import language_experts as le


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  from aotd_jax.data import toyworld
  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=0, num_train=6, num_val=2, num_test=1)
  return str(out)


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory):
  return le.build_tokenizer(world, tmp_path_factory.mktemp("tok"))


def test_tokenizer_round_trips_programs_and_fixes_special_ids(world, tokenizer_dir):
  from aotd_jax.hf.api import load_tokenizer
  tok = load_tokenizer(tokenizer_dir)
  assert len(tok) <= le.MAX_VOCAB
  assert {t: tok.convert_tokens_to_ids(t) for t in le.SPECIAL_IDS} == le.SPECIAL_IDS
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
  records = le.read_split(world, "val") + le.read_split(world, "test")
  assert records
  for qa in records:  # unseen questions too: byte-level BPE keeps every character
    for text in (le.program_prompt(qa.question, qa.choices) + le.program_body(le.gold_program(qa)),
                 qa.question + " " + " ".join(qa.choices)):
      ids = tok(text, add_special_tokens=False)["input_ids"]
      assert tok.unk_token_id not in ids
      assert tok.decode(ids) == text
  ids = tok("<video>\nWhat is the red circle doing?")["input_ids"]
  assert ids[:2] == [1, 4]


def test_tokenizer_is_cached_and_checks_its_arguments(world, tokenizer_dir, tmp_path):
  stamp = os.path.getmtime(os.path.join(tokenizer_dir, "tokenizer.json"))
  assert le.build_tokenizer(world, tokenizer_dir) == tokenizer_dir
  assert os.path.getmtime(os.path.join(tokenizer_dir, "tokenizer.json")) == stamp
  assert le.read_done(tokenizer_dir)["vocab_size"] <= 512
  with pytest.raises(ValueError, match="vocab_size=1024"):
    le.build_tokenizer(world, tmp_path / "t", vocab_size=1024)
  with pytest.raises(le.LanguageExpertError, match="no train.json"):
    le.build_tokenizer(tmp_path / "nowhere", tmp_path / "t")
