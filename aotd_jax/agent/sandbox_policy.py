"""The static half of the sandbox: an AST allow-list for generated programs.

`validate(source)` parses a program and refuses anything outside a small, boring subset of
Python: functions, assignments, loops, conditionals, comprehensions, calls, literals and
`try/except` over named exception classes. Everything that could reach the interpreter's
internals is refused by *spelling*, before the program runs: imports, dunder names and
attributes, frame / traceback / generator introspection attributes, `str.format` (whose
field names walk attributes: `"{0.__class__}".format(x)`), `global` / `nonlocal`, classes,
`with`, generators and the dangerous builtins. The worker process then enforces the dynamic
limits (time, memory, steps, output); this module only decides what may run at all.
"""

from __future__ import annotations

import ast
import builtins
import threading

MAX_SOURCE_CHARS = 100_000
MAX_AST_NODES = 20_000

# Builtins a program may use. The worker exposes exactly these (plus `print`, captured).
SAFE_BUILTINS = frozenset(
  {
    "abs",
    "all",
    "any",
    "bool",
    "chr",
    "dict",
    "divmod",
    "enumerate",
    "filter",
    "float",
    "frozenset",
    "hash",
    "int",
    "isinstance",
    "len",
    "list",
    "map",
    "max",
    "min",
    "ord",
    "pow",
    "print",
    "range",
    "repr",
    "reversed",
    "round",
    "set",
    "slice",
    "sorted",
    "str",
    "sum",
    "tuple",
    "zip",
    "True",
    "False",
    "None",
  }
)
# Exception classes a program may raise or catch. BaseException and its non-Exception
# children are absent on purpose: the worker's own limits derive from BaseException, so a
# program cannot swallow them.
SAFE_EXCEPTIONS = frozenset(
  {
    "Exception",
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "IndexError",
    "KeyError",
    "LookupError",
    "NameError",
    "RuntimeError",
    "StopIteration",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
  }
)
ALLOWED_NAMES = SAFE_BUILTINS | SAFE_EXCEPTIONS

# Builtins refused with a pointed reason (everything else not allowed is refused too, at
# run time, by its absence from the worker's builtins).
FORBIDDEN_NAMES = (
  frozenset(name for name in dir(builtins) if not name.startswith("_")) - ALLOWED_NAMES
)

# Attributes that introspect frames, code, generators, tracebacks or classes, or that write
# files (numpy's `tofile` / `dump`), or that walk attributes through a format string.
FORBIDDEN_ATTRIBUTES = frozenset(
  {
    "format",
    "format_map",
    "mro",
    "tofile",
    "dump",
    "dumps",
    "ctypes",
    "func_globals",
    "func_code",
    "im_func",
    "im_self",
    "im_class",
  }
)
FORBIDDEN_ATTRIBUTE_PREFIXES = ("_", "gi_", "cr_", "ag_", "f_", "tb_", "co_", "func_")

# Node types that may appear at all. Anything else is refused with its class name.
_ALLOWED_NODES = (
  ast.Module,
  ast.FunctionDef,
  ast.arguments,
  ast.arg,
  ast.Return,
  ast.Assign,
  ast.AugAssign,
  ast.AnnAssign,
  ast.For,
  ast.While,
  ast.If,
  ast.Raise,
  ast.Try,
  ast.ExceptHandler,
  ast.Assert,
  ast.Expr,
  ast.Pass,
  ast.Break,
  ast.Continue,
  ast.Delete,
  ast.BoolOp,
  ast.BinOp,
  ast.UnaryOp,
  ast.Lambda,
  ast.IfExp,
  ast.Dict,
  ast.Set,
  ast.ListComp,
  ast.SetComp,
  ast.DictComp,
  ast.GeneratorExp,
  ast.comprehension,
  ast.Compare,
  ast.Call,
  ast.keyword,
  ast.FormattedValue,
  ast.JoinedStr,
  ast.Constant,
  ast.Attribute,
  ast.Subscript,
  ast.Starred,
  ast.Name,
  ast.List,
  ast.Tuple,
  ast.Slice,
  ast.NamedExpr,
  ast.expr_context,
  ast.boolop,
  ast.operator,
  ast.unaryop,
  ast.cmpop,
)
_REFUSED_NODE_REASONS = {
  ast.Import: "import is not allowed",
  ast.ImportFrom: "import is not allowed",
  ast.Global: "'global' is not allowed",
  ast.Nonlocal: "'nonlocal' is not allowed",
  ast.ClassDef: "class definitions are not allowed",
  ast.With: "'with' is not allowed",
  ast.AsyncWith: "'async with' is not allowed",
  ast.AsyncFunctionDef: "async functions are not allowed",
  ast.AsyncFor: "'async for' is not allowed",
  ast.Await: "'await' is not allowed",
  ast.Yield: "generators ('yield') are not allowed",
  ast.YieldFrom: "generators ('yield from') are not allowed",
  ast.Match: "'match' is not allowed",
}


class PolicyError(ValueError):
  """A program was refused by the allow-list; `str(err)` is a one-line reason."""


def _is_dunder(name: str) -> bool:
  return name.startswith("__")


def _check_name(name: str, node: ast.AST) -> None:
  if _is_dunder(name):
    raise PolicyError(f"line {node.lineno}: dunder name '{name}' is not allowed")
  if name in FORBIDDEN_NAMES:
    raise PolicyError(f"line {node.lineno}: builtin '{name}' is not allowed")


def _check_attribute(node: ast.Attribute) -> None:
  attr = node.attr
  if attr in FORBIDDEN_ATTRIBUTES or attr.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES):
    raise PolicyError(f"line {node.lineno}: attribute '.{attr}' is not allowed")


def _check_handler(node: ast.ExceptHandler) -> None:
  if node.type is None:
    raise PolicyError(f"line {node.lineno}: bare 'except:' is not allowed; name the exception")
  types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
  for t in types:
    if not (isinstance(t, ast.Name) and t.id in SAFE_EXCEPTIONS):
      try:
        shown = ast.unparse(t)
      except RecursionError:  # a deeply nested expression (`except ----x:`)
        shown = f"<{type(t).__name__} expression>"
      if len(shown) > 80:
        shown = shown[:77] + "..."
      raise PolicyError(
        f"line {node.lineno}: 'except {shown}' is not allowed; catch one of "
        f"{', '.join(sorted(SAFE_EXCEPTIONS))}"
      )


def _check_finally(body: list[ast.stmt]) -> None:
  # `return` / `break` / `continue` in a `finally` swallow any in-flight exception, the
  # worker's step and output limits included (PEP 765).
  for stmt in body:
    for node in ast.walk(stmt):
      if isinstance(node, (ast.Return, ast.Break, ast.Continue)):
        kind = type(node).__name__.lower()
        raise PolicyError(f"line {node.lineno}: '{kind}' inside 'finally' is not allowed")


# CPython 3.11 keeps the AST converter's recursion depth in per-interpreter state, so two
# threads parsing deeply nested programs at once corrupt each other's count and one of them
# raises "SystemError: AST constructor recursion depth mismatch". Sandbox.run is called from
# worker threads (the CoT job, tests), so parsing is serialised; it takes microseconds.
_PARSE_LOCK = threading.Lock()
# What ast.parse raises for text that is not a program it can hold: syntax, null bytes,
# absurd nesting (SystemError is CPython's AST recursion-depth check).
PARSE_ERRORS = (SyntaxError, ValueError, MemoryError, RecursionError, SystemError)


def parse_untrusted(source: str, filename: str = "<program>") -> ast.Module:
  """`ast.parse` for untrusted text, one thread at a time; raises one of `PARSE_ERRORS`."""
  with _PARSE_LOCK:
    return ast.parse(source, filename=filename, mode="exec")


def _nodes(tree: ast.AST) -> list[ast.AST]:
  """Every node of `tree` (breadth first, as `ast.walk`); refuses a tree that is too large."""
  out = [tree]
  add = out.append
  for node in out:  # the list grows while it is read
    for name in node._fields:
      value = getattr(node, name, None)
      if type(value) is list:
        for item in value:
          if isinstance(item, ast.AST):
            add(item)
      elif isinstance(value, ast.AST):
        add(value)
    if len(out) > MAX_AST_NODES:
      raise PolicyError(f"program is too large (more than {MAX_AST_NODES} syntax nodes)")
  return out


_ALLOWED_TYPE: dict[type, bool] = {}  # node class -> allowed (filled on first sight)


def _check_node(node: ast.AST) -> None:
  """Raises `PolicyError` if `node` itself is refused (its children are checked apart)."""
  kind = type(node)
  allowed = _ALLOWED_TYPE.get(kind)
  if allowed is None:
    allowed = _ALLOWED_TYPE[kind] = kind not in _REFUSED_NODE_REASONS and issubclass(
      kind, _ALLOWED_NODES
    )
  if not allowed:
    reason = _REFUSED_NODE_REASONS.get(kind)
    if reason is not None:
      raise PolicyError(f"line {node.lineno}: {reason}")
    line = getattr(node, "lineno", "?")
    raise PolicyError(f"line {line}: '{kind.__name__}' syntax is not allowed")
  if kind is ast.Name:
    _check_name(node.id, node)
  elif kind is ast.Attribute:
    _check_attribute(node)
  elif kind is ast.ExceptHandler:
    _check_handler(node)
    if node.name is not None:
      _check_name(node.name, node)
  elif kind is ast.FunctionDef or kind is ast.Lambda:
    if kind is ast.FunctionDef:
      _check_name(node.name, node)
    args = node.args
    for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
      if a is not None:
        _check_name(a.arg, node)
  elif kind is ast.Try and node.finalbody:
    _check_finally(node.finalbody)
  elif kind is ast.keyword and node.arg is not None and _is_dunder(node.arg):
    raise PolicyError(f"line {node.lineno}: dunder keyword '{node.arg}' is not allowed")


def _position(node: ast.AST) -> tuple[int, int, int, int]:
  return (
    getattr(node, "lineno", 1 << 30),
    getattr(node, "col_offset", 0),
    getattr(node, "end_lineno", 0) or 0,
    getattr(node, "end_col_offset", 0) or 0,
  )


def validate(source: str, *, entry_point: str = "execute_command") -> ast.Module:
  """Parses `source` and checks it against the allow-list.

  Returns the parsed module. Raises `PolicyError` with a one-line reason (with the line
  number) for the first construct that is refused, for a syntax error, or when the program
  does not define `def <entry_point>(...)` at top level.
  """
  if not isinstance(source, str):
    raise PolicyError(f"program must be a str, got {type(source).__name__}")
  if len(source) > MAX_SOURCE_CHARS:
    raise PolicyError(f"program is too long ({len(source)} > {MAX_SOURCE_CHARS} chars)")
  try:
    tree = parse_untrusted(source)
  except SyntaxError as e:
    raise PolicyError(f"line {e.lineno}: syntax error: {e.msg}") from None
  except PARSE_ERRORS as e:
    raise PolicyError(f"program could not be parsed: {type(e).__name__}: {e}") from None

  nodes = _nodes(tree)
  try:
    for node in nodes:
      _check_node(node)
  except PolicyError:
    # Report the first offence in reading order (innermost first: `a.__class__.mro` names
    # `__class__`), not in the walk's breadth-first order.
    nodes.sort(key=_position)
    for node in nodes:
      _check_node(node)
    raise

  if not any(isinstance(n, ast.FunctionDef) and n.name == entry_point for n in tree.body):
    raise PolicyError(f"program does not define 'def {entry_point}(...)' at top level")
  for n in tree.body:
    if not isinstance(n, (ast.FunctionDef, ast.Assign, ast.AnnAssign, ast.Expr)):
      raise PolicyError(
        f"line {n.lineno}: only function definitions and assignments are allowed at top "
        f"level, not '{type(n).__name__}'"
      )
  return tree


# The worker's check, called where a program's `except` and `finally` blocks begin
# (sandbox_worker.CHECK_NAME; a dunder, so a program cannot spell it).
CHECK_NAME = "__sandbox_check__"
# Statements that may follow `name(); ` on their line (a compound statement may not).
_SIMPLE_STATEMENTS = (
  ast.Expr,
  ast.Assign,
  ast.AugAssign,
  ast.AnnAssign,
  ast.Return,
  ast.Raise,
  ast.Assert,
  ast.Pass,
  ast.Break,
  ast.Continue,
  ast.Delete,
)


def _guard_tree(tree: ast.Module) -> None:
  """What `guard_source` does to the text, done to `tree` (in place)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Try):
      for handler in node.handlers:
        handler.type = ast.Call(ast.Name(CHECK_NAME, ast.Load()), [handler.type], [])
      if node.finalbody:
        node.finalbody.insert(
          0, ast.Expr(ast.Call(ast.Name(CHECK_NAME, ast.Load()), [ast.Constant(None)], []))
        )


def guard_source(source: str, tree: ast.Module | None) -> str | None:
  """The program's text with the worker's check at the start of every handler and `finally`.

  `except T as e:` becomes `except __sandbox_check__(T) as e:` (the check runs when an
  exception reaches the handler, before it is matched) and a `finally` body starts with
  `__sandbox_check__(None); `, on the same line, so every line number stays as it was and
  the worker compiles the text directly (no second parse in the worker). `tree` is
  `validate(source)`'s result; it is changed in place. Returns None when the text cannot be
  changed that way (a `finally` body that starts with a compound statement); the worker then
  inserts the checks into its own parse of the program.
  """
  if "try" not in source:  # no `try` statement: nothing to guard
    return source
  if tree is None:  # no tree to place the checks by (validate() switched off in a test)
    return None
  text = source.replace("\r\n", "\n").replace("\r", "\n")  # the tokenizer's line breaks
  edits = []  # (line, byte column, text to insert)
  for node in ast.walk(tree):
    if not isinstance(node, ast.Try):
      continue
    for handler in node.handlers:
      kind = handler.type
      edits.append((kind.lineno, kind.col_offset, CHECK_NAME + "("))
      edits.append((kind.end_lineno, kind.end_col_offset, ")"))
    if node.finalbody:
      first = node.finalbody[0]
      if not isinstance(first, _SIMPLE_STATEMENTS):
        return None
      edits.append((first.lineno, first.col_offset, CHECK_NAME + "(None); "))
  if not edits:
    return source
  lines = text.split("\n")
  for line, col, insert in sorted(edits, reverse=True):
    data = lines[line - 1].encode("utf-8", "surrogatepass")  # AST columns count UTF-8 bytes
    lines[line - 1] = (data[:col] + insert.encode() + data[col:]).decode("utf-8", "surrogatepass")
  guarded = "\n".join(lines)
  # The edits must give exactly the tree the checks are meant to make, or none are used.
  try:
    got = ast.dump(parse_untrusted(guarded))
    _guard_tree(tree)
    want = ast.dump(tree)
  except PARSE_ERRORS:  # RecursionError: too deep to dump; the worker guards it
    return None
  return guarded if got == want else None
