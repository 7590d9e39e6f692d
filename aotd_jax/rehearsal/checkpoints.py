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
  "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen2's text chat template (what a LLaVA-OneVision tokenizer carries: a default system turn;
# the trainer and the evaluation replace it with the OneVision processor's format).
QWEN2_TEMPLATE = (
  "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
  "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A Llama-3-style chat template for the program writer.
LLAMA_TEMPLATE = (
  "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
  "{{ m['content'] }}<|eot_id|>{% endfor %}"
  "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

SPECIALS = [
  "<pad>",
  "<unk>",
  "<s>",
  "</s>",
  "<video>",
  "<image>",
  "<|start_header_id|>",
  "<|end_header_id|>",
  "<|eot_id|>",
]
# The Qwen2 chat and vision markers (LLaVA-OneVision and Qwen2-VL tokenizers).
QWEN_SPECIALS = [
  "<|im_start|>",
  "<|im_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|video_pad|>",
  "<|image_pad|>",
]
BASE_WORDS = (
  "USER: ASSISTANT: user assistant system Answer with the option's letter from the "
  "given choices directly and only give the best option. Explain the rationale to "
  "answer the question. Answer the question using a single word or phrase. "
  "( ) A B C D E So the answer is a an the person object video what why how did "
  "do does which happened before after while"
)


def words(texts: Iterable[str]) -> list[str]:
  out = []
  for t in texts:
    out += re.findall(r"\w+|[^\w\s]", t)
  return out


def tokenizer(
  texts: Iterable[str] = (),
  *,
  chat_template: str,
  size: int = 0,
  specials: Iterable[str] = (),
  eos: str = "</s>",
):
  """A word-level `PreTrainedTokenizerFast` over BASE_WORDS + `texts` (and the extra special
  tokens `specials`), padded with filler words to `size` entries (so the model's vocabulary can
  be fixed before the data exists); `eos` is its end-of-sequence token."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab: dict[str, int] = {}
  specials = SPECIALS + list(specials)
  for w in specials + words([BASE_WORDS]) + words(texts):
    vocab.setdefault(w, len(vocab))
  if size and len(vocab) > size:
    raise ValueError(f"rehearsal tokenizer: {len(vocab)} words do not fit in {size}")
  while size and len(vocab) < size:
    vocab[f"w{len(vocab)}"] = len(vocab)
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
  )
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="<s>",
    eos_token=eos,
    unk_token="<unk>",
    pad_token="<pad>",
    additional_special_tokens=specials[4:],
  )
  fast.chat_template = chat_template
  return fast


def _perturb(model, scale: float = 0.05) -> None:
  """transformers initialises some weights to zeros / ones: random offsets make every tensor
  matter (a swapped or dropped tensor changes the logits)."""
  import torch

  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * scale)


def _write(path: str, model_class, cfg, tok, seed: int) -> str:
  """`model_class(cfg)` with seeded random weights (`_perturb`ed) and `tok`, saved to `path` by
  transformers' `save_pretrained`."""
  import torch

  torch.manual_seed(seed)
  model = model_class(cfg).eval()
  _perturb(model)
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def llava_next_video(
  path: str,
  texts: Iterable[str] = (),
  *,
  vocab: int = 512,
  seed: int = 0,
  vision: dict | None = None,
  text: dict | None = None,
) -> str:
  """LLaVA-NeXT-Video (CLIP tower 28 px / patch 7, Llama 1 layer) + tokenizer + template;
  `vision` / `text`: `CLIPVisionConfig` / `LlamaConfig` fields that replace those (another
  size, e.g. benchmarks/cot_job_real.py's scaled one)."""
  import transformers

  tok = tokenizer(texts, chat_template=LLAVA_TEMPLATE, size=vocab)
  vision_cfg = transformers.CLIPVisionConfig(
    **{
      **dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        projection_dim=16,
      ),
      **(vision or {}),
    }
  )
  text_cfg = transformers.LlamaConfig(
    **{
      **dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
      ),
      **(text or {}),
    }
  )
  side = vision_cfg.image_size
  cfg = transformers.LlavaNextVideoConfig(
    vision_config=vision_cfg,
    text_config=text_cfg,
    image_grid_pinpoints=[[side, side]],
    image_token_index=tok.convert_tokens_to_ids("<image>"),
    video_token_index=tok.convert_tokens_to_ids("<video>"),
  )
  return _write(path, transformers.LlavaNextVideoForConditionalGeneration, cfg, tok, seed)


def _qwen2_text(tok, vocab: int, **extra) -> dict:
  """A one-layer Qwen2 language model (q/k/v biases) over `tok`'s ids."""
  return dict(
    vocab_size=vocab,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    pad_token_id=tok.pad_token_id,
    eos_token_id=tok.eos_token_id,
    bos_token_id=tok.bos_token_id,
    **extra,
  )


def llava_onevision(
  path: str, texts: Iterable[str] = (), *, vocab: int = 512, seed: int = 5
) -> str:
  """LLaVA-OneVision (SigLIP tower 28 px / patch 7, Qwen2 1 layer) + tokenizer. A frame is
  4x4 patches pooled to 2x2 tokens: 32 frames take 32 x 4 + 1 = 129 `<video>` tokens."""
  import transformers

  tok = tokenizer(
    ["You are a helpful assistant.", *texts],
    chat_template=QWEN2_TEMPLATE,
    size=vocab,
    specials=QWEN_SPECIALS,
    eos="<|im_end|>",
  )
  vision = transformers.SiglipVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    image_size=28,
    patch_size=7,
    vision_use_head=False,
  )
  text = transformers.Qwen2Config(**_qwen2_text(tok, vocab))
  cfg = transformers.LlavaOnevisionConfig(
    vision_config=vision,
    text_config=text,
    image_grid_pinpoints=[[28, 28], [28, 56]],
    vision_feature_layer=-1,
    vision_feature_select_strategy="full",
    image_token_index=tok.convert_tokens_to_ids("<image>"),
    video_token_index=tok.convert_tokens_to_ids("<video>"),
  )
  return _write(path, transformers.LlavaOnevisionForConditionalGeneration, cfg, tok, seed)


def qwen2_vl(path: str, texts: Iterable[str] = (), *, vocab: int = 512, seed: int = 6) -> str:
  """Qwen2-VL (vision transformer on 7x7 patches of 2 frames, 2x2 merger, M-RoPE Qwen2 1 layer)
  + tokenizer. Frames are 28x28 (`vision_config.image_size`, the pipeline's square frame size):
  each pair of frames is 2x2 tokens, so 16 frames take 32 `<|video_pad|>` tokens."""
  import transformers
  from aotd_jax.data import conversation

  tok = tokenizer(
    ["You are a helpful assistant.", *texts],
    chat_template=conversation.QWEN2_VL_CHAT_TEMPLATE,
    size=vocab,
    specials=QWEN_SPECIALS,
    eos="<|im_end|>",
  )
  ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
  rope = dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 1, 1])
  cfg = transformers.Qwen2VLConfig(
    vision_config=dict(
      depth=1,
      embed_dim=32,
      hidden_size=32,
      num_heads=4,
      mlp_ratio=2,
      patch_size=7,
      spatial_merge_size=2,
      temporal_patch_size=2,
      image_size=28,
    ),
    text_config=_qwen2_text(tok, vocab, rope_parameters=rope),
    image_token_id=ids["<|image_pad|>"],
    video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"],
    vision_end_token_id=ids["<|vision_end|>"],
  )
  return _write(path, transformers.Qwen2VLForConditionalGeneration, cfg, tok, seed)


def llama(path: str, *, vocab: int = 256, seed: int = 1) -> str:
  """The program writer / selector LLM: Llama (1 layer) + tokenizer with a chat template."""
  import transformers

  tok = tokenizer((), chat_template=LLAMA_TEMPLATE, size=vocab)
  cfg = transformers.LlamaConfig(
    vocab_size=vocab,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    pad_token_id=tok.pad_token_id,
    eos_token_id=tok.eos_token_id,
    bos_token_id=tok.bos_token_id,
  )
  return _write(path, transformers.LlamaForCausalLM, cfg, tok, seed)


def _clip_text_tokenizer(vocab: int):
  """CLIP's tokenizer files (BOS/EOS, pad) over a word vocabulary."""
  return tokenizer((), chat_template="", size=vocab)


def _text_tower(tok, vocab: int, hidden: int) -> dict:
  return dict(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=2 * hidden,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
    eos_token_id=tok.eos_token_id,
    bos_token_id=tok.bos_token_id,
    pad_token_id=tok.pad_token_id,
  )


def _vision_tower(hidden: int, *, patch: int) -> dict:
  return dict(
    hidden_size=hidden,
    intermediate_size=2 * hidden,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=patch,
  )


def owlv2(
  path: str,
  *,
  vocab: int = 128,
  seed: int = 2,
  text: dict | None = None,
  vision: dict | None = None,
  projection_dim: int = 32,
) -> str:
  """OWLv2 detector (image 32 px / patch 8, one layer per tower) + tokenizer; `text` /
  `vision`: tower config fields that replace those (another size)."""
  import torch
  import transformers

  tok = _clip_text_tokenizer(vocab)
  cfg = transformers.Owlv2Config(
    text_config={**_text_tower(tok, vocab, 32), **(text or {})},
    vision_config={**_vision_tower(32, patch=8), **(vision or {})},
    projection_dim=projection_dim,
  )
  torch.manual_seed(seed)
  model = transformers.Owlv2ForObjectDetection(cfg).eval()
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def clip(
  path: str,
  *,
  vocab: int = 128,
  seed: int = 3,
  text: dict | None = None,
  vision: dict | None = None,
  projection_dim: int = 12,
) -> str:
  """CLIP (UniVTG's frame and query features): image 32 px / patch 16, projection 12; `text` /
  `vision`: tower config fields that replace those (another size)."""
  import torch
  import transformers

  tok = _clip_text_tokenizer(vocab)
  cfg = transformers.CLIPConfig(
    text_config={**_text_tower(tok, vocab, 16), **(text or {})},
    vision_config={**_vision_tower(16, patch=16), **(vision or {})},
    projection_dim=projection_dim,
  )
  torch.manual_seed(seed)
  model = transformers.CLIPModel(cfg).eval()
  model.save_pretrained(path)
  tok.save_pretrained(path)
  return path


def univtg(
  path: str,
  *,
  feature_dim: int = 12,
  text_dim: int = 16,
  seed: int = 4,
  size: dict | None = None,
) -> str:
  """An official-layout UniVTG `model_best.ckpt` over CLIP features of `feature_dim`
  (UniVTG's released checkpoint concatenates SlowFast + CLIP; here CLIP only: "custom");
  `size`: `UniVTGConfig` fields that replace the tiny ones (hidden_dim, nheads, ...)."""
  from flax import nnx
  from aotd_jax.hf.univtg import save_univtg
  from aotd_jax.models.univtg import UniVTG, UniVTGConfig

  model = UniVTG(
    UniVTGConfig(
      v_feat_dims=(feature_dim,),
      t_feat_dim=text_dim,
      **{
        **dict(hidden_dim=32, nheads=4, enc_layers=1, dim_feedforward=48, clip_length=2.0),
        **(size or {}),
      },
    ),
    rngs=nnx.Rngs(seed),
  )
  save_univtg(model, path)
  return path


# role -> (directory name, builder, whether it takes the datasets' words)
BUILDERS = {
  "llava": ("llava-next-video", llava_next_video, True),
  "onevision": ("llava-onevision", llava_onevision, True),
  "qwen2vl": ("qwen2-vl", qwen2_vl, True),
  "llama": ("llama-coder", llama, False),
  "owlv2": ("owlv2", owlv2, False),
  "clip": ("clip", clip, False),
  "univtg": ("univtg_model_best.ckpt", univtg, False),
}


def build_all(
  root: str, texts: Iterable[str] = (), *, have: dict[str, str] | None = None
) -> dict[str, str]:
  """Writes every checkpoint under `root` that `have` (role -> path, from an earlier run)
  lacks; returns role -> path for all of them."""
  os.makedirs(root, exist_ok=True)
  texts = list(texts)
  paths = dict(have or {})
  for role, (name, build, takes_texts) in BUILDERS.items():
    if role not in paths:
      path = os.path.join(root, name)
      paths[role] = build(path, texts) if takes_texts else build(path)
  return paths
