"""Configs of the toy-world project (`aotd_jax.projects.toyworld`): the demo, CoT generation
and distillation on the toy world."""
