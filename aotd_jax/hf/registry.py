"""Which adapter serves which Hugging Face architecture.

An `Adapter` knows one architecture: how its `config.json` maps to our config dataclass and
back, which model class to build, and the parameter-name table. Adapters are imported lazily
so that loading a Llama does not import OWLv2.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Collection

from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.mapping import Rule


@dataclasses.dataclass(frozen=True)
class Adapter:
  architecture: str
  model_class: type
  config_from_hf: Callable[[dict], Any]
  config_to_hf: Callable[[Any], dict]
  # rules(config, hf_keys): hf_keys is the set of tensor names on import (to tell key layouts
  # apart) and None on export (write the current transformers layout).
  rules: Callable[[Any, Collection[str] | None], list[Rule]]
  ignore: tuple[str, ...] = ()


_ADAPTERS = {
  "LlamaForCausalLM": "aotd_jax.hf.llama:ADAPTER",
  "Qwen2ForCausalLM": "aotd_jax.hf.qwen2:ADAPTER",
  "SiglipVisionModel": "aotd_jax.hf.siglip:VISION_ADAPTER",
  "CLIPVisionModel": "aotd_jax.hf.clip:VISION_ADAPTER",
  "CLIPModel": "aotd_jax.hf.clip:ADAPTER",
  "LlavaNextVideoForConditionalGeneration": "aotd_jax.hf.llava_next_video:ADAPTER",
  "LlavaOnevisionForConditionalGeneration": "aotd_jax.hf.llava_onevision:ADAPTER",
  "Qwen2VLForConditionalGeneration": "aotd_jax.hf.qwen2_vl:ADAPTER",
  "Owlv2ForObjectDetection": "aotd_jax.hf.owlv2:ADAPTER",
}
# config.json files without `architectures` still carry `model_type`.
_MODEL_TYPES = {
  "llama": "LlamaForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "siglip_vision_model": "SiglipVisionModel",
  "clip_vision_model": "CLIPVisionModel",
  "clip": "CLIPModel",
  "llava_next_video": "LlavaNextVideoForConditionalGeneration",
  "llava_onevision": "LlavaOnevisionForConditionalGeneration",
  "qwen2_vl": "Qwen2VLForConditionalGeneration",
  "owlv2": "Owlv2ForObjectDetection",
}


def supported() -> list[str]:
  return sorted(_ADAPTERS)


def adapter_for(architecture: str) -> Adapter:
  """The adapter of a HF architecture name, with a clear error listing what is supported."""
  if architecture not in _ADAPTERS:
    raise CheckpointError(
      f"unsupported architecture {architecture!r}; supported: {', '.join(supported())}"
    )
  module, attr = _ADAPTERS[architecture].split(":")
  return getattr(importlib.import_module(module), attr)


def architecture_of(hf_config: dict, source: str) -> str:
  """Reads the architecture from a parsed config.json (`architectures`, else `model_type`)."""
  archs = hf_config.get("architectures") or []
  for arch in archs:
    if arch in _ADAPTERS:
      return arch
  if archs:
    raise CheckpointError(
      f"{source}/config.json: unsupported architecture {archs[0]!r}; supported: {', '.join(supported())}"
    )
  model_type = hf_config.get("model_type")
  if model_type in _MODEL_TYPES:
    return _MODEL_TYPES[model_type]
  raise CheckpointError(
    f"{source}/config.json: no supported `architectures` or `model_type` (got {model_type!r}); "
    f"supported: {', '.join(supported())}"
  )
