"""UniVTG (Lin et al., ICCV 2023) in Flax NNX: unified video-language temporal grounding.

A port of the architecture published in showlab/UniVTG (`model/univtg.py`,
`model/transformer_encoder_droppath.py`, `model/position_encoding.py`):

  video clip features (+ 2 temporal endpoint features) -> input_vid_proj -+
  text token features -----------------------------------> input_txt_proj -+-> + token type
    -> post-norm transformer encoder over [video; text] (sine positions on video only)
  per video clip:  foreground head (class_embed, Conv1d×3, sigmoid)  -> pred_logits (B, Lv, 1)
                   boundary head   (span_embed,  Conv1d×3, sigmoid) -> pred_spans  (B, Lv, 2)
                   saliency: cosine(projected clip, attention-pooled text) -> saliency_scores

`pred_spans[..., 0] <= 0 <= pred_spans[..., 1]` are offsets of the moment's start and end
from each clip's anchor timestamp, in units of the whole video (see `univtg_postprocess`).
Module and field names follow the official code, so its state dict maps one to one
(`aotd_jax.hf.univtg`). Inputs and outputs keep the official names too (`src_vid`,
`src_txt`, `pred_logits`, ...), since UniVTG has no transformers counterpart.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.layers.dense import dense_for
from aotd_jax.layers.norms import layer_norm
from aotd_jax.models.remat import remat_call
from aotd_jax.sharding import constrain

# log(1e-45) in float32 (1e-45 is the denormal 1.4e-45): the official saliency adds
# log(mask + 1e-45), i.e. this constant at padded clips.
_LOG_TINY = float(np.log(np.float32(1e-45)))


@dataclasses.dataclass(frozen=True)
class UniVTGConfig:
  """UniVTG hyper-parameters, named as the official `opt` (main/config.py) names them.

  v_feat_dims: the widths of the video feature blocks that are concatenated per clip, in the
  official order (SlowFast 2304, then CLIP 512, for the released `slowfast_clip` models);
  `use_tef` appends the 2 temporal endpoint features, so `v_feat_dim = sum + 2`.
  t_feat_dim: text token feature width (CLIP ViT-B/32 text tower hidden size, 512).
  clip_length: seconds per video clip (one feature vector each).
  """

  v_feat_dims: tuple[int, ...] = (2304, 512)
  use_tef: bool = True
  t_feat_dim: int = 512
  hidden_dim: int = 1024
  nheads: int = 8
  enc_layers: int = 4
  dim_feedforward: int = 1024
  n_input_proj: int = 2
  max_q_l: int = 75
  max_v_l: int = 75
  use_txt_pos: bool = False
  clip_length: float = 2.0
  input_dropout: float = 0.5
  dropout: float = 0.1
  droppath: float = 0.1

  @property
  def v_feat_dim(self) -> int:
    return int(sum(self.v_feat_dims)) + (2 if self.use_tef else 0)

  def __post_init__(self):
    if self.hidden_dim % self.nheads or self.hidden_dim % 2:
      raise ValueError(
        f"hidden_dim={self.hidden_dim} must be even and divisible by nheads={self.nheads}"
      )
    if not 1 <= self.n_input_proj <= 3:
      raise ValueError(f"n_input_proj={self.n_input_proj}: must be 1, 2 or 3")


@struct.dataclass
class UniVTGOutput:
  """Official output names. pred_logits: foreground probability (after sigmoid), (B, Lv, 1);
  pred_spans: (start, end) offsets from each clip's anchor, normalised by the video length,
  (B, Lv, 2); saliency_scores: (B, Lv), padded clips at about -103; vid_mem_proj (B, Lv, d)
  and txt_mem_proj (B, 1, d): the embeddings the saliency is computed from."""

  pred_logits: jax.Array
  pred_spans: jax.Array
  saliency_scores: jax.Array
  vid_mem_proj: jax.Array
  txt_mem_proj: jax.Array
  src_vid_mask: jax.Array


def _linear(opt: ComputeOptions, din, dout, axes, *, rngs, init=None):
  """A dense layer with xavier-uniform init (the official `init_weights`) unless `init` is given."""
  return dense_for(
    opt, din, dout, axes, rngs=rngs, kernel_init=init or nnx.initializers.xavier_uniform()
  )


def _layer_norm(opt: ComputeOptions, dim, *, rngs):
  return layer_norm(dim, 1e-5, rngs=rngs, dtype=opt.dtype, param_dtype=opt.param_dtype)


class LinearLayer(nnx.Module):
  """LayerNorm -> dropout -> Linear -> (ReLU): the official input projector block."""

  def __init__(
    self, cfg: UniVTGConfig, opt: ComputeOptions, din: int, dout: int, relu: bool, *, rngs: nnx.Rngs
  ):
    self.relu = relu
    self.LayerNorm = _layer_norm(opt, din, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.input_dropout, rngs=rngs)
    # Official init (init_weights is not applied to these): torch's default Linear init;
    # a scaled normal is close enough for training from scratch.
    self.linear = _linear(
      opt, din, dout, ("embed", "mlp"), rngs=rngs, init=nnx.initializers.lecun_normal()
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.linear(self.dropout(self.LayerNorm(x)))
    return jax.nn.relu(x) if self.relu else x


class MultiheadAttention(nnx.Module):
  """torch.nn.MultiheadAttention's computation with its fused `in_proj` layout."""

  def __init__(self, cfg: UniVTGConfig, opt: ComputeOptions, *, rngs: nnx.Rngs):
    d = cfg.hidden_dim
    self.num_heads, self.head_dim = cfg.nheads, d // cfg.nheads
    self.in_proj = _linear(opt, d, 3 * d, ("embed", "heads"), rngs=rngs)
    self.out_proj = _linear(opt, d, d, ("heads", "embed"), rngs=rngs)
    self.attn_dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, qk: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
    """qk: query/key input (B, L, d) (with positions); v: value input; key_mask: (B, L) bool."""
    b, l, d = v.shape
    w = self.in_proj.kernel[...]
    bias = self.in_proj.bias[...]
    q = qk @ w[:, :d] + bias[:d]
    k = qk @ w[:, d : 2 * d] + bias[d : 2 * d]
    val = v @ w[:, 2 * d :] + bias[2 * d :]
    split = lambda t: t.reshape(b, l, self.num_heads, self.head_dim)
    q, k, val = split(q), split(k), split(val)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * (self.head_dim**-0.5), k).astype(jnp.float32)
    scores = jnp.where(key_mask[:, None, None, :], scores, -jnp.inf)
    probs = self.attn_dropout(jax.nn.softmax(scores, axis=-1)).astype(val.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, val).reshape(b, l, d)
    out = constrain(out, ("activation_batch", "activation_length", "activation_heads"))
    return self.out_proj(out)


class TransformerEncoderLayer(nnx.Module):
  """Post-norm encoder layer with drop-path on both residual branches and GELU FFN."""

  def __init__(self, cfg: UniVTGConfig, opt: ComputeOptions, *, rngs: nnx.Rngs):
    d = cfg.hidden_dim
    self.self_attn = MultiheadAttention(cfg, opt, rngs=rngs)
    self.linear1 = _linear(opt, d, cfg.dim_feedforward, ("embed", "mlp"), rngs=rngs)
    self.linear2 = _linear(opt, cfg.dim_feedforward, d, ("mlp", "embed"), rngs=rngs)
    self.norm1 = _layer_norm(opt, d, rngs=rngs)
    self.norm2 = _layer_norm(opt, d, rngs=rngs)
    # Drop-path = dropout of a whole sample's branch: one mask value per batch row.
    self.droppath1 = nnx.Dropout(cfg.droppath, broadcast_dims=(1, 2), rngs=rngs)
    self.droppath2 = nnx.Dropout(cfg.droppath, broadcast_dims=(1, 2), rngs=rngs)

  def __call__(self, src: jax.Array, key_mask: jax.Array, pos: jax.Array) -> jax.Array:
    src = self.norm1(src + self.droppath1(self.self_attn(src + pos, src, key_mask)))
    # torch's F.gelu is the exact (erf) GELU.
    ffn = self.linear2(jax.nn.gelu(self.linear1(src), approximate=False))
    src = self.norm2(src + self.droppath2(ffn))
    return constrain(src, ("activation_batch", "activation_length", "activation_embed"))


class TransformerEncoder(nnx.Module):
  def __init__(self, cfg: UniVTGConfig, opt: ComputeOptions, *, rngs: nnx.Rngs):
    self.options = opt
    self.layers = nnx.List(
      [TransformerEncoderLayer(cfg, opt, rngs=rngs) for _ in range(cfg.enc_layers)]
    )

  def __call__(self, src, key_mask, pos):
    opt = self.options
    for layer in self.layers:
      if opt.remat_enabled:
        src = remat_call(
          lambda m, s, k, p: m(s, k, p), layer, src, key_mask, pos, policy=opt.checkpoint_policy()
        )
      else:
        src = layer(src, key_mask, pos)
    return src


class Transformer(nnx.Module):
  """Holds the encoder under the official attribute path `transformer.encoder`."""

  def __init__(self, cfg: UniVTGConfig, opt: ComputeOptions, *, rngs: nnx.Rngs):
    self.encoder = TransformerEncoder(cfg, opt, rngs=rngs)

  def __call__(self, src, key_mask, pos):
    return self.encoder(src, key_mask, pos)


class Conv(nnx.Module):
  """Three 1-D convolutions (kernel 3, zero 'same' padding) over clips, ReLU between."""

  def __init__(
    self,
    opt: ComputeOptions,
    din: int,
    dhid: int,
    dout: int,
    num_layers: int = 3,
    kernel_size: int = 3,
    *,
    rngs: nnx.Rngs,
  ):
    dims = [din] + [dhid] * (num_layers - 1) + [dout]
    self.layers = nnx.List(
      [
        nnx.Conv(
          i,
          o,
          kernel_size=(kernel_size,),
          padding=[(kernel_size // 2,) * 2],
          dtype=opt.dtype,
          param_dtype=opt.param_dtype,
          kernel_init=nnx.with_partitioning(
            nnx.initializers.lecun_normal(), (None, "conv_in", "conv_out")
          ),
          bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
          rngs=rngs,
        )
        for i, o in zip(dims[:-1], dims[1:])
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


class TrainablePositionalEncoding(nnx.Module):
  """Learned text positions + LayerNorm (used only when `use_txt_pos`, always in the state)."""

  def __init__(self, cfg: UniVTGConfig, opt: ComputeOptions, *, rngs: nnx.Rngs):
    self.position_embeddings = nnx.Embed(
      cfg.max_q_l,
      cfg.hidden_dim,
      dtype=opt.dtype,
      param_dtype=opt.param_dtype,
      embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed")),
      rngs=rngs,
    )
    self.LayerNorm = _layer_norm(opt, cfg.hidden_dim, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.input_dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pos = self.position_embeddings(jnp.arange(x.shape[1]))[None]
    return self.dropout(self.LayerNorm(x + pos))


def sine_position_embedding(mask: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
  """Normalised 1-D sine positions of valid clips, (B, L, dim): sin on even, cos on odd dims.

  Position = cumulative count of valid clips, scaled so the last valid clip is at 2*pi.
  """
  x = jnp.cumsum(mask.astype(jnp.float32), axis=1)
  x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
  i = jnp.arange(dim)
  freq = temperature ** (2 * (i // 2) / dim)
  angles = x[:, :, None] / freq
  return jnp.where(i % 2 == 0, jnp.sin(angles), jnp.cos(angles))


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """torch.nn.functional.cosine_similarity over the last axis."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return jnp.sum(a * b, axis=-1) / (na * nb)


class WeightedPool(nnx.Module):
  """Attention pooling of text tokens into one sentence vector (learned scoring vector)."""

  def __init__(self, cfg: UniVTGConfig, opt: ComputeOptions, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(
      nnx.with_partitioning(nnx.initializers.xavier_uniform(), ("embed", None))(
        rngs.params(), (cfg.hidden_dim, 1), jnp.dtype(opt.param_dtype)
      )
    )

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    alpha = (x @ self.weight[...])[..., 0]  # (B, Lt)
    alpha = alpha + (1.0 - mask.astype(alpha.dtype)) * -1e30
    alpha = jax.nn.softmax(alpha, axis=1)
    return jnp.einsum("bl,bld->bd", alpha, x)


class UniVTG(nnx.Module):
  """UniVTG: `model(src_txt, src_txt_mask, src_vid, src_vid_mask) -> UniVTGOutput`.

  src_vid: (B, Lv, v_feat_dim) clip features (each block L2-normalised, TEF appended; see
  `univtg_postprocess.video_inputs`), src_txt: (B, Lt, t_feat_dim) token features; masks are
  1 for valid positions. Dropout is active after `model.train()`, off after `model.eval()`.
  """

  def __init__(
    self, config: UniVTGConfig, *, options: ComputeOptions = ComputeOptions(), rngs: nnx.Rngs
  ):
    self.config = cfg = config
    self.options = opt = options
    d = cfg.hidden_dim
    self.transformer = Transformer(cfg, opt, rngs=rngs)
    self.txt_position_embed = TrainablePositionalEncoding(cfg, opt, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(
      2,
      d,
      dtype=opt.dtype,
      param_dtype=opt.param_dtype,
      embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed")),
      rngs=rngs,
    )
    self.span_embed = Conv(opt, d, d, 2, rngs=rngs)
    self.class_embed = Conv(opt, d, d, 1, rngs=rngs)
    relu = [True, True, True]
    relu[cfg.n_input_proj - 1] = False
    txt_dims = [cfg.t_feat_dim] + [d] * cfg.n_input_proj
    vid_dims = [cfg.v_feat_dim] + [d] * cfg.n_input_proj
    self.input_txt_proj = nnx.List(
      [LinearLayer(cfg, opt, txt_dims[i], d, relu[i], rngs=rngs) for i in range(cfg.n_input_proj)]
    )
    self.input_vid_proj = nnx.List(
      [LinearLayer(cfg, opt, vid_dims[i], d, relu[i], rngs=rngs) for i in range(cfg.n_input_proj)]
    )
    self.weightedpool = WeightedPool(cfg, opt, rngs=rngs)

  def __call__(self, src_txt, src_txt_mask, src_vid, src_vid_mask) -> UniVTGOutput:
    cfg = self.config
    src_vid, src_txt = (
      jnp.asarray(src_vid, self.options.dtype),
      jnp.asarray(src_txt, self.options.dtype),
    )
    if src_vid.ndim != 3 or src_vid.shape[-1] != cfg.v_feat_dim:
      raise ValueError(f"src_vid must be (batch, clips, {cfg.v_feat_dim}), got {src_vid.shape}")
    if src_txt.ndim != 3 or src_txt.shape[-1] != cfg.t_feat_dim:
      raise ValueError(f"src_txt must be (batch, tokens, {cfg.t_feat_dim}), got {src_txt.shape}")
    if cfg.use_txt_pos and src_txt.shape[1] > cfg.max_q_l:
      raise ValueError(f"src_txt has {src_txt.shape[1]} tokens > max_q_l={cfg.max_q_l}")
    vid_mask = jnp.asarray(src_vid_mask).astype(jnp.float32)
    txt_mask = jnp.asarray(src_txt_mask).astype(jnp.float32)
    if vid_mask.shape != src_vid.shape[:2] or txt_mask.shape != src_txt.shape[:2]:
      raise ValueError(
        f"mask shapes {vid_mask.shape} / {txt_mask.shape} do not match features "
        f"{src_vid.shape[:2]} / {src_txt.shape[:2]}"
      )
    src_vid = constrain(src_vid, ("activation_batch", "activation_length", None))
    for layer in self.input_vid_proj:
      src_vid = layer(src_vid)
    for layer in self.input_txt_proj:
      src_txt = layer(src_txt)
    type_emb = self.token_type_embeddings(jnp.arange(2))
    src_vid = src_vid + type_emb[1]
    src_txt = src_txt + type_emb[0]

    src = jnp.concatenate([src_vid, src_txt], axis=1)
    key_mask = jnp.concatenate([vid_mask, txt_mask], axis=1) > 0
    pos_vid = sine_position_embedding(vid_mask, cfg.hidden_dim).astype(src.dtype)
    pos_txt = self.txt_position_embed(src_txt) if cfg.use_txt_pos else jnp.zeros_like(src_txt)
    pos = jnp.concatenate([pos_vid, pos_txt], axis=1)
    memory = self.transformer(src, key_mask, pos)
    vid_mem = memory[:, : src_vid.shape[1]]

    pred_logits = jax.nn.sigmoid(self.class_embed(vid_mem).astype(jnp.float32))
    pred_spans = jax.nn.sigmoid(self.span_embed(vid_mem).astype(jnp.float32))
    pred_spans = pred_spans * jnp.array([-1.0, 1.0])
    # Saliency compares the *projected inputs* (not the encoder memory) with the pooled query.
    txt_mem_proj = self.weightedpool(src_txt, txt_mask)[:, None]
    sim = cosine_similarity(src_vid.astype(jnp.float32), txt_mem_proj.astype(jnp.float32))
    saliency = sim + jnp.where(vid_mask > 0, 0.0, _LOG_TINY)
    return UniVTGOutput(
      pred_logits=pred_logits,
      pred_spans=pred_spans,
      saliency_scores=saliency,
      vid_mem_proj=src_vid,
      txt_mem_proj=txt_mem_proj,
      src_vid_mask=vid_mask,
    )
