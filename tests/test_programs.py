"""Program prompt (built from the tools' docstrings) and parsing of messy LLM replies."""

import ast
import re

import pytest

from aotd_jax.agent import programs
from fixtures.scripted_llm import ScriptedLLM

CONTRACT_TOOLS = {
  "Query_Objs",
  "Query_Actions",
  "Filter_frames_with_act",
  "Filter_frames_with_obj",
  "trim",
  "Find",
  "exist",
  "select_answer",
  "Video_summary",
  "Count",
}

GOOD = """def execute_command(video_clip, query, possible_answers):
    clip = trim(video_clip, start=0, end=8)
    return select_answer(clip, query, possible_answers, [])
"""


def Find(video_clip, obj):
  """Returns boxes of `obj` in each frame of `video_clip` as [{"frame", "box"}]."""
  return []


class Counter:
  """A tool object bound to a model."""

  def __call__(self, video_clip, obj):
    """Counts instances of `obj` in `video_clip`."""
    return 0


def _ok(result):
  assert result.ok, result.error
  tree = ast.parse(result.source)
  assert len(tree.body) == 1 and tree.body[0].name == "execute_command"
  return result.source


def test_prompt_uses_tool_docstrings_examples_and_question():
  examples = programs.load_examples("star")
  prompt = programs.build_program_prompt(
    "What did the person hold?",
    ["A cup", "A book"],
    {"Find": Find, "Count": Counter()},
    examples=examples,
  )
  assert "def Find(video_clip, obj):" in prompt
  assert "Returns boxes of `obj`" in prompt
  assert "def Count(video_clip, obj):" in prompt and "Counts instances" in prompt
  assert "Which object was thrown by the person?" in prompt  # a few-shot example
  assert "What did the person hold?" in prompt and "(A) A cup (B) A book" in prompt
  assert "Rules for the program" in prompt
  open_prompt = programs.build_program_prompt("Why?", [], {"Find": Find})
  assert "(open-ended)" in open_prompt


def _shipped_examples(dataset: str) -> str:
  """The few-shot programs of `dataset`: the toy world's ship with its project."""
  if dataset == "toyworld":
    from aotd_jax.projects.toyworld import prompts

    return prompts.few_shot_examples()
  return programs.load_examples(dataset)


@pytest.mark.parametrize("dataset", ["star", "nextqa", "toyworld"])
def test_shipped_examples_are_programs_over_the_contract_api(dataset):
  text = _shipped_examples(dataset)
  tree = ast.parse(text)
  assert len(tree.body) >= 3
  for func in tree.body:
    assert isinstance(func, ast.FunctionDef) and func.name == "execute_command"
    assert [a.arg for a in func.args.args] == ["video_clip", "query", "possible_answers"]
    called = {
      n.func.id for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert called <= CONTRACT_TOOLS, called - CONTRACT_TOOLS
  assert len(re.findall(r"^# Question:", text, re.M)) == len(tree.body)


def test_string_annotations_shown_as_code():
  def trim(
    video_clip: "VideoClip",  # noqa: F821 (shown as text)
    start: "int | None" = None,
    label: str = "x",
  ) -> "VideoClip":  # noqa: F821
    """Cuts."""

  assert programs.describe_tool("trim", trim).splitlines()[0] == (
    "def trim(video_clip: VideoClip, start: int | None = None, label: str = 'x') -> VideoClip:"
  )


def test_missing_prompt_file_names_path():
  with pytest.raises(FileNotFoundError, match=r"nosuch\.txt.*star\.txt"):
    programs.load_examples("nosuch")


def test_clean_reply():
  assert _ok(programs.parse_program(GOOD)) == GOOD


def test_fences_and_chatter():
  reply = (
    "Sure! Here is the program you asked for:\n\n```python\n"
    + GOOD
    + "```\n\nThis first trims the clip and then selects the answer. Let me know!"
  )
  assert _ok(programs.parse_program(reply)) == GOOD
  # Untagged fence, indented inside the fence.
  reply = "```\n" + "\n".join("  " + l for l in GOOD.splitlines()) + "\n```"
  assert _ok(programs.parse_program(reply)) == GOOD


def test_python_fence_preferred_over_other_fences():
  reply = (
    "Plan:\n```text\ndef execute_command(video_clip, query, possible_answers): step 1\n```\n"
    "```python\n" + GOOD + "```"
  )
  assert _ok(programs.parse_program(reply)) == GOOD


def test_two_functions_keeps_only_execute_command():
  reply = (
    "def helper(x):\n    return x\n\n"
    + GOOD
    + "\ndef execute_command(video_clip, query, possible_answers):\n    return 'second'\n"
    "\nprint(execute_command(None, None, None))\n"
  )
  source = _ok(programs.parse_program(reply))
  assert source == GOOD and "helper" not in source and "print" not in source


def test_missing_return_added():
  reply = (
    "def execute_command(video_clip, query, possible_answers):\n"
    "    clip = trim(video_clip, start=0, end=8)\n"
    "    answer = select_answer(clip, query, possible_answers, [])\n"
  )
  result = programs.parse_program(reply)
  assert _ok(result).rstrip().endswith("return answer")
  assert "added return" in result.repairs
  reply = (
    "def execute_command(video_clip, query, possible_answers):\n"
    "    select_answer(video_clip, query,\n"
    "                  possible_answers, [])\n"
  )
  source = _ok(programs.parse_program(reply))
  assert "    return select_answer(video_clip, query," in source
  ast.parse(source)


def test_truncated_reply_drops_cut_tail():
  reply = GOOD + "    extra = Find(video_clip, 'cu"  # cut off by max_new_tokens
  result = programs.parse_program(reply)
  assert _ok(result) == GOOD and "dropped truncated tail" in result.repairs


def test_wrong_signature_is_normalised():
  reply = "def execute_command(clip, q, opts):\n    return opts[0]\n"
  source = _ok(programs.parse_program(reply))
  assert source.startswith(programs.PROGRAM_SIGNATURE)


def test_primed_prefix():
  body = "    return possible_answers[0]\n```\nDone."
  source = _ok(programs.parse_program(body, prefix=programs.PROGRAM_SIGNATURE + "\n"))
  assert source == programs.PROGRAM_SIGNATURE + "\n    return possible_answers[0]\n"


@pytest.mark.parametrize(
  "reply,reason",
  [
    ("", "empty reply"),
    (None, "empty reply"),
    ("I cannot answer that question.", "no `def execute_command`"),
    ("```python\nanswer = select_answer(video_clip)\n```", "no `def execute_command`"),
    ("def execute_command(video_clip, query, possible_answers):\n", "does not parse"),
    ("def execute_command(video_clip, query, possible_answers:\n  return 1\n", "does not parse"),
  ],
)
def test_no_program_is_counted_failure(reply, reason):
  result = programs.parse_program(reply)
  assert not result.ok and reason in result.error


def test_generate_programs_counts_failures():
  llm = ScriptedLLM(
    ["```python\n" + GOOD + "```", "no idea", GOOD.replace("    return", "    x =")]
  )
  stats = programs.ProgramStats()
  out = programs.generate_programs(
    llm, [("q1", ["a", "b"]), ("q2", []), ("q3", ["c"])], {"Find": Find}, stats=stats
  )
  assert [r.ok for r in out] == [True, False, True]
  assert stats.to_dict() == {
    "total": 3,
    "parsed": 2,
    "repaired": 1,
    "failed": 1,
    "failures": {"no `def execute_command` in the reply": 1},
  }
  assert len(llm.prompts) == 3 and "q2" in llm.prompts[1]


def test_shipped_examples_bind_to_the_expert_signatures():
  """Every call in the few-shot programs fits the signature of the tool that will run it."""
  import inspect

  tools = pytest.importorskip("experts.tools")
  for dataset in ("star", "nextqa", "toyworld"):
    for node in ast.walk(ast.parse(_shipped_examples(dataset))):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        signature = inspect.signature(getattr(tools.Toolbox, node.func.id))
        try:
          signature.bind(None, *node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as e:
          pytest.fail(f"examples/{dataset}.txt line {node.lineno}: {node.func.id}: {e}")


@pytest.mark.parametrize("junk", ["\0", "-" * 200_000 + "x"])
def test_reply_the_parser_cannot_hold_is_a_failed_parse_not_a_crash(junk):
  # A null byte (ValueError) or nesting past the parser's depth (RecursionError /
  # MemoryError / SystemError) in an LLM reply: the reply fails to parse, the job goes on.
  reply = "def execute_command(video_clip, query, possible_answers):\n    return " + junk + "\n"
  result = programs.parse_program(reply)
  assert not result.ok and result.source is None
