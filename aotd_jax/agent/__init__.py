"""aotd_jax.agent: LLM backends, the program sandbox and execution traces."""

from aotd_jax.agent.llm import LLM, LocalLlama, OpenAIChat, Recording, Replay
from aotd_jax.agent.sandbox import Execution, Sandbox, default_sandbox, run_program
from aotd_jax.agent.sandbox_policy import PolicyError, validate
from aotd_jax.agent.trace import ToolCall, Trace, summarize

__all__ = [
  "LLM",
  "LocalLlama",
  "OpenAIChat",
  "Recording",
  "Replay",
  "Execution",
  "Sandbox",
  "default_sandbox",
  "run_program",
  "PolicyError",
  "validate",
  "ToolCall",
  "Trace",
  "summarize",
]
