"""Shared pieces of the real-data CoT configs (`star.py`, `nextqa.py`): experts bound to the
checkpoints named in the config string, and LLM sections from a server URL or a local dir."""
from __future__ import annotations

import ml_collections

import experts
from configs.toyworld import cot as toy

EXPERT_KEYS = ("owlv2", "univtg", "clip", "llava")
EXPERT_HELP = ("owlv2=<HF OWLv2 dir>,univtg=<official UniVTG .ckpt>,clip=<HF CLIP ViT-B/32 dir>,"
               "llava=<HF LLaVA-NeXT-Video dir>")


def llm_section(value: str, model: str) -> ml_collections.ConfigDict:
  """`http(s)://...` -> an OpenAI-compatible server serving `model`; a path -> a local Flax
  Llama directory; "" -> none."""
  if not value:
    return toy.llm()
  if value.startswith(("http://", "https://")):
    return toy.llm("openai", base_url=value, model=model)
  return toy.llm("local", model_dir=value)


def selector_section(value: str, model: str) -> dict:
  """The answer selector (the paper: an LLM choosing a letter, with the release's prompt
  structure) on a server or a local dir; `keyword` for the offline word-overlap heuristic (a
  documented deviation)."""
  if value == "keyword":
    return experts.selector_section("keyword")
  if value.startswith(("http://", "https://")):
    return experts.selector_section("openai", base_url=value, model=model, prompt="official")
  return experts.selector_section("llama", path=value, prompt="official")


def bind_experts(name: str, a: dict, *, vocabulary: str) -> ml_collections.ConfigDict:
  """The experts section: real models from `a`'s paths (`experts=real`, the default)."""
  missing = [k for k in EXPERT_KEYS if not a.get(k)]
  if missing:
    raise ValueError(f"configs/cot/{name}.py: experts=real needs the checkpoints "
                     f"{EXPERT_HELP}; missing: {', '.join(k + '=' for k in missing)}")
  selector = a.get("selector") or a.get("llm")
  if not selector:
    raise ValueError(f"configs/cot/{name}.py: select_answer needs an LLM: give llm= (or "
                     "selector=<url or dir>, or selector=keyword for the offline heuristic)")
  c = experts.default_config()
  # The official AoTD's detector settings (docs/fidelity.md): "a photo of a <name>" queries,
  # score threshold 0.2, no NMS; Find returns crops, exist asks the video QA model to confirm.
  c.detector = {"kind": "owlv2", "path": a["owlv2"], "threshold": 0.2,
                "query_template": "a photo of a {}", "nms_threshold": 0.0,
                "buckets": list(c.detector.buckets)}
  # concurrent programs' calls to every model expert share batches (docs/experts.md);
  # --config.experts.coalesce=False runs each call on its own
  c.coalesce = True
  c.tools = {"find": "crops", "exist": "detector+qa"}
  c.grounder = {"kind": "univtg", "path": a["univtg"], "clip_path": a["clip"],
                "features_path": "", "buckets": list(c.grounder.buckets)}
  # LLaVA-NeXT-Video-DPO as the official AoTD asks it: 32 frames, a greedy reply (the letter
  # parsed and snapped to an option), "Question:/Options:" prompts, its Video_summary request.
  llava = {"kind": "llava", "path": a["llava"], "num_frames": 32, "choice_scoring": "generate",
           "max_new_tokens": 100, "prompt_format": "official", "summary_prompt": "official",
           "action_prompt": "official"}
  c.action_recognizer = dict(llava)
  c.video_qa = dict(llava)
  c.selector = selector_section(selector, a.get("selector_model") or a.get("model", ""))
  c.ground_truth = {"kind": "none", "path": "", "classes_dir": ""}
  c.object_vocabulary = vocabulary
  return c


def bind_llms(c: ml_collections.ConfigDict, a: dict) -> None:
  """Program, CoT and judge LLMs: `llm=` (and `model=`) for all three, `judge=` (and
  `judge_model=`) for a separate judge, as the paper's Llama-3.1 judge."""
  c.program_llm = llm_section(a["llm"], a["model"])
  c.cot_llm = llm_section(a.get("rewrite") or a["llm"], a.get("rewrite_model") or a["model"])
  c.judge_llm = llm_section(a.get("judge") or a["llm"], a.get("judge_model") or a["model"])
  c.program_source = "llm"
  c.logic_judge = "llm"
  # the official release's rewrite and judge (docs/fidelity.md)
  c.judge_parse = "exact_true"
  c.rewrite_prompt = "official"
  c.rewrite_fallback = "none"
