"""The toy world's language side: its tokenizer and the tiny language experts.

- `build_tokenizer(world_dir, out_dir)`: a byte-level BPE (`aotd_jax.data.toy_tokenizer`) on
  the world's questions, choices, gold programs, the program prompts, the students' QA / CoT
  prompts and rationales verbalised from oracle-run traces of gold programs.
- `train_program_generator(...)` (`aotd_jax.projects.toyworld.program_generator`): a tiny Llama that writes
  `execute_command` programs from the compact prompt `program_prompt(question, choices)`.
- `train_qa_expert(...)` (`aotd_jax.projects.toyworld.qa_expert`): a tiny LLaVA-NeXT-Video that answers
  toy-world questions and names actions, bound by `experts` as `kind="llava"`.

Every function caches: an output directory holding a `DONE` marker (written last) is a
finished result and is returned at once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Mapping

from aotd_jax.agent import programs
from aotd_jax.projects.toyworld import prompts
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.oracle import PLUGIN
from aotd_jax.projects.toyworld.prompts import program_prompt  # noqa: F401 (the trainers' prompt)
from aotd_jax.projects.toyworld.render import PRESENT
import experts

DONE = "DONE"
SPECIAL_IDS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<video>": 4, "<image>": 5}
MAX_VOCAB = 512  # TINY_LLAVA / TINY_LLAMA (tiny_models.py) embed 512 tokens


class LanguageExpertError(RuntimeError):
  """A language expert cannot be built: the message names the file or argument at fault."""


# -- shared helpers ------------------------------------------------------------------------------


def is_done(out_dir: str | os.PathLike) -> bool:
  """True when `out_dir` holds a finished result (its `DONE` marker)."""
  return os.path.isfile(os.path.join(out_dir, DONE))


def mark_done(out_dir: str | os.PathLike, info: Mapping[str, Any]) -> None:
  """Writes the `DONE` marker (JSON: `info` + time), after everything else in `out_dir`."""
  payload = dict(info, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  tmp = os.path.join(out_dir, DONE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(out_dir, DONE))


def read_done(out_dir: str | os.PathLike) -> dict:
  """The info a finished `out_dir` recorded in its `DONE` marker ({} if it holds none)."""
  try:
    with open(os.path.join(out_dir, DONE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def read_split(world_dir: str | os.PathLike, split: str) -> list:
  """The split's questions (`VideoQA`), read with the STAR reader as real data is.

  Raises:
    LanguageExpertError: naming the missing `{split}.json`.
  """
  from aotd_jax.data import annotations

  path = os.path.join(world_dir, f"{split}.json")
  if not os.path.isfile(path):
    raise LanguageExpertError(
      f"toy world {world_dir}: no {split}.json (run "
      "aotd_jax.projects.toyworld.world.generate_world first)"
    )
  return annotations.read("star", path)


def gold_program(qa) -> str:
  """The question's gold program (STAR's `question_program`, kept in `meta`)."""
  source = qa.meta.get("question_program")
  if not isinstance(source, str) or programs.PROGRAM_NAME not in source:
    raise LanguageExpertError(f"question {qa.qid}: no gold program (meta['question_program'])")
  return source


def check_positive(name: str, value: Any) -> int:
  """`value` as an int >= 1; ValueError naming the argument otherwise."""
  if isinstance(value, bool) or not isinstance(value, (int,)) or value < 1:
    raise ValueError(f"{name}={value!r}: must be an int >= 1")
  return int(value)


def program_body(source: str) -> str:
  """A gold program without its `def` line: the target after `program_prompt`."""
  head, sep, body = source.partition(programs.PROGRAM_SIGNATURE + "\n")
  if not sep or head.strip():
    raise LanguageExpertError(
      f"program does not start with {programs.PROGRAM_SIGNATURE!r}: {source[:60]!r}"
    )
  return body


def oracle_tools(world_dir: str | os.PathLike) -> dict[str, Callable]:
  """The expert tools bound to the world's ground truth (perfect experts)."""
  config = experts.default_config()
  config.ground_truth.path = str(world_dir)
  return experts.make_tools(config, plugins=[PLUGIN])


def clip_args(world_dir: str | os.PathLike, *, max_frames: int = 24) -> Callable[[Any], dict]:
  """qa -> `execute_command`'s arguments: its window of the world's mp4 as a `VideoClip`
  (`experts.clip.clip_args`, as the CoT launcher builds them)."""
  from experts.clip import clip_args as make_clip_args

  videos = os.path.join(str(world_dir), "videos")
  return make_clip_args(lambda qa: os.path.join(videos, f"{qa.video_id}.mp4"), max_frames)


def run_programs(
  world_dir: str | os.PathLike,
  items: Iterable[tuple[Any, str]],
  *,
  tools: Mapping[str, Callable] | None = None,
  timeout_s: float = 20.0,
) -> list:
  """Runs (qa, program source) pairs in the sandbox over `tools` (default: oracle tools)."""
  from aotd_jax.agent import run_program

  tools = oracle_tools(world_dir) if tools is None else tools
  make_args = clip_args(world_dir)
  return [run_program(src, tools, make_args(qa), timeout_s=timeout_s) for qa, src in items]


# -- the tokenizer -------------------------------------------------------------------------------


def _action_prompts() -> list[str]:
  """The action-recognition prompts the QA expert is trained on, and their answers."""
  out = []
  for name in toyworld.ALL_OBJECT_NAMES:
    out.append(f"What is the {name} doing?")
    out += [f"the {name} {PRESENT[a]}" for a in toyworld.ACTIONS if a != "touch"]
  return out


def tokenizer_texts(world_dir: str | os.PathLike, *, rationales: int = 24) -> list[str]:
  """Everything the demo tokenises, from the train split (and fixed prompt text)."""
  from aotd_jax.agent import cot
  from aotd_jax.data import conversation

  records = read_split(world_dir, "train")
  texts = [
    programs.read_prompt_file("program_guidelines.txt"),
    prompts.few_shot_examples(),
    experts.api_docs(),
    conversation.build_prompt(None, "x") + " (A) x",
    *_action_prompts(),
  ]
  for qa in records:
    prog = gold_program(qa)
    answer = conversation.answer_target(qa.choices, qa.answer, qa.answer_index)
    texts += [
      program_prompt(qa.question, qa.choices) + program_body(prog),
      conversation.build_prompt(
        None, conversation.qa_user_text(qa.question, qa.choices), assistant_text=answer
      ),
      conversation.cot_user_text(qa.question, qa.choices),
    ]
  # Rationales as the agent writes them: verbalised traces of gold programs on oracle tools.
  picked = records[:: max(1, len(records) // max(rationales, 1))][:rationales]
  for qa, ex in zip(picked, run_programs(world_dir, [(qa, gold_program(qa)) for qa in picked])):
    if ex.ok:
      texts.append(cot.verbalise(ex.trace, ex.value))
  return texts


def build_tokenizer(
  world_dir: str | os.PathLike, out_dir: str | os.PathLike, *, vocab_size: int = MAX_VOCAB
) -> str:
  """Trains the toy tokenizer on the world's text and saves it in `out_dir` (cached).

  Special tokens `<pad> <s> </s> <unk> <video> <image>` get ids 0..5, as `TINY_LLAVA` /
  `TINY_LLAMA` expect; `vocab_size` is at most 512 so those configs embed every id.

  Returns:
    `out_dir` (with `tokenizer.json`, `tokenizer_config.json` and the `DONE` marker).
  """
  out_dir = str(out_dir)
  if is_done(out_dir):
    return out_dir
  vocab_size = check_positive("vocab_size", vocab_size)
  if not len(SPECIAL_IDS) + 256 < vocab_size <= MAX_VOCAB:
    raise ValueError(
      f"vocab_size={vocab_size}: must be in ({len(SPECIAL_IDS) + 256}, "
      f"{MAX_VOCAB}] (byte alphabet + special tokens, and the tiny configs' "
      "embedding size)"
    )
  from aotd_jax.data.toy_tokenizer import train_tokenizer

  texts = tokenizer_texts(world_dir)
  tok = train_tokenizer(texts, out_dir, vocab_size=vocab_size)
  ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS}
  if ids != SPECIAL_IDS:
    raise LanguageExpertError(
      f"tokenizer in {out_dir}: special token ids {ids}, expected {SPECIAL_IDS}"
    )
  mark_done(out_dir, {"vocab_size": len(tok), "texts": len(texts)})
  return out_dir


def __getattr__(name: str):
  # The trainers live in their own modules (they are long); import them on first use. A
  # trainer that is not there reads as a missing attribute (`getattr(mod, name, None)`).
  where = {"train_program_generator": "program_generator", "train_qa_expert": "qa_expert"}
  if name in where:
    import importlib

    try:
      module = importlib.import_module(f"aotd_jax.projects.toyworld.{where[name]}")
    except ModuleNotFoundError as e:
      raise AttributeError(f"{name} is not available ({e})") from None
    return getattr(module, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
