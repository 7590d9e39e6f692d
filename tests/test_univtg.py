"""UniVTG: official checkpoint layout, parity with a torch reference, post-processing, training."""
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

TINY = dict(v_feat_dims=(20, 12), t_feat_dim=16, hidden_dim=32, nheads=4, enc_layers=2,
            dim_feedforward=48, max_q_l=12, clip_length=2.0)


# A torch reference written from the paper's/official module structure (torch's own MHA,
# Conv1d, LayerNorm), so its `state_dict()` has exactly the official names and shapes.
class _LinearLayer(tnn.Module):
  def __init__(self, din, dout, relu):
    super().__init__()
    self.relu, self.LayerNorm = relu, tnn.LayerNorm(din)
    self.net = tnn.Sequential(tnn.Dropout(0.5), tnn.Linear(din, dout))

  def forward(self, x):
    x = self.net(self.LayerNorm(x))
    return F.relu(x) if self.relu else x


class _Conv(tnn.Module):
  def __init__(self, d, dout):
    super().__init__()
    self.layers = tnn.ModuleList([tnn.Conv1d(i, o, 3, padding=1)
                                  for i, o in ((d, d), (d, d), (d, dout))])

  def forward(self, x):
    x = x.permute(0, 2, 1)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      x = F.relu(x) if i < 2 else x
    return x.permute(0, 2, 1)


class _Layer(tnn.Module):
  def __init__(self, d, h, ff):
    super().__init__()
    self.self_attn = tnn.MultiheadAttention(d, h)
    self.linear1, self.linear2 = tnn.Linear(d, ff), tnn.Linear(ff, d)
    self.norm1, self.norm2 = tnn.LayerNorm(d), tnn.LayerNorm(d)

  def forward(self, src, pad, pos):  # src (L, B, d)
    q = src + pos
    src = self.norm1(src + self.self_attn(q, q, src, key_padding_mask=pad)[0])
    return self.norm2(src + self.linear2(F.gelu(self.linear1(src))))


class _TorchUniVTG(tnn.Module):
  def __init__(self, c):
    super().__init__()
    d = c["hidden_dim"]
    self.transformer = tnn.Module()
    self.transformer.encoder = tnn.Module()
    self.transformer.encoder.layers = tnn.ModuleList(
      [_Layer(d, c["nheads"], c["dim_feedforward"]) for _ in range(c["enc_layers"])])
    self.txt_position_embed = tnn.Module()
    self.txt_position_embed.position_embeddings = tnn.Embedding(c["max_q_l"], d)
    self.txt_position_embed.LayerNorm = tnn.LayerNorm(d)
    self.token_type_embeddings = tnn.Embedding(2, d)
    self.span_embed, self.class_embed = _Conv(d, 2), _Conv(d, 1)
    vdim = sum(c["v_feat_dims"]) + 2
    self.input_txt_proj = tnn.Sequential(_LinearLayer(c["t_feat_dim"], d, True),
                                         _LinearLayer(d, d, False))
    self.input_vid_proj = tnn.Sequential(_LinearLayer(vdim, d, True), _LinearLayer(d, d, False))
    self.weightedpool = tnn.Module()
    self.weightedpool.weight = tnn.Parameter(torch.randn(d, 1) * 0.3)
    for p in self.parameters():  # non-trivial norms / biases so a layout slip shows
      with torch.no_grad():
        p.add_(torch.randn_like(p) * 0.05)

  def forward(self, src_txt, src_txt_mask, src_vid, src_vid_mask):
    d = self.token_type_embeddings.weight.shape[1]
    vid = self.input_vid_proj(src_vid) + self.token_type_embeddings.weight[1]
    txt = self.input_txt_proj(src_txt) + self.token_type_embeddings.weight[0]
    x = torch.cumsum(src_vid_mask, 1)
    x = x / (x[:, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(d) // 2) / d)
    ang = x[:, :, None] / dim_t
    pos_vid = torch.stack((ang[:, :, 0::2].sin(), ang[:, :, 1::2].cos()), dim=3).flatten(2)
    pos = torch.cat([pos_vid, torch.zeros_like(txt)], 1).transpose(0, 1)
    src = torch.cat([vid, txt], 1).transpose(0, 1)
    pad = ~torch.cat([src_vid_mask, src_txt_mask], 1).bool()
    for layer in self.transformer.encoder.layers:
      src = layer(src, pad, pos)
    mem = src.transpose(0, 1)[:, :vid.shape[1]]
    logits = self.class_embed(mem).sigmoid()
    spans = self.span_embed(mem).sigmoid() * torch.tensor([-1.0, 1.0])
    alpha = (txt @ self.weightedpool.weight) + (1 - src_txt_mask[..., None]) * -1e30
    pooled = (txt * alpha.softmax(1)).sum(1, keepdim=True)
    sal = F.cosine_similarity(vid, pooled, dim=-1) + (src_vid_mask + 1e-45).log()
    return logits, spans, sal


def _official_file(tmp_path, seed=0, enc_layers=2, **opt):
  torch.manual_seed(seed)
  ref = _TorchUniVTG(dict(TINY, enc_layers=enc_layers)).eval()
  ns = argparse.Namespace(nheads=4, clip_length=2.0, use_txt_pos=False, ctx_mode="video_tef",
                          v_feat_types="custom", v_feat_dims=[20, 12], **opt)
  path = tmp_path / "model_best.ckpt"
  torch.save({"model": ref.state_dict(), "optimizer": {}, "epoch": 7, "opt": ns}, path)
  return ref, path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """(torch reference, official-format file, our model loaded from it)."""
  ref, path = _official_file(tmp_path_factory.mktemp("univtg"))
  return ref, path, load_univtg(path)


# One compiled forward for all tests (eager dispatch of many tiny ops is slow on a busy CPU).
_forward = nnx.jit(lambda model, inp: model(**inp))


def _inputs(b=2, lv=9, lt=5, seed=0):
  rng = np.random.default_rng(seed)
  vids = [[rng.normal(size=(lv - i, 20)), rng.normal(size=(lv - i, 12))] for i in range(b)]
  txts = [rng.normal(size=(lt - i, 16)) for i in range(b)]
  return pp.batch_inputs(vids, txts)


def test_official_layout_loads_and_matches_torch_reference(official):
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
  with torch.no_grad():
    t = {k: torch.from_numpy(v) for k, v in inp.items()}
    logits, spans, sal = ref(t["src_txt"], t["src_txt_mask"], t["src_vid"], t["src_vid_mask"])
  valid = inp["src_vid_mask"] > 0
  np.testing.assert_allclose(np.asarray(out.pred_logits), logits.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.pred_spans)[valid], spans.numpy()[valid], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.saliency_scores), sal.numpy(), atol=1e-4)


def test_released_size_layout_and_shapes_without_compute():
  # The released SlowFast+CLIP model: every official tensor maps onto our parameter of the
  # transformed shape, and the forward's output shapes, all by shape inference only.
  from aotd_jax.hf.univtg import rules
  size = dict(v_feat_dims=(2304, 512), t_feat_dim=512, hidden_dim=1024, nheads=8,
              enc_layers=4, dim_feedforward=1024, max_q_l=75)
  with torch.device("meta"):
    official = {k: tuple(v.shape) for k, v in _TorchUniVTG(size).state_dict().items()}
  assert official["input_vid_proj.0.net.1.weight"] == (1024, 2818)
  cfg = UniVTGConfig(**size)
  model = nnx.eval_shape(lambda: UniVTG(cfg, rngs=nnx.Rngs(0)))
  params = {"/".join(map(str, p)): v.get_value().shape
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  table = rules(cfg)
  assert {r.hf for r in table} == set(official)
  assert {r.flax for r in table} == set(params)
  for r in table:
    probe = np.zeros(official[r.hf], np.float32)
    assert r.transform.to_flax(probe).shape == params[r.flax], r.hf
  inp = {"src_txt": jax.ShapeDtypeStruct((2, 20, 512), jnp.float32),
         "src_txt_mask": jax.ShapeDtypeStruct((2, 20), jnp.float32),
         "src_vid": jax.ShapeDtypeStruct((2, 75, 2818), jnp.float32),
         "src_vid_mask": jax.ShapeDtypeStruct((2, 75), jnp.float32)}
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
  with pytest.raises(CheckpointError,
                     match="missing.ckpt: missing tensor class_embed.layers.1.bias"):
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
  out = UniVTGOutput(jnp.asarray(logits), jnp.asarray(spans), jnp.zeros((1, 4)),
                     jnp.zeros((1, 4, 8)), jnp.zeros((1, 1, 8)), jnp.asarray([[1, 1, 1, 0.0]]))
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
  drawn = {int(pp.moment_targets([[[2.0, 6.0]]], [5], clip_length=2.0, pad_to=6,
                                 rng=np.random.default_rng(seed))["saliency_pos_labels"][0])
           for seed in range(40)}
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
    return np.array([pp.temporal_iou(p.pred_relevant_windows[0][:2], w[0])
                     for p, w in zip(preds, wins)])

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
  from aotd_jax.hf import from_pretrained

  torch.manual_seed(0)
  hf_cfg = transformers.CLIPConfig(
    text_config=dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=12),
    vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, image_size=32, patch_size=16),
    projection_dim=20)
  ref = transformers.CLIPModel(hf_cfg).eval()
  ref.save_pretrained(tmp_path / "clip")
  model = from_pretrained(str(tmp_path / "clip"))
  frames = np.random.default_rng(0).integers(0, 255, (24, 48, 64, 3), dtype=np.uint8)
  vid = pp.clip_video_features(model, frames, fps=8, clip_length=0.5, batch_size=4)
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
  txt = pp.clip_text_features(model, ids, mask)
  assert [t.shape for t in txt] == [(3, 16), (2, 16)]
  with torch.no_grad():
    hidden = ref.text_model(input_ids=torch.from_numpy(ids),
                            attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  np.testing.assert_allclose(txt[1], hidden[1, :2], atol=1e-4)
  inp = pp.batch_inputs([[np.ones((6, 4)), vid]], txt[:1])
  assert inp["src_vid"].shape == (1, 6, 4 + 20 + 2) and inp["src_txt"].shape == (1, 3, 16)
  with pytest.raises(ValueError, match="frames must be"):
    pp.clip_video_features(model, frames.astype(np.float32), fps=8)
