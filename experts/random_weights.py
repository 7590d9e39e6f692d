"""The model experts' architectures on random weights, with offline tokenizers: for benchmarks
and tests that measure or compare the expert side without checkpoints.

`owlv2`, `univtg` (with its CLIP) and `llava` build our Flax models at any size, from the
tiny shapes of a test to the released ones (`OWLV2_B16`, `UNIVTG_RELEASED` + `CLIP_B32`,
`LLAVA_NEXT_VIDEO_7B`); `WordTokenizer` stands in for a transformers tokenizer (word-hash ids,
no chat template) and `word_tokenize` for OWLv2's / CLIP's padded text tokenisation. Nothing
here reads a file or the network. Large models are initialised one parameter at a time
(N(0, 0.02) matrices, unit scales, zero biases), which keeps a 7B model's set-up in seconds.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

# Sizes (keyword arguments of the builders below).
OWLV2_B16 = dict(
  image_size=960,
  patch_size=16,
  vision_hidden=768,
  vision_layers=12,
  vision_heads=12,
  text_hidden=512,
  text_layers=12,
  text_heads=8,
  projection=512,
  vocab=49408,
  text_length=16,
)
CLIP_B32 = dict(
  image_size=224,
  patch_size=32,
  vision_hidden=768,
  vision_layers=12,
  vision_heads=12,
  text_hidden=512,
  text_layers=12,
  text_heads=8,
  projection=512,
  vocab=49408,
  text_length=77,
)
# LLaVA-NeXT-Video at test size (the same code path as the released shapes, in milliseconds).
LLAVA_TINY = dict(
  vision_hidden=32,
  vision_layers=1,
  vision_heads=2,
  image_size=28,
  patch_size=14,
  hidden=32,
  intermediate=64,
  layers=1,
  heads=4,
  kv_heads=2,
  vocab=100,
)
UNIVTG_RELEASED = dict(
  hidden_dim=1024, nheads=8, enc_layers=4, dim_feedforward=1024, clip_length=2.0
)
LLAVA_NEXT_VIDEO_7B = dict(
  vision_hidden=1024,
  vision_layers=24,
  vision_heads=16,
  image_size=336,
  patch_size=14,
  hidden=4096,
  intermediate=11008,
  layers=32,
  heads=32,
  kv_heads=32,
  vocab=32064,
  dtype="bfloat16",
)


def word_ids(text: str, vocab: int, first: int = 4, reserved: int = 4) -> list[int]:
  """Stable ids in [first, vocab - reserved) for the words of `text` (crc32 of each word)."""
  span = vocab - reserved - first
  return [first + zlib.crc32(w.encode()) % span for w in text.split()]


def word_tokenize(vocab: int, length: int):
  """OWLv2 / CLIP tokenisation stand-in: BOS, word ids, EOS, right-padded (masked) to `length`."""

  def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(texts), length), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
      toks = [vocab - 2] + word_ids(t, vocab)[: length - 2] + [vocab - 1]
      ids[i, : len(toks)], mask[i, : len(toks)] = toks, 1
    return ids, mask

  return tokenize


class WordTokenizer:
  """What `experts.backends.llava.LlavaVideoQA` uses of a transformers tokenizer: whitespace
  words hashed to ids, `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3 and the media tokens at the
  model's indices; no chat template (prompts are `USER: <video>\\n... ASSISTANT:`)."""

  chat_template = None
  pad_token_id, bos_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

  def __init__(self, vocab: int, video_token_id: int, image_token_id: int):
    self.vocab = vocab
    self.special = {
      "<pad>": 0,
      "<s>": 1,
      "</s>": 2,
      "<unk>": 3,
      "<video>": video_token_id,
      "<image>": image_token_id,
    }
    self._names = {v: k for k, v in self.special.items()}
    self._words = min(video_token_id, image_token_id)  # word ids: [4, first media id)

  def convert_tokens_to_ids(self, token: str) -> int:
    return self.special.get(token, self.unk_token_id)

  def _ids(self, text: str) -> list[int]:
    return [
      self.special[w] if w in self.special else word_ids(w, self._words, reserved=0)[0]
      for w in text.split()
    ]

  def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
    ids = self._ids(text)
    return {"input_ids": ([self.bos_token_id] + ids) if add_special_tokens else ids}

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    words = []
    for i in ids:
      i = int(i)
      if i in self._names:
        if not skip_special_tokens:
          words.append(self._names[i])
      else:
        words.append(f"w{i}")
    return " ".join(words)


def _init_params(module_cls, config, seed: int = 0, options=None):
  """`module_cls(config, options=options)` with N(0, 0.02) weights, unit scales and zero biases,
  one jitted kernel per distinct shape (a 7B model's `jax.jit(init)` takes minutes to compile;
  this, seconds). `options`: a `ComputeOptions` (None: the defaults)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models.abstract import abstract_model

  options = ComputeOptions() if options is None else options
  model = abstract_model(lambda rngs: module_cls(config, options=options, rngs=rngs), seed)
  others = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.Param)))]
  if others:
    raise ValueError(
      f"_init_params: {module_cls.__name__} has non-parameter variables {others[:3]}"
    )
  normal = jax.jit(
    lambda key, shape, dtype: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype),
    static_argnums=(1, 2),
  )
  key = jax.random.key(seed)
  for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
    shape, dtype = tuple(var.get_value().shape), var.get_value().dtype
    if path[-1] == "scale":
      var.set_value(jnp.ones(shape, dtype))
    elif path[-1] == "bias":
      var.set_value(jnp.zeros(shape, dtype))
    else:
      var.set_value(normal(jax.random.fold_in(key, i), shape, dtype))
  return model


def _clip_configs(s: dict):
  from aotd_jax.models.clip import CLIPTextConfig, CLIPVisionConfig

  v = s["vocab"]
  text = CLIPTextConfig(
    vocab_size=v,
    hidden_size=s["text_hidden"],
    intermediate_size=4 * s["text_hidden"],
    projection_dim=s["projection"],
    num_hidden_layers=s["text_layers"],
    num_attention_heads=s["text_heads"],
    max_position_embeddings=s["text_length"],
    pad_token_id=0,
    bos_token_id=v - 2,
    eos_token_id=v - 1,
  )
  vision = CLIPVisionConfig(
    hidden_size=s["vision_hidden"],
    intermediate_size=4 * s["vision_hidden"],
    projection_dim=s["projection"],
    num_hidden_layers=s["vision_layers"],
    num_attention_heads=s["vision_heads"],
    image_size=s["image_size"],
    patch_size=s["patch_size"],
  )
  return text, vision


def owlv2(size: dict, seed: int = 0):
  """A random-weight `Owlv2ForObjectDetection` of `size` (keys of `OWLV2_B16`)."""
  from flax import nnx
  from aotd_jax.models.owlv2 import Owlv2Config, Owlv2ForObjectDetection

  text, vision = _clip_configs(size)
  cfg = Owlv2Config(text_config=text, vision_config=vision, projection_dim=size["projection"])
  return Owlv2ForObjectDetection(cfg, rngs=nnx.Rngs(seed))


def univtg(size: dict, clip_size: dict, seed: int = 0):
  """(UniVTG, CLIPModel) on random weights: UniVTG of `size` (keys of `UNIVTG_RELEASED`) reading
  CLIP image features (`clip_size`, keys of `CLIP_B32`) and CLIP text token states."""
  from flax import nnx
  from aotd_jax.models.clip import CLIPConfig, CLIPModel
  from aotd_jax.models.univtg import UniVTG, UniVTGConfig

  text, vision = _clip_configs(clip_size)
  clip_model = CLIPModel(
    CLIPConfig(text_config=text, vision_config=vision, projection_dim=clip_size["projection"]),
    rngs=nnx.Rngs(seed),
  )
  model = UniVTG(
    UniVTGConfig(
      v_feat_dims=(clip_size["projection"],), t_feat_dim=clip_size["text_hidden"], **size
    ),
    rngs=nnx.Rngs(seed + 1),
  )
  model.eval()
  return model, clip_model


def llava_config(size: dict):
  """The `LlavaNextVideoConfig` of `size` (keys of `LLAVA_NEXT_VIDEO_7B`): what `llava` builds,
  for code that needs the shapes only (e.g. `nnx.eval_shape`)."""
  from aotd_jax.models.clip import CLIPVisionConfig
  from aotd_jax.models.llama import LlamaConfig
  from aotd_jax.models.llava_next_video import LlavaNextVideoConfig

  v = size["vocab"]
  return LlavaNextVideoConfig(
    vision_config=CLIPVisionConfig(
      hidden_size=size["vision_hidden"],
      intermediate_size=4 * size["vision_hidden"],
      num_hidden_layers=size["vision_layers"],
      num_attention_heads=size["vision_heads"],
      image_size=size["image_size"],
      patch_size=size["patch_size"],
    ),
    text_config=LlamaConfig(
      vocab_size=v,
      hidden_size=size["hidden"],
      intermediate_size=size["intermediate"],
      num_hidden_layers=size["layers"],
      num_attention_heads=size["heads"],
      num_key_value_heads=size["kv_heads"],
      max_position_embeddings=8192,
      pad_token_id=0,
      eos_token_id=2,
      bos_token_id=1,
    ),
    image_token_index=v - 1,
    video_token_index=v - 2,
    image_grid_pinpoints=[[size["image_size"], size["image_size"]]],
    vision_feature_layer=-2 if size["vision_layers"] > 1 else -1,
  )


def llava(size: dict, seed: int = 0):
  """(LlavaNextVideoForConditionalGeneration, WordTokenizer) on random weights, of `size` (keys
  of `LLAVA_NEXT_VIDEO_7B`); the video and image tokens are the vocabulary's last two ids."""
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models.llava_next_video import LlavaNextVideoForConditionalGeneration

  v = size["vocab"]
  dtype = size.get("dtype", "float32")
  model = _init_params(
    LlavaNextVideoForConditionalGeneration,
    llava_config(size),
    seed,
    ComputeOptions(dtype=dtype, param_dtype=dtype),
  )
  return model, WordTokenizer(v, video_token_id=v - 2, image_token_id=v - 1)
