"""The toy world's program generator: a tiny Llama trained on (compact prompt -> gold program).

    path = train_program_generator(world_dir, tokenizer_dir, out_dir, steps=300)
    llm = aotd_jax.agent.llm.LocalLlama(path)
    reply = llm.complete([program_prompt(q, choices)], max_new_tokens=160)[0]
    program = programs.parse_program(reply, prefix=programs.PROGRAM_SIGNATURE + "\\n")

Training uses the distillation `Trainer` (program tokens in `label_mask`, `rationale_mask`
zero) on a one-device mesh. Scores on the val split (program exact match, and the accuracy of
the answers the generated programs give when run in the sandbox on oracle experts) are written
to `out_dir/scores.json` and the `DONE` marker.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from aotd_jax.agent import programs
from aotd_jax.projects.toyworld.language_experts import (
  LanguageExpertError,
  check_positive,
  gold_program,
  is_done,
  mark_done,
  program_body,
  program_prompt,
  read_split,
  run_programs,
)

DEFAULT_SIZE = dict(
  hidden_size=64,
  intermediate_size=192,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  batch_size=8,
  learning_rate=3e-3,
  max_length=256,
  max_new_tokens=160,
  eval_questions=64,
)
PARSE_PREFIX = programs.PROGRAM_SIGNATURE + "\n"


def resolve_size(size: Mapping[str, Any], defaults: Mapping[str, Any], who: str) -> dict:
  """`defaults` updated by `size`; a key that is not a known setting is a ValueError."""
  unknown = sorted(set(size) - set(defaults))
  if unknown:
    raise ValueError(f"{who}: unknown size setting(s) {unknown}; known: {sorted(defaults)}")
  out = dict(defaults, **size)
  for k, v in out.items():
    if k == "learning_rate":
      if not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{who}: learning_rate={v!r} must be a positive number")
    elif isinstance(defaults[k], bool):
      if not isinstance(v, bool):
        raise ValueError(f"{who}: {k}={v!r} must be True or False")
    else:
      check_positive(k, v)
  return out


def load_tokenizer(tokenizer_dir: str | os.PathLike):
  """The toy tokenizer of `tokenizer_dir`; LanguageExpertError naming the directory if absent."""
  from aotd_jax.hf.api import load_tokenizer as load

  if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
    raise LanguageExpertError(
      f"tokenizer_dir {tokenizer_dir}: no tokenizer.json (run "
      "language_experts.build_tokenizer first)"
    )
  return load(str(tokenizer_dir))


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[dict]:
  """(prompt, target) -> {input_ids, label_mask}: BOS + prompt, target + EOS as labels.

  The prompt is encoded alone, as `LocalLlama` encodes it at run time, so the boundary
  tokens the model is trained on are the ones it sees when serving.
  """
  out = []
  for prompt, target in pairs:
    p = list(tokenizer(prompt)["input_ids"])
    t = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (p + t)[:max_length]
    mask = ([0] * len(p) + [1] * len(t))[:max_length]
    out.append({"input_ids": np.asarray(ids, np.int32), "label_mask": np.asarray(mask, np.int32)})
  return out


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, np.ndarray]:
  """Right-pads a batch to its longest example (rounded up to a multiple of 32)."""
  width = -(-max(len(e["input_ids"]) for e in examples) // 32) * 32
  batch = {
    k: np.zeros((len(examples), width), np.int32)
    for k in ("input_ids", "attention_mask", "label_mask", "rationale_mask")
  }
  batch["input_ids"][:] = pad_id
  for i, e in enumerate(examples):
    n = len(e["input_ids"])
    batch["input_ids"][i, :n] = e["input_ids"]
    batch["attention_mask"][i, :n] = 1
    batch["label_mask"][i, :n] = e["label_mask"]
  return batch


def one_device_trainer(model, steps: int, learning_rate: float):
  """The distillation `Trainer` on a one-device mesh (the experts train on one CPU/GPU)."""
  import jax

  from aotd_jax import sharding
  from aotd_jax.train.optim import make_optimizer
  from aotd_jax.train.trainer import Trainer

  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  tx = make_optimizer(
    dict(learning_rate=learning_rate, warmup_ratio=0.05, grad_clip=1.0, final_lr_ratio=0.1), steps
  )
  return Trainer(model, tx, mesh=mesh, rationale_weight=0.0)


def fit(
  trainer,
  examples: Sequence[dict],
  *,
  steps: int,
  batch_size: int,
  seed: int,
  pad_id: int,
  collate_fn=None,
) -> list[float]:
  """`steps` optimiser steps over shuffled epochs of `examples`; returns the label losses."""
  collate_fn = collate if collate_fn is None else collate_fn
  rng = np.random.default_rng(seed)
  order: list[int] = []
  losses = []
  for _ in range(steps):
    while len(order) < batch_size:
      order += list(rng.permutation(len(examples)))
    idx, order = order[:batch_size], order[batch_size:]
    losses.append(trainer.train_step(collate_fn([examples[i] for i in idx], pad_id)).label_loss)
  return losses


def save_expert(
  model, tokenizer, out_dir: str, info: dict, losses: Sequence[float], score=None
) -> str:
  """Saves model + tokenizer (HF layout), scores it (`score(model) -> dict`, stored as
  `info["val"]`), then writes `scores.json` and, last, the `DONE` marker."""
  from aotd_jax import hf

  t0 = time.perf_counter()
  os.makedirs(out_dir, exist_ok=True)
  hf.save_pretrained(model, out_dir)
  tokenizer.save_pretrained(out_dir)
  info = dict(info, first_loss=losses[0], final_loss=float(np.mean(losses[-10:])))
  if score is not None:
    info["val"] = score(model)
  info["seconds"] = round(info.get("train_seconds", 0.0) + time.perf_counter() - t0, 2)
  with open(os.path.join(out_dir, "scores.json"), "w") as f:
    json.dump(info, f, indent=1, sort_keys=True)
  mark_done(out_dir, info)
  return out_dir


def build_model(tokenizer, size: Mapping[str, Any], seed: int):
  """A fresh tiny `LlamaForCausalLM` whose vocabulary is the tokenizer's."""
  from flax import nnx

  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

  config = LlamaConfig(
    vocab_size=len(tokenizer),
    hidden_size=size["hidden_size"],
    intermediate_size=size["intermediate_size"],
    num_hidden_layers=size["num_hidden_layers"],
    num_attention_heads=size["num_attention_heads"],
    num_key_value_heads=size["num_key_value_heads"],
    max_position_embeddings=size["max_length"] + size["max_new_tokens"],
    rms_norm_eps=1e-5,
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
    pad_token_id=tokenizer.pad_token_id,
  )
  return LlamaForCausalLM(config, rngs=nnx.Rngs(seed))


def score_program_generator(
  world_dir: str | os.PathLike,
  llm,
  *,
  split: str = "val",
  max_questions: int = 64,
  max_new_tokens: int = 160,
  tools=None,
) -> dict:
  """Program exact match and executed-answer accuracy of `llm`'s programs on `split`.

  `llm` completes `program_prompt`s (e.g. `LocalLlama(path)`); programs run in the sandbox
  on `tools` (default: oracle experts with the world's ground truth), so the answer accuracy
  measures the programs, not the experts. Chance is 1 / number of choices (0.25).
  """
  records = read_split(world_dir, split)[:max_questions]
  if not records:
    raise LanguageExpertError(f"toy world {world_dir}: split {split!r} has no questions")
  replies = llm.complete(
    [program_prompt(qa.question, qa.choices) for qa in records], max_new_tokens=max_new_tokens
  )
  parsed = [programs.parse_program(r, prefix=PARSE_PREFIX) for r in replies]
  exact = [p.ok and p.source.strip() == gold_program(qa).strip() for p, qa in zip(parsed, records)]
  runnable = [(qa, p.source) for qa, p in zip(records, parsed) if p.ok]
  runs = run_programs(world_dir, runnable, tools=tools) if runnable else []
  answers = {qa.qid: ex.value if ex.ok else None for (qa, _), ex in zip(runnable, runs)}
  correct = [answers.get(qa.qid) == qa.answer for qa in records]
  n = len(records)
  return {
    "split": split,
    "questions": n,
    "parsed": sum(p.ok for p in parsed) / n,
    "exact_match": sum(exact) / n,
    "executed_ok": sum(ex.ok for ex in runs) / n,
    "answer_accuracy": sum(correct) / n,
    "chance": float(np.mean([1 / max(len(qa.choices), 1) for qa in records])),
  }


def train_program_generator(
  world_dir: str | os.PathLike,
  tokenizer_dir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  steps: int,
  seed: int = 0,
  evaluate: bool = True,
  **size,
) -> str:
  """Trains the tiny program generator on the train split and saves it in `out_dir` (cached).

  Args:
    world_dir: a toy world (`toyworld.generate_world`).
    tokenizer_dir: `build_tokenizer`'s output (saved beside the weights).
    out_dir: where the HF directory goes (`LocalLlama(out_dir)` serves it).
    steps: optimiser steps.
    seed: init and data-order seed.
    evaluate: score on the val split (`score_program_generator`) into `scores.json`.
    **size: overrides of `DEFAULT_SIZE` (hidden_size, num_hidden_layers, batch_size, ...).

  Returns:
    `out_dir`.
  """
  out_dir = str(out_dir)
  if is_done(out_dir):
    return out_dir
  steps = check_positive("steps", steps)
  size = resolve_size(size, DEFAULT_SIZE, "train_program_generator")
  t0 = time.perf_counter()
  tokenizer = load_tokenizer(tokenizer_dir)
  records = read_split(world_dir, "train")
  if not records:
    raise LanguageExpertError(f"toy world {world_dir}: the train split has no questions")
  pairs = [
    (program_prompt(qa.question, qa.choices), program_body(gold_program(qa))) for qa in records
  ]
  examples = encode_pairs(tokenizer, pairs, size["max_length"])
  model = build_model(tokenizer, size, seed)
  trainer = one_device_trainer(model, steps, size["learning_rate"])
  losses = fit(
    trainer,
    examples,
    steps=steps,
    batch_size=size["batch_size"],
    seed=seed,
    pad_id=tokenizer.pad_token_id,
  )
  model = trainer.sync_model()
  train_s = time.perf_counter() - t0

  info = {
    "steps": steps,
    "seed": seed,
    "size": size,
    "train_examples": len(examples),
    "train_seconds": round(train_s, 2),
    "prompt": "language_experts.program_prompt",
  }

  def score(model):
    from aotd_jax.agent.llm import LocalLlama

    llm = LocalLlama(model=model, tokenizer=tokenizer, max_batch=16)
    return score_program_generator(
      world_dir, llm, max_questions=size["eval_questions"], max_new_tokens=size["max_new_tokens"]
    )

  return save_expert(model, tokenizer, out_dir, info, losses, score if evaluate else None)
