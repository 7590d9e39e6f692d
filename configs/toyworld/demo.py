r"""The end-to-end toy-world demo: world -> experts -> agent -> CoTs -> filter -> students -> eval.

  python -m launch.demo --config=configs/toyworld/demo.py:quick --workdir=/tmp/aotd_demo

`arg` picks the size: `micro` (seconds; the end-to-end test), `quick` (the README's first
command, <= 10 minutes on a 2-core CPU), `full` (larger world, longer training, 3 seeds,
mean ± std). Every stage caches its output in the work directory, so a rerun resumes.
"""

import ml_collections

from aotd_jax.projects.toyworld.tiny_models import TINY_LLAVA
from configs import common

VARIANTS = ("micro", "quick", "full")


def _student_init(vocab_size: int, hidden: int, layers: int, max_positions: int) -> dict:
  """TINY_LLAVA resized: vocab_size is overwritten with the trained tokenizer's size. The
  vision tower is read at its last layer (what the frame encoder trains)."""
  text = dict(
    TINY_LLAVA["text_config"],
    vocab_size=vocab_size,
    hidden_size=hidden,
    intermediate_size=2 * hidden,
    num_hidden_layers=layers,
    max_position_embeddings=max_positions,
  )
  return dict(TINY_LLAVA, text_config=text, vision_feature_layer=-1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config for `arg` in `micro | quick | full`."""
  variant = common.parse_arg(
    arg,
    ("variant",),
    where="configs/toyworld/demo.py",
    positional="variant",
    defaults={"variant": "quick"},
  )["variant"]
  if variant not in VARIANTS:
    raise ValueError(f"configs/toyworld/demo.py:{variant}: expected one of {VARIANTS}")
  micro, full = variant == "micro", variant == "full"
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.seeds = [0, 1, 2] if full else [0]  # student seeds (init + data order); mean ± std over them
  c.compilation_cache = True  # JAX's persistent cache in workdir/jax_cache (reruns, 3 students)

  # The toy world (aotd_jax.projects.toyworld.world.generate_world).
  c.world = ml_collections.ConfigDict(
    dict(
      seed=0,
      num_train=4 if micro else (240 if full else 60),
      num_val=1 if micro else 10,
      num_test=2 if micro else (60 if full else 20),
      size=64,
      fps=8,
      seconds=3.0,
      questions_per_type=1,
    )
  )

  # Experts. source: auto (trained where the trainer is committed, else oracle) | trained | oracle.
  # `steps` and `size` go to the trainers of aotd_jax/projects/toyworld/{vision,language}_experts.py.
  def expert(steps, **size):
    return ml_collections.ConfigDict({"source": "auto", "steps": steps, "size": size})

  scale = 0 if micro else (4 if full else 1)
  c.experts = ml_collections.ConfigDict()
  # The frame encoder (aotd_jax/projects/toyworld/object_encoder.py): a tiny CLIP tower trained to tell
  # which object is where, on the train clips + `extra_clips` rendered from the train split;
  # the frozen vision tower of the QA expert and of the students.
  c.experts.encoder = expert(4 if micro else 1000, extra_clips=1 if micro else 600)
  c.experts.detector = expert(4 if micro else 150 * scale)
  # The grounder's video features: "encoder" = per-name object states from the frame
  # encoder's head (aotd_jax/projects/toyworld/object_states.py; stage 2 renames objects so held-out
  # (object, action) combinations are grounded) | "clip" = its own tiny CLIP (stage 1).
  c.experts.grounder = expert(4) if micro else expert(500 * scale, extra_clips=200 * scale)
  c.experts.grounder.features = "encoder"
  # LM steps on cached encoder features of the train clips + `lm_clips` rendered ones
  # with generated questions (micro: one extra clip)
  c.experts.qa = expert(4, lm_clips=1) if micro else expert(1500 if full else 800)
  c.experts.program = expert(4 if micro else 300 * scale)
  c.experts.tokenizer = ml_collections.ConfigDict({"source": "auto"})
  c.experts.selector = "keyword"  # keyword | llama (the program generator's LM picks)
  c.experts.score = True  # sub-task harness (aotd_jax/eval/subtasks.py), test split
  c.experts.score_videos = 1 if micro else 10  # clips of the test split it scores (0: all)

  # The agent: programs from the tiny program generator, run in the sandbox on the tools.
  c.agent = ml_collections.ConfigDict(
    dict(
      programs="llm",  # llm | gold (the annotation's program, for debugging)
      fallback_to_gold=True,  # an unparsable / missing LLM program -> gold (counted)
      max_new_tokens=64 if micro else 160,
      batch_size=8,
      timeout_s=20.0,
      max_frames=24,
      sandbox_workers=2,
      sandbox_memory_mb=512,
      logic_judge="rule",
      # also check each kept CoT against its question: the objects and events it names must
      # be in the trace and the rationale (aotd_jax/projects/toyworld/rationale_judge.py)
      rationale_judge=False,
    )
  )

  # Students: three, distilled from the same init.
  c.students = ml_collections.ConfigDict(
    dict(
      names=["instruct", "aotd", "aotd_unfiltered"],
      # init_from: "qa" = the trained toy QA expert (in the paper the students and the QA /
      # action expert are the same pretrained LLaVA-NeXT-Video; here the toy world's own);
      # "" = a fresh `init` with the vision tower from `vision_init`; or a HF directory.
      init_from="qa",
      init=_student_init(512, 32 if not full else 64, 1 if micro else 2, 512),
      # protocol: "epochs" (the paper's: `epochs` passes over each student's own data, QA and
      # CoTs together, so AoTD sees every QA example as often as Instruct plus its CoTs) |
      # "steps" (every student `steps` steps, QA : CoT mixed by `cot_weight`).
      protocol="steps" if micro else "epochs",
      epochs=6.0 if full else 5.0,
      steps=3 if micro else (600 if full else 120),
      batch_size=8,
      learning_rate=3e-3,
      warmup_ratio=0.1,
      rationale_weight=1.0,
      cot_weight=1.0,
      num_frames=4,
      decode_size=32,
      buckets=[384] if micro else [128, 384],
      num_devices=1,
      # The vision tower when init_from="": "encoder" = the frame encoder (shared with the QA
      # expert, frozen, as LLaVA students keep their pretrained CLIP); "grounder" = the
      # grounder's toy CLIP; "" = random init; or a CLIP directory.
      vision_init="encoder",
      freeze_vision_tower=True,
      qa_shuffles=0,  # extra choice-shuffled copies of the train QA (balanced letters)
      # The switches of docs/fidelity.md that the toy students exercise (study arms
      # aotd_sequence, aotd_weighted, aotd_official_prompt, aotd_official_format):
      # loss_normalization "per_part" | "sequence"; mixing "" (by protocol) | "concat_epoch" |
      # "weighted"; prompt_format "plain" | "official"; answer_style "letter_text" | "letter".
      loss_normalization="per_part",
      mixing="",
      prompt_format="plain",
      answer_style="letter_text",
    )
  )

  # Evaluation on the held-out test split.
  c.eval = ml_collections.ConfigDict(
    dict(
      # scoring (closed set unless "generate"): "likelihood" (the likeliest whole "(B) text"
      # reply), "letters" (the option letter with the highest logit after " (") or
      # "generate" (greedy reply, option parsed from it; max_new_tokens).
      scoring="likelihood",
      num_frames=4,
      decode_size=32,
      batch_size=8,
      max_new_tokens=8,
      rationale_max_new_tokens=32 if micro else 160,
      rationale_questions=2 if micro else 20,
    )
  )  # grounding on the first N test questions
  c.efficiency = ml_collections.ConfigDict(
    dict(questions=3 if micro else 20, subprocess=True, timeout_s=300 if micro else 900)
  )
  c.report = ml_collections.ConfigDict(dict(trace_samples=3 if micro else 8))
  return c
