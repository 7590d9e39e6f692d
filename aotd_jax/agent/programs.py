"""Program generation: the prompt an LLM reads, and parsing its reply into one program.

The prompt is built from the tools' own docstrings (the functions that run are the API the
LLM reads: one source of truth), our guidelines, few-shot programs shipped in
`data/prompts/examples/<dataset>.txt`, the question and its choices. Parsing accepts what real models
write — code fences, chatter before and after, several functions, a body that forgets its
`return`, a reply cut off by the token limit — and returns exactly one
`def execute_command(video_clip, query, possible_answers)`. A reply with no usable program is
a counted failure (`ParsedProgram.error`), never an exception.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import importlib.resources
import inspect
import pathlib
import re
import textwrap
from typing import Callable, Mapping, Sequence

from aotd_jax.agent.sandbox_policy import PARSE_ERRORS, parse_untrusted

PROGRAM_NAME = "execute_command"
PROGRAM_SIGNATURE = f"def {PROGRAM_NAME}(video_clip, query, possible_answers):"


def find_prompts_dir(package_dir: pathlib.Path) -> pathlib.Path:
  """The prompt files of the `aotd_jax` package at `package_dir`.

  An installed package (a wheel) carries them as package data in `aotd_jax/prompts/`
  (setup.py maps `data/prompts` there); a source checkout reads `data/prompts` beside the
  package.
  """
  installed = package_dir / "prompts"
  return installed if installed.is_dir() else package_dir.parent / "data" / "prompts"


PROMPTS_DIR = find_prompts_dir(pathlib.Path(importlib.resources.files("aotd_jax")))

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_DEF = re.compile(rf"^([ \t]*)def[ \t]+{PROGRAM_NAME}[ \t]*\(", re.M)


def read_prompt_file(name: str, prompts_dir: str | pathlib.Path | None = None) -> str:
  """Returns the text of `data/prompts/<name>` (or of `prompts_dir/<name>`).

  Raises:
    FileNotFoundError: naming the path and the prompt files that do exist.
  """
  path = (pathlib.Path(prompts_dir) if prompts_dir else PROMPTS_DIR) / name
  if not path.is_file():
    folder = path.parent
    have = sorted(p.name for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    raise FileNotFoundError(f"prompt file {path} not found; {folder} has {have}")
  return path.read_text(encoding="utf-8")


def load_examples(dataset: str, prompts_dir: str | pathlib.Path | None = None) -> str:
  """Few-shot programs for `dataset` (`star`, `nextqa`): the Python text of
  `data/prompts/examples/<dataset>.txt`, or of `prompts_dir/examples/<dataset>.txt` (a project's
  own, e.g. the toy world's `aotd_jax/projects/toyworld/examples/toyworld.txt`)."""
  return read_prompt_file(f"examples/{dataset}.txt", prompts_dir).strip()


class _Raw(str):
  """An annotation kept as text (`from __future__ import annotations`), shown without quotes."""

  def __repr__(self) -> str:
    return str(self)


def _unquoted(signature: inspect.Signature) -> inspect.Signature:
  def fix(annotation):
    return _Raw(annotation) if isinstance(annotation, str) else annotation

  params = [p.replace(annotation=fix(p.annotation)) for p in signature.parameters.values()]
  return signature.replace(parameters=params, return_annotation=fix(signature.return_annotation))


def describe_tool(name: str, tool: Callable) -> str:
  """One API entry: the tool's signature and its docstring, as the LLM will read them."""
  target = tool
  if not (inspect.isfunction(tool) or inspect.ismethod(tool)) and hasattr(tool, "__call__"):
    target = tool.__call__  # tool objects bound to a model document their __call__
  try:
    signature = str(_unquoted(inspect.signature(target)))
  except (TypeError, ValueError):
    signature = "(...)"
  doc = inspect.getdoc(target) or inspect.getdoc(tool) or ""
  body = textwrap.indent(f'"""{doc}"""' if doc else '"""(undocumented)"""', "    ")
  return f"def {name}{signature}:\n{body}"


def api_docs(tools: Mapping[str, Callable]) -> str:
  """The API section of the prompt: every tool in `tools`, in the mapping's order."""
  return "\n\n".join(describe_tool(name, fn) for name, fn in tools.items())


def format_choices(choices: Sequence[str]) -> str:
  """`(A) first (B) second ...`; an empty string for an open-ended question."""
  return " ".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))


def build_program_prompt(
  question: str,
  choices: Sequence[str],
  tools: Mapping[str, Callable],
  *,
  examples: str = "",
  guidelines: str | None = None,
) -> str:
  """The full program-generation prompt for one question.

  Args:
    question: the question text.
    choices: the answer options (empty for open-ended questions).
    tools: name -> callable; each one's signature and docstring become the API section.
    examples: few-shot programs (`load_examples(dataset)`).
    guidelines: rules for the program; defaults to `data/prompts/program_guidelines.txt`.
  """
  if guidelines is None:
    guidelines = read_prompt_file("program_guidelines.txt").strip()
  parts = [
    "You write Python programs that answer questions about a video by calling these functions:",
    "```python\n" + api_docs(tools) + "\n```",
    guidelines,
  ]
  if examples:
    parts += ["Examples:", "```python\n" + examples + "\n```"]
  parts += [
    f"Question: {question}",
    f"Possible answers: {format_choices(choices) if choices else '(open-ended)'}",
    f"Write `{PROGRAM_SIGNATURE}` for this question. Reply with the function only, "
    "in one ```python block.",
  ]
  return "\n\n".join(parts) + "\n"


@dataclasses.dataclass(frozen=True)
class ParsedProgram:
  """The result of parsing one reply: `source` is None and `error` says why on failure."""

  source: str | None
  error: str | None = None
  repairs: tuple[str, ...] = ()  # e.g. ("added return", "dropped truncated tail")

  @property
  def ok(self) -> bool:
    return self.source is not None


def _candidate_blocks(reply: str) -> list[str]:
  """Code fence contents first (python-tagged before untagged), then the whole reply."""
  fences = _FENCE.findall(reply)
  tagged = [body for tag, body in fences if tag.lower() in ("python", "py", "python3")]
  others = [body for tag, body in fences if tag.lower() not in ("python", "py", "python3")]
  return tagged + others + [reply]


def _function_text(block: str, start: int, indent: str) -> str:
  """The def starting at `start`: its header line and every following deeper/blank line."""
  lines = block[start:].splitlines()
  kept = [lines[0]]
  for line in lines[1:]:
    if line.strip() and not line.startswith(indent + " ") and not line.startswith(indent + "\t"):
      if not (line.startswith(indent) and line[len(indent) :].lstrip().startswith(")")):
        break
    kept.append(line)
  return textwrap.dedent("\n".join(kept)).rstrip() + "\n"


def _parse_prefix(text: str) -> tuple[ast.FunctionDef, str, bool] | None:
  """Parses `text`, dropping trailing lines (a reply cut off mid-statement) until it does."""
  lines = text.rstrip().splitlines()
  for end in range(len(lines), 1, -1):
    candidate = "\n".join(lines[:end]) + "\n"
    try:
      module = parse_untrusted(candidate)
    except PARSE_ERRORS:
      continue
    funcs = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == PROGRAM_NAME]
    if funcs and funcs[0].body:
      return funcs[0], candidate, end < len(lines)
  return None


def _add_missing_return(func: ast.FunctionDef, source: str) -> tuple[str, bool]:
  """Appends `return <last value>` when the body never returns (a common LLM slip)."""
  if any(isinstance(node, ast.Return) for node in ast.walk(func)):
    return source, False
  last = func.body[-1]
  lines = source.rstrip("\n").splitlines()
  indent = re.match(r"[ \t]*", lines[last.lineno - 1]).group(0)
  if (
    isinstance(last, ast.Assign)
    and len(last.targets) == 1
    and isinstance(last.targets[0], ast.Name)
  ):
    return source.rstrip("\n") + f"\n{indent}return {last.targets[0].id}\n", True
  if isinstance(last, (ast.AnnAssign, ast.AugAssign)) and isinstance(last.target, ast.Name):
    return source.rstrip("\n") + f"\n{indent}return {last.target.id}\n", True
  if isinstance(last, ast.Expr) and not isinstance(last.value, ast.Constant):
    head = lines[: last.lineno - 1]
    expr = "\n".join(lines[last.lineno - 1 : last.end_lineno])
    return "\n".join(head + [indent + "return " + expr.lstrip()]) + "\n", True
  return source, False


def parse_program(reply: str, *, prefix: str = "") -> ParsedProgram:
  """Extracts exactly one `execute_command` from an LLM reply.

  Args:
    reply: the raw reply.
    prefix: text the prompt already primed the reply with (e.g. the `def` line), prepended.

  Returns:
    `ParsedProgram`; on failure `source` is None and `error` names the reason.
  """
  text = prefix + (reply or "")
  if not text.strip():
    return ParsedProgram(None, "empty reply")
  saw_def = False
  for block in _candidate_blocks(text):
    for match in _DEF.finditer(block):
      saw_def = True
      func_text = _function_text(block, match.start(), match.group(1))
      parsed = _parse_prefix(func_text)
      if parsed is None:
        continue
      func, source, truncated = parsed
      repairs = ["dropped truncated tail"] if truncated else []
      args = [a.arg for a in func.args.args]
      if args != ["video_clip", "query", "possible_answers"]:
        source = re.sub(
          rf"def\s+{PROGRAM_NAME}\s*\([^)]*\)", PROGRAM_SIGNATURE[:-1], source, count=1
        )
        repairs.append(f"signature {tuple(args)} -> (video_clip, query, possible_answers)")
        try:
          func = parse_untrusted(source).body[0]
        except PARSE_ERRORS:
          continue
      source, added = _add_missing_return(func, source)
      if added:
        repairs.append("added return")
      return ParsedProgram(source, None, tuple(repairs))
  if saw_def:
    return ParsedProgram(None, f"`def {PROGRAM_NAME}` found but it does not parse")
  return ParsedProgram(None, f"no `def {PROGRAM_NAME}` in the reply")


@dataclasses.dataclass
class ProgramStats:
  """Counts of parsed replies and failures by reason (failures are counted, not raised)."""

  total: int = 0
  parsed: int = 0
  repaired: int = 0
  failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, result: ParsedProgram) -> None:
    self.total += 1
    if result.ok:
      self.parsed += 1
      self.repaired += bool(result.repairs)
    else:
      self.failures[result.error] += 1

  def to_dict(self) -> dict:
    return {
      "total": self.total,
      "parsed": self.parsed,
      "repaired": self.repaired,
      "failed": self.total - self.parsed,
      "failures": dict(self.failures),
    }


def generate_programs(
  llm,
  questions: Sequence[tuple[str, Sequence[str]]],
  tools: Mapping[str, Callable],
  *,
  examples: str = "",
  max_new_tokens: int = 512,
  temperature: float = 0.0,
  stats: ProgramStats | None = None,
) -> list[ParsedProgram]:
  """Prompts `llm` once for a batch of (question, choices) and parses every reply."""
  guidelines = read_prompt_file("program_guidelines.txt").strip()
  prompts = [
    build_program_prompt(q, c, tools, examples=examples, guidelines=guidelines)
    for q, c in questions
  ]
  replies = llm.complete(prompts, max_new_tokens=max_new_tokens, temperature=temperature)
  results = [parse_program(r) for r in replies]
  if stats is not None:
    for r in results:
      stats.add(r)
  return results
