"""UniVTG: official checkpoint layout, parity with the original code's forward (showlab/UniVTG,
reproduced module for module from torch's own layers), post-processing, training."""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aotd_jax.hf.io import CheckpointError
from aotd_jax.hf.univtg import load_univtg, save_univtg, state_dict
from aotd_jax.models import univtg_postprocess as pp
from aotd_jax.models.univtg import UniVTG, UniVTGConfig

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

TINY = dict(
  v_feat_dims=(20, 12),
  t_feat_dim=16,
  hidden_dim=32,
  nheads=4,
  enc_layers=2,
  dim_feedforward=48,
  max_q_l=12,
  clip_length=2.0,
)


# -- the reference: showlab/UniVTG's forward, module for module -----------------------------------
# Each class below does what one class of the original code does (github.com/showlab/UniVTG at
# commit 32659ac, MIT licence; file and lines cited per class), built from torch's own modules
# (nn.MultiheadAttention, nn.Conv1d, nn.LayerNorm, nn.Embedding, F.gelu, F.cosine_similarity) in
# the original's order, with the original's attribute names, so `state_dict()` has exactly the
# official names and shapes. Nothing here imports aotd_jax: the model under test is compared with
# the original's arithmetic, not with a second copy of ours. Dropout and DropPath are identities
# in `eval()`, as in the original's inference.
class _LinearLayer(tnn.Module):
  """model/univtg.py:384-406 `LinearLayer`: LayerNorm -> Dropout -> Linear -> ReLU if `relu`."""

  def __init__(self, in_hsz, out_hsz, dropout, relu):
    super().__init__()
    self.relu = relu
    self.LayerNorm = tnn.LayerNorm(in_hsz)
    self.net = tnn.Sequential(tnn.Dropout(dropout), tnn.Linear(in_hsz, out_hsz))

  def forward(self, x):
    x = self.net(self.LayerNorm(x))
    return F.relu(x) if self.relu else x


class _Conv(tnn.Module):
  """model/univtg.py:367-382 `Conv`: `num_layers` Conv1d over time (kernel 3, stride 1, zero
  padding 1), ReLU after all but the last; (B, L, C) in and out."""

  def __init__(self, input_dim, hidden_dim, output_dim, num_layers=3, kernel_size=3):
    super().__init__()
    dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
    self.layers = tnn.ModuleList(
      tnn.Conv1d(a, b, kernel_size, stride=1, padding=kernel_size // 2, padding_mode="zeros")
      for a, b in zip(dims[:-1], dims[1:])
    )

  def forward(self, x):
    x = x.permute(0, 2, 1)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = F.relu(x)
    return x.permute(0, 2, 1)


class _WeightedPool(tnn.Module):
  """model/univtg.py:36-49 `WeightedPool` with `mask_logits` (:22-24): a learned score per
  token, -1e30 added at padded tokens, softmax over tokens, the weighted sum of tokens."""

  def __init__(self, dim):
    super().__init__()
    self.weight = tnn.Parameter(torch.empty(dim, 1))
    tnn.init.xavier_uniform_(self.weight)

  def forward(self, x, mask):
    alpha = torch.tensordot(x, self.weight, dims=1)  # (B, L, 1)
    alpha = alpha + (1.0 - mask.float().unsqueeze(2)) * -1e30
    return torch.matmul(x.transpose(1, 2), alpha.softmax(dim=1)).squeeze(2)  # (B, d)


class _PositionEmbeddingSine(tnn.Module):
  """model/position_encoding.py:44-83 `PositionEmbeddingSine`, built as
  `build_position_encoding` builds it (:113-117: num_pos_feats=hidden_dim, normalize=True)."""

  def __init__(self, num_pos_feats, temperature=10000):
    super().__init__()
    self.num_pos_feats, self.temperature = num_pos_feats, temperature

  def forward(self, mask):
    x_embed = mask.cumsum(1, dtype=torch.float32)
    x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32)
    dim_t = self.temperature ** (2 * torch.div(dim_t, 2).int() / self.num_pos_feats)
    pos = x_embed[:, :, None] / dim_t
    return torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)


class _TrainablePositionalEncoding(tnn.Module):
  """model/position_encoding.py:19-41: LayerNorm(x + learned position embedding)."""

  def __init__(self, max_position_embeddings, hidden_size):
    super().__init__()
    self.position_embeddings = tnn.Embedding(max_position_embeddings, hidden_size)
    self.LayerNorm = tnn.LayerNorm(hidden_size)

  def forward(self, x):
    ids = torch.arange(x.shape[1]).unsqueeze(0).repeat(x.shape[0], 1)
    return self.LayerNorm(x + self.position_embeddings(ids))


class _EncoderLayer(tnn.Module):
  """model/transformer_encoder_droppath.py:88-126 `TransformerEncoderLayer.forward_post` (the
  released models are post-norm): q = k = src + pos, value = src; residual, norm1; linear2 of
  the activation of linear1; residual, norm2. The activation is GELU: `Transformer` (:16-25)
  passes its default `activation="gelu"` and `build_transformer` (:141-152) sets no other."""

  def __init__(self, d_model, nhead, dim_feedforward, dropout=0.1):
    super().__init__()
    self.self_attn = tnn.MultiheadAttention(d_model, nhead, dropout=dropout)
    self.linear1 = tnn.Linear(d_model, dim_feedforward)
    self.linear2 = tnn.Linear(dim_feedforward, d_model)
    self.norm1, self.norm2 = tnn.LayerNorm(d_model), tnn.LayerNorm(d_model)

  def forward(self, src, key_padding_mask, pos):  # src, pos: (L, B, d)
    q = k = src + pos
    src = self.norm1(src + self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask)[0])
    return self.norm2(src + self.linear2(F.gelu(self.linear1(src))))


class _Transformer(tnn.Module):
  """model/transformer_encoder_droppath.py:14-86 `Transformer` / `TransformerEncoder`: the
  layers over (L, B, d), no final norm when post-norm (:24), back to (B, L, d)."""

  def __init__(self, d_model, nhead, num_encoder_layers, dim_feedforward):
    super().__init__()
    self.encoder = tnn.Module()
    self.encoder.layers = tnn.ModuleList(
      _EncoderLayer(d_model, nhead, dim_feedforward) for _ in range(num_encoder_layers)
    )

  def forward(self, src, mask, pos_embed):
    src, pos = src.permute(1, 0, 2), pos_embed.permute(1, 0, 2)
    for layer in self.encoder.layers:
      src = layer(src, mask, pos)
    return src.transpose(0, 1)


class _OfficialUniVTG(tnn.Module):
  """model/univtg.py:51-155 `Model` (span_loss_type "l1", no `src_cls`), configured as
  `build_model` (:409-425) configures it from the options in `c`."""

  def __init__(self, c):
    super().__init__()
    d, n_proj = c["hidden_dim"], c.get("n_input_proj", 2)
    self.use_txt_pos = c.get("use_txt_pos", False)
    self.transformer = _Transformer(d, c["nheads"], c["enc_layers"], c["dim_feedforward"])
    self.position_embed = _PositionEmbeddingSine(d)
    self.txt_position_embed = _TrainablePositionalEncoding(c["max_q_l"], d)
    self.token_type_embeddings = tnn.Embedding(2, d)
    self.span_embed = _Conv(d, d, 2)
    self.class_embed = _Conv(d, d, 1)
    relu = [True] * 3
    relu[n_proj - 1] = False  # :89-90
    vdim = sum(c["v_feat_dims"]) + 2  # + the 2 temporal endpoint features (ctx_mode video_tef)
    self.input_txt_proj = tnn.Sequential(
      *[_LinearLayer(c["t_feat_dim"] if i == 0 else d, d, 0.5, relu[i]) for i in range(n_proj)]
    )
    self.input_vid_proj = tnn.Sequential(
      *[_LinearLayer(vdim if i == 0 else d, d, 0.5, relu[i]) for i in range(n_proj)]
    )
    self.weightedpool = _WeightedPool(d)
    for p in self.parameters():  # non-trivial norms / biases so a layout slip shows
      with torch.no_grad():
        p.add_(torch.randn_like(p) * 0.05)

  def forward(self, src_txt, src_txt_mask, src_vid, src_vid_mask):
    src_vid = self.input_vid_proj(src_vid)
    src_txt = self.input_txt_proj(src_txt)
    src_vid = src_vid + self.token_type_embeddings(torch.full_like(src_vid_mask.long(), 1))
    src_txt = src_txt + self.token_type_embeddings(torch.zeros_like(src_txt_mask.long()))
    src = torch.cat([src_vid, src_txt], dim=1)
    mask = torch.cat([src_vid_mask, src_txt_mask], dim=1).bool()
    pos_vid = self.position_embed(src_vid_mask)
    pos_txt = self.txt_position_embed(src_txt) if self.use_txt_pos else torch.zeros_like(src_txt)
    memory = self.transformer(src, ~mask, torch.cat([pos_vid, pos_txt], dim=1))
    vid_mem = memory[:, : src_vid.shape[1], :]
    logits = self.class_embed(vid_mem).sigmoid()
    spans = self.span_embed(vid_mem).sigmoid() * torch.tensor((-1, 1))[None, None]
    txt_mem_proj = self.weightedpool(src_txt, src_txt_mask).unsqueeze(1)
    sal = F.cosine_similarity(src_vid, txt_mem_proj, dim=-1) + (src_vid_mask + 1e-45).log()
    return logits, spans, sal


def _official_file(tmp_path, seed=0, enc_layers=2, use_txt_pos=False, **opt):
  torch.manual_seed(seed)
  ref = _OfficialUniVTG(dict(TINY, enc_layers=enc_layers, use_txt_pos=use_txt_pos, **opt)).eval()
  ns = argparse.Namespace(
    nheads=4,
    clip_length=2.0,
    use_txt_pos=use_txt_pos,
    ctx_mode="video_tef",
    v_feat_types="custom",
    v_feat_dims=[20, 12],
    **opt,
  )
  path = tmp_path / "model_best.ckpt"
  torch.save({"model": ref.state_dict(), "optimizer": {}, "epoch": 7, "opt": ns}, path)
  return ref, path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """(the original's forward in torch, its official-format file, our model loaded from it)."""
  ref, path = _official_file(tmp_path_factory.mktemp("univtg"))
  return ref, path, load_univtg(path)


# One compiled forward for all tests (eager dispatch of many tiny ops is slow on a busy CPU).
_forward = nnx.jit(lambda model, inp: model(**inp))


def _inputs(b=2, lv=9, lt=5, seed=0):
  rng = np.random.default_rng(seed)
  vids = [[rng.normal(size=(lv - i, 20)), rng.normal(size=(lv - i, 12))] for i in range(b)]
  txts = [rng.normal(size=(lt - i, 16)) for i in range(b)]
  return pp.batch_inputs(vids, txts)


def _assert_matches_original(ref, inp, out):
  """Our outputs `out` on `inp` equal the original forward's (spans at valid clips only)."""
  with torch.no_grad():
    t = {k: torch.from_numpy(v) for k, v in inp.items()}
    logits, spans, sal = ref(t["src_txt"], t["src_txt_mask"], t["src_vid"], t["src_vid_mask"])
  valid = inp["src_vid_mask"] > 0
  np.testing.assert_allclose(np.asarray(out.pred_logits), logits.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.pred_spans)[valid], spans.numpy()[valid], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.saliency_scores), sal.numpy(), atol=1e-4)


def test_official_layout_loads_and_matches_the_original_forward(official):
  ref, _, model = official
  names = set(ref.state_dict())
  assert "transformer.encoder.layers.1.self_attn.in_proj_weight" in names
  assert "input_vid_proj.0.net.1.weight" in names and "span_embed.layers.2.weight" in names
  assert model.config.v_feat_dim == 34 and model.config.enc_layers == 2
  assert model.config.hidden_dim == 32 and model.config.nheads == 4
  inp = _inputs()
  out = _forward(model, inp)
  b, lv = inp["src_vid"].shape[:2]
  assert out.pred_logits.shape == (b, lv, 1) and out.pred_spans.shape == (b, lv, 2)
  assert out.saliency_scores.shape == (b, lv) and out.txt_mem_proj.shape == (b, 1, 32)
  # meanings: probabilities, start offset <= 0 <= end offset, padded clips far below
  assert np.all((np.asarray(out.pred_logits) > 0) & (np.asarray(out.pred_logits) < 1))
  assert np.all(np.asarray(out.pred_spans[..., 0]) <= 0)
  assert np.all(np.asarray(out.pred_spans[..., 1]) >= 0)
  assert np.asarray(out.saliency_scores)[1, -1] < -100
  _assert_matches_original(ref, inp, out)


def test_text_positions_and_three_input_projections_match_the_original(tmp_path):
  """The options the test above leaves at their defaults: learned text positions added to the
  text tokens' queries and keys (`use_txt_pos`), three input projection layers (ReLU on the
  first two), one encoder layer."""
  ref, path = _official_file(tmp_path, seed=1, enc_layers=1, use_txt_pos=True, n_input_proj=3)
  model = load_univtg(path)
  assert model.config.use_txt_pos and model.config.n_input_proj == 3
  assert "input_txt_proj.2.net.1.weight" in ref.state_dict()
  inp = _inputs(seed=1)
  out = _forward(model, inp)
  _assert_matches_original(ref, inp, out)


def test_released_size_layout_and_shapes_without_compute():
  # The released SlowFast+CLIP model: every official tensor maps onto our parameter of the
  # transformed shape, and the forward's output shapes, all by shape inference only.
  from aotd_jax.hf.univtg import rules

  size = dict(
    v_feat_dims=(2304, 512),
    t_feat_dim=512,
    hidden_dim=1024,
    nheads=8,
    enc_layers=4,
    dim_feedforward=1024,
    max_q_l=75,
  )
  with torch.device("meta"):
    official = {k: tuple(v.shape) for k, v in _OfficialUniVTG(size).state_dict().items()}
  assert official["input_vid_proj.0.net.1.weight"] == (1024, 2818)
  cfg = UniVTGConfig(**size)
  model = nnx.eval_shape(lambda: UniVTG(cfg, rngs=nnx.Rngs(0)))
  params = {
    "/".join(map(str, p)): v.get_value().shape
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  table = rules(cfg)
  assert {r.hf for r in table} == set(official)
  assert {r.flax for r in table} == set(params)
  for r in table:
    probe = np.zeros(official[r.hf], np.float32)
    assert r.transform.to_flax(probe).shape == params[r.flax], r.hf
  inp = {
    "src_txt": jax.ShapeDtypeStruct((2, 20, 512), jnp.float32),
    "src_txt_mask": jax.ShapeDtypeStruct((2, 20), jnp.float32),
    "src_vid": jax.ShapeDtypeStruct((2, 75, 2818), jnp.float32),
    "src_vid_mask": jax.ShapeDtypeStruct((2, 75), jnp.float32),
  }
  out = nnx.eval_shape(lambda m, x: m(**x), model, inp)
  assert out.pred_logits.shape == (2, 75, 1) and out.pred_spans.shape == (2, 75, 2)
  assert out.saliency_scores.shape == (2, 75)


def test_save_round_trip_is_exact(official, tmp_path):
  _, path, model = official
  save_univtg(model, tmp_path / "again.ckpt")
  again = load_univtg(tmp_path / "again.ckpt")
  assert again.config == model.config
  a, b = state_dict(model), state_dict(again)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  raw = torch.load(tmp_path / "again.ckpt", weights_only=False)
  assert set(raw["model"]) == set(torch.load(path, weights_only=False)["model"])


def test_bad_checkpoints_are_reported(official, tmp_path):
  ref, path, _ = official
  with pytest.raises(CheckpointError, match="nowhere.ckpt: no such"):
    load_univtg(tmp_path / "nowhere.ckpt")
  junk = tmp_path / "junk.ckpt"
  junk.write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointError, match="junk.ckpt: cannot be read"):
    load_univtg(junk)
  sd = ref.state_dict()
  missing = dict(sd)
  del missing["class_embed.layers.1.bias"]
  torch.save({"model": missing}, tmp_path / "missing.ckpt")
  with pytest.raises(
    CheckpointError, match="missing.ckpt: missing tensor class_embed.layers.1.bias"
  ):
    load_univtg(tmp_path / "missing.ckpt", nheads=4)
  shaped = dict(sd, **{"weightedpool.weight": torch.zeros(32, 2)})
  torch.save({"model": shaped}, tmp_path / "shape.ckpt")
  with pytest.raises(CheckpointError, match="shape.ckpt: tensor weightedpool.weight has shape"):
    load_univtg(tmp_path / "shape.ckpt", nheads=4)
  extra = dict(sd, **{"saliency_proj.weight": torch.zeros(3)})
  torch.save({"model": extra}, tmp_path / "extra.ckpt")
  with pytest.raises(CheckpointError, match="extra.ckpt: unexpected tensor saliency_proj.weight"):
    load_univtg(tmp_path / "extra.ckpt", nheads=4)
  with pytest.raises(ValueError, match="unknown UniVTGConfig field"):
    load_univtg(path, n_heads=4)


def test_input_shape_errors_name_the_argument(official):
  model = official[2]
  inp = _inputs()
  with pytest.raises(ValueError, match="src_vid must be"):
    model(inp["src_txt"], inp["src_txt_mask"], inp["src_vid"][..., :-1], inp["src_vid_mask"])
  with pytest.raises(ValueError, match="src_txt must be"):
    model(inp["src_txt"][..., :3], inp["src_txt_mask"], inp["src_vid"], inp["src_vid_mask"])
  with pytest.raises(ValueError, match="query 0"):
    pp.batch_inputs([np.ones((3, 4))], [np.ones((0, 4))])
  with pytest.raises(ValueError, match="hidden_dim"):
    UniVTGConfig(hidden_dim=30, nheads=4)


def test_temporal_nms_and_decoding():
  rows = [[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7], [0, 4, 0.6]]
  # hull IoU([0,10],[1,10]) = 0.9 > 0.5: suppressed; [0,4] vs [0,10]: 0.4, kept
  assert pp.temporal_nms(rows, 0.5) == [[0, 10, 0.9], [20, 30, 0.7], [0, 4, 0.6]]
  assert pp.temporal_nms(rows, 0.5, max_after_nms=1) == [[0, 10, 0.9]]
  assert pp.temporal_iou([0, 4], [2, 6]) == pytest.approx(2 / 6)
  # hand-made dense outputs: 4 clips of 2 s; clip 2 is most confident, span (-0.25, +0.25)
  spans = np.zeros((1, 4, 2), np.float32)
  spans[0, 2] = (-0.25, 0.25)
  logits = np.array([[[0.1], [0.2], [0.9], [0.0]]], np.float32)
  from aotd_jax.models.univtg import UniVTGOutput

  out = UniVTGOutput(
    jnp.asarray(logits),
    jnp.asarray(spans),
    jnp.zeros((1, 4)),
    jnp.zeros((1, 4, 8)),
    jnp.zeros((1, 1, 8)),
    jnp.asarray([[1, 1, 1, 0.0]]),
  )
  (pred,) = pp.decode_moments(out, clip_length=2.0, nms_thd=None)
  # 3 valid clips -> duration 6 s; anchor of clip 2 = (2 + 1) / 3 = 1.0 -> [0.75, 1.25] * 6
  assert pred.duration == 6.0
  assert pred.pred_relevant_windows[0] == [4.5, 6.0, 0.9]  # end clamped to the duration
  assert len(pred.pred_relevant_windows) == 3 and len(pred.pred_saliency_scores) == 3


def test_targets_follow_the_official_assignment():
  t = pp.moment_targets([[[2.0, 6.0]]], [5], clip_length=2.0, pad_to=6)
  # anchors (i + 1) / 5 = .2 .4 .6 .8 1.0; window [0.2, 0.6] normalised
  np.testing.assert_allclose(t["timestamp"][0, :5, 0], [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(t["timestamp_window"][0], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(t["timestamp_mask"][0], [1, 1, 1, 1, 1, 0])
  np.testing.assert_allclose(t["span_labels_nn"][0, 1], [0.2, 0.6], rtol=1e-6)
  # one positive clip drawn at random: the default draw is numpy's for seed 0, and over seeds
  # every positive clip (0, 1, 2) and no negative one is drawn
  assert t["saliency_pos_labels"][0] == np.random.default_rng(0).choice([0, 1, 2])
  drawn = {
    int(
      pp.moment_targets(
        [[[2.0, 6.0]]], [5], clip_length=2.0, pad_to=6, rng=np.random.default_rng(seed)
      )["saliency_pos_labels"][0]
    )
    for seed in range(40)
  }
  assert drawn == {0, 1, 2}
  with pytest.raises(ValueError, match="sample 0"):
    pp.moment_targets([[[5.0, 1.0]]], [5], clip_length=2.0)


def _synthetic_batch(rng, b=16, lv=12, dv=20, dt=16):
  """Clips inside a random span carry the query's signature; the rest are noise."""
  keys = rng.normal(size=(4, dv))
  vids, txts, wins = [], [], []
  for _ in range(b):
    k = int(rng.integers(4))
    s = int(rng.integers(0, lv - 3))
    e = int(rng.integers(s + 2, min(lv, s + 6) + 1))
    v = rng.normal(size=(lv, dv)) * 0.5
    v[s:e] += keys[k] * 2
    vids.append([v, rng.normal(size=(lv, 12))])
    txt = np.zeros((3, dt))
    txt[0, k] = 1.0
    txt[1:, 8:] = rng.normal(size=(2, dt - 8))
    txts.append(txt)
    wins.append([[s * 2.0, e * 2.0]])
  return pp.batch_inputs(vids, txts), wins


@pytest.mark.slow  # a short training run; the parity tests run fast
def test_few_training_steps_find_the_known_span(tmp_path):
  # Start from torch-initialised official-format weights (building a model eagerly costs many
  # small compilations); one layer and no dropout keep compile time and steps small.
  _, path = _official_file(tmp_path, enc_layers=1)
  model = load_univtg(path, dropout=0.0, droppath=0.0, input_dropout=0.0)
  cfg = model.config
  rng = np.random.default_rng(0)
  inp, wins = _synthetic_batch(rng)
  targets = pp.moment_targets(wins, [12] * 16, cfg.clip_length, rng=rng)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, inp, targets):
    def loss_fn(m):
      out = m(**inp)
      return pp.univtg_losses(out, targets)[0], out

    (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, out  # `out` is the prediction before this update

  def top1_ious(out):
    preds = pp.decode_moments(out, clip_length=cfg.clip_length)
    return np.array(
      [pp.temporal_iou(p.pred_relevant_windows[0][:2], w[0]) for p, w in zip(preds, wins)]
    )

  first_loss, first_out = step(model, optimizer, inp, targets)
  for _ in range(60):
    last_loss, last_out = step(model, optimizer, inp, targets)
  before, after = top1_ious(first_out), top1_ious(last_out)
  assert float(last_loss) < float(first_loss) * 0.5, (first_loss, last_loss)
  assert after.mean() > 0.6 and after.mean() > before.mean() + 0.2, (before, after)
  assert np.all(after > 0)  # the top moment overlaps the true span on every clip


def test_clip_features_match_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("aotd_jax.hf.clip")
  from aotd_jax.data.video_processing import preprocess_video
  from aotd_jax.data import univtg_features
  from aotd_jax.hf import from_pretrained

  torch.manual_seed(0)
  hf_cfg = transformers.CLIPConfig(
    text_config=dict(
      vocab_size=99,
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      max_position_embeddings=12,
    ),
    vision_config=dict(
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      image_size=32,
      patch_size=16,
    ),
    projection_dim=20,
  )
  ref = transformers.CLIPModel(hf_cfg).eval()
  ref.save_pretrained(tmp_path / "clip")
  model = from_pretrained(str(tmp_path / "clip"))
  frames = np.random.default_rng(0).integers(0, 255, (24, 48, 64, 3), dtype=np.uint8)
  vid = univtg_features.clip_video_features(model, frames, fps=8, clip_length=0.5, batch_size=4)
  assert vid.shape == (6, 20)  # 3 s at one feature per 0.5 s, batches of 4 (last one padded)
  idx = pp.clip_frame_indices(24, 8, 0.5)
  np.testing.assert_array_equal(idx, [0, 4, 8, 12, 16, 20])
  with torch.no_grad():
    pixels = torch.from_numpy(preprocess_video(frames[idx], shortest_edge=32, crop_size=32))
    want = ref.get_image_features(pixel_values=pixels)
    want = getattr(want, "pooler_output", want)  # transformers 5 may return an output object
  np.testing.assert_allclose(vid, want.numpy(), atol=1e-4)

  ids = np.array([[5, 6, 7, 0], [5, 6, 0, 0]])
  mask = (ids > 0).astype(np.int64)
  txt = univtg_features.clip_text_features(model, ids, mask)
  assert [t.shape for t in txt] == [(3, 16), (2, 16)]
  with torch.no_grad():
    hidden = ref.text_model(
      input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
    ).last_hidden_state.numpy()
  np.testing.assert_allclose(txt[1], hidden[1, :2], atol=1e-4)
  inp = pp.batch_inputs([[np.ones((6, 4)), vid]], txt[:1])
  assert inp["src_vid"].shape == (1, 6, 4 + 20 + 2) and inp["src_txt"].shape == (1, 3, 16)
  with pytest.raises(ValueError, match="frames must be"):
    univtg_features.clip_video_features(model, frames.astype(np.float32), fps=8)
