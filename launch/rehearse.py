r"""The rehearsal: the real path end to end at toy sizes.

  python -m launch.rehearse --workdir=/tmp/rehearsal [--students=onevision7b,qwen2vl7b]

Builds tiny random checkpoints in the real formats, STAR / NExT-QA files over 30 s mp4s and a
local OpenAI-compatible stub server, then runs the production configs and launchers
(docs/reproduce.md's commands, sizes and paths aside) and checks each stage's outputs. After
LLaVA-NeXT-Video's stages, each of `--students` (LLaVA-OneVision, Qwen2-VL) is distilled with
its own production config, exported, reloaded by transformers and evaluated.
Writes `workdir/rehearsal.json` and prints a table; exits 1 unless every stage passed.
"""

from absl import app, flags

from aotd_jax.rehearsal import runner, stages

_WORKDIR = flags.DEFINE_string("workdir", None, "Everything is written here.")
_ONLY = flags.DEFINE_list("only", [], "Run only these stages (default: all).")
_QUESTIONS = flags.DEFINE_integer("questions", 4, "Questions per dataset.")
_SECONDS = flags.DEFINE_float("seconds", 30.0, "Length of each video (30 fps).")
_STUDENTS = flags.DEFINE_list(
  "students",
  list(stages.STUDENTS),
  "Other students rehearsed after LLaVA-NeXT-Video (distill, export, hf_load, eval_star_mc "
  "with their production configs); empty for none.",
)


def main(argv):
  del argv
  result = runner.run(
    _WORKDIR.value,
    only=_ONLY.value or None,
    questions=_QUESTIONS.value,
    seconds=_SECONDS.value,
    students=tuple(_STUDENTS.value),
  )
  return 0 if result["ok"] else 1


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
