"""Tiny random checkpoints written in the formats the production path reads.

Every Hugging Face directory is written by transformers' own `save_pretrained` (config.json,
safetensors, tokenizer files, chat template); the UniVTG checkpoint is the official
`{"model", "opt", "epoch"}` pickle (`aotd_jax.hf.univtg.save_univtg`). Sizes are the smallest
that keep every code path (one layer, hidden 32); weights are random with a fixed seed.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

# LLaVA-NeXT-Video chat template (the released one's shape: typed content parts).
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] + ' ' }}{% else %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# A Llama-3-style chat template for the program writer.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<video>", "<image>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
BASE_WORDS = ("USER: ASSISTANT: user assistant system Answer with the option's letter from the "
              "given choices directly and only give the best option. Explain the rationale to "
              "answer the question. Answer the question using a single word or phrase. "
              "( ) A B C D E So the answer is a an the person object video what why how did "
              "do does which happened before after while")


def words(texts: Iterable[str]) -> list[str]:
  out = []
  for t in texts:
    out += re.findall(r"\w+|[^\w\s]", t)
  return out


def tokenizer(texts: Iterable[str] = (), *, chat_template: str, size: int = 0):
  """A word-level `PreTrainedTokenizerFast` over BASE_WORDS + `texts`, padded with filler
  words to `size` entries (so the model's vocabulary can be fixed before the data exists)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  vocab: dict[str, int] = {}
  for w in SPECIALS + words([BASE_WORDS]) + words(texts):
    vocab.setdefault(w, len(vocab))
  if size and len(vocab) > size:
    raise ValueError(f"rehearsal tokenizer: {len(vocab)} words do not fit in {size}")
  while size and len(vocab) < size:
    vocab[f"w{len(vocab)}"] = len(vocab)
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                     special_tokens=[("<s>", vocab["<s>"])])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<pad>",
                                 additional_special_tokens=SPECIALS[4:])
  fast.chat_template = chat_template
  return fast


def _perturb(model, scale: float = 0.05) -> None:
  """transformers initialises some weights to zeros / ones: random offsets make every tensor
  matter (a swapped or dropped tensor changes the logits)."""
  import torch
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * scale)


def llava_next_video(path: str, texts: Iterable[str] = (), *, vocab: int = 512,
                     seed: int = 0) -> str:
  """LLaVA-NeXT-Video (CLIP tower 28 px / patch 7, Llama 1 layer) + tokenizer + template."""
  import torch
  import transformers
  tok = tokenizer(texts, chat_template=LLAVA_TEMPLATE, size=vocab)
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         image_size=28, patch_size=7, projection_dim=16)
  text = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=2048,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.bos_token_id)
  cfg = transformers.LlavaNextVideoConfig(
      vision_config=vision, text_config=text, image_grid_pinpoints=[[28, 28]],
      image_token_index=tok.convert_tokens_to_ids("<image>"),
      video_token_index=tok.convert_tokens_to_ids("<video>"))
  torch.manual_seed(seed)
  model = transformers.LlavaNextVideoForConditionalGeneration(cfg).eval()
  _perturb(model)
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def llama(path: str, *, vocab: int = 256, seed: int = 1) -> str:
  """The program writer / selector LLM: Llama (1 layer) + tokenizer with a chat template."""
  import torch
  import transformers
  tok = tokenizer((), chat_template=LLAMA_TEMPLATE, size=vocab)
  cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=4096,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 bos_token_id=tok.bos_token_id)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(cfg).eval()
  _perturb(model)
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def _clip_text_tokenizer(vocab: int):
  """CLIP's tokenizer files (BOS/EOS, pad) over a word vocabulary."""
  return tokenizer((), chat_template="", size=vocab)


def _text_tower(tok, vocab: int, hidden: int) -> dict:
  return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
              num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
              pad_token_id=tok.pad_token_id)


def _vision_tower(hidden: int, *, patch: int) -> dict:
  return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
              num_attention_heads=2, image_size=32, patch_size=patch)


def owlv2(path: str, *, vocab: int = 128, seed: int = 2) -> str:
  """OWLv2 detector (image 32 px / patch 8, one layer per tower) + tokenizer."""
  import torch
  import transformers
  tok = _clip_text_tokenizer(vocab)
  cfg = transformers.Owlv2Config(text_config=_text_tower(tok, vocab, 32),
                                 vision_config=_vision_tower(32, patch=8), projection_dim=32)
  torch.manual_seed(seed)
  model = transformers.Owlv2ForObjectDetection(cfg).eval()
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def clip(path: str, *, vocab: int = 128, seed: int = 3) -> str:
  """CLIP (UniVTG's frame and query features): image 32 px / patch 16, projection 12."""
  import torch
  import transformers
  tok = _clip_text_tokenizer(vocab)
  cfg = transformers.CLIPConfig(text_config=_text_tower(tok, vocab, 16),
                                vision_config=_vision_tower(16, patch=16), projection_dim=12)
  torch.manual_seed(seed)
  model = transformers.CLIPModel(cfg).eval()
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def univtg(path: str, *, feature_dim: int = 12, text_dim: int = 16, seed: int = 4) -> str:
  """An official-layout UniVTG `model_best.ckpt` over CLIP features of `feature_dim`
  (UniVTG's released checkpoint concatenates SlowFast + CLIP; here CLIP only: "custom")."""
  from flax import nnx
  from aotd_jax.hf.univtg import save_univtg
  from aotd_jax.models.univtg import UniVTG, UniVTGConfig
  model = UniVTG(UniVTGConfig(v_feat_dims=(feature_dim,), t_feat_dim=text_dim, hidden_dim=32,
                              nheads=4, enc_layers=1, dim_feedforward=48, clip_length=2.0),
                 rngs=nnx.Rngs(seed))
  save_univtg(model, path)
  return path


def build_all(root: str, texts: Iterable[str] = ()) -> dict[str, str]:
  """Writes every checkpoint under `root`; returns role -> path."""
  os.makedirs(root, exist_ok=True)
  j = lambda name: os.path.join(root, name)  # noqa: E731
  return {"llava": llava_next_video(j("llava-next-video"), texts),
          "llama": llama(j("llama-coder")),
          "owlv2": owlv2(j("owlv2")),
          "clip": clip(j("clip")),
          "univtg": univtg(j("univtg_model_best.ckpt"))}
