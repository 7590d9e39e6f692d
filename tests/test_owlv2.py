"""OWLv2: parity with transformers' `Owlv2ForObjectDetection` and `Owlv2ImageProcessorPil`."""

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

from aotd_jax import hf
from aotd_jax.models import owlv2
from aotd_jax.models import owlv2_processing as proc

TOL = 1e-4
TEXT = dict(
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=1,
  num_attention_heads=2,
  vocab_size=99,
  max_position_embeddings=8,
)


def _hf_config(image_size, patch_size):
  vision = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=image_size,
    patch_size=patch_size,
  )
  # OWLv2's class head compares against text embeddings, so projection_dim = text hidden_size.
  return transformers.Owlv2Config(text_config=TEXT, vision_config=vision, projection_dim=32)


@pytest.fixture(
  scope="module",
  ids=["s32p8", "s48p16"],
  params=[(32, 8), pytest.param((48, 16), marks=pytest.mark.slow)],
)  # one size fast
def owl(request, tmp_path_factory):
  torch.manual_seed(0)
  ref = transformers.Owlv2ForObjectDetection(_hf_config(*request.param)).eval()
  path = str(tmp_path_factory.mktemp("owlv2"))
  ref.save_pretrained(path)
  return path, ref, hf.from_pretrained(path)


def _queries(rng, images=2, per_image=3, length=8):
  """Queries right-padded with 0 (OWLv2's pad id); the last query of image 1 is a padding query."""
  ids = rng.integers(1, 98, size=(images * per_image, length))
  mask = np.ones_like(ids)
  for row, n in enumerate(rng.integers(2, length + 1, size=images * per_image)):
    ids[row, n:] = 0
    mask[row, n:] = 0
  ids[-1] = 0
  mask[-1] = 0
  mask[-1, 0] = 1
  return ids, mask


def _close(ours, theirs, what):
  ours, theirs = np.asarray(ours), theirs.detach().numpy()
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
  err = np.abs(ours - theirs).max()
  assert err < TOL, f"{what}: max abs err {err}"


def _frames(rng, image_size):
  """Raw frames of several sizes (landscape, portrait, square, smaller and larger than the model)."""
  shapes = [(image_size + 8, image_size * 2), (image_size // 2 + 3, image_size // 3)]
  return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_text_query_parity_end_to_end(owl):
  path, ref, ours = owl
  size = ref.config.vision_config.image_size
  rng = np.random.default_rng(1)
  frames = _frames(rng, size)
  px_ref = Owlv2ImageProcessorPil(size={"height": size, "width": size})(
    images=frames, return_tensors="np"
  )
  px = proc.preprocess(frames, size)
  assert np.abs(px - px_ref["pixel_values"]).max() < 1e-5
  ids, mask = _queries(rng)
  with torch.no_grad():
    want = ref(
      input_ids=torch.from_numpy(ids),
      attention_mask=torch.from_numpy(mask),
      pixel_values=torch.from_numpy(px),
    )
  got = ours(input_ids=ids, pixel_values=px, attention_mask=mask)
  for name in (
    "logits",
    "pred_boxes",
    "objectness_logits",
    "image_embeds",
    "text_embeds",
    "class_embeds",
  ):
    _close(getattr(got, name), getattr(want, name), name)
  assert np.all(np.asarray(got.logits)[1, :, -1] == np.finfo(np.float32).min)  # padding query

  # Post-processing on the same (transformers) outputs gives the same boxes.
  sizes = [f.shape[:2] for f in frames]
  thr = float(np.median(torch.sigmoid(want.logits.max(-1).values).numpy()))
  theirs = Owlv2ImageProcessorPil().post_process_object_detection(
    want, threshold=thr, target_sizes=sizes
  )
  mine = proc.post_process_object_detection(want, threshold=thr, target_sizes=sizes)
  for a, b in zip(mine, theirs):
    assert len(a["boxes"]) > 0
    np.testing.assert_array_equal(a["boxes"], b["boxes"].numpy())
    np.testing.assert_array_equal(a["labels"], b["labels"].numpy())
    np.testing.assert_allclose(a["scores"], b["scores"].numpy(), rtol=1e-6, atol=1e-7)
  # ... and on our own outputs the same boxes to float32 noise.
  for a, b in zip(
    proc.post_process_object_detection(got, threshold=0.0, target_sizes=sizes),
    Owlv2ImageProcessorPil().post_process_object_detection(want, threshold=0.0, target_sizes=sizes),
  ):
    np.testing.assert_allclose(a["boxes"], b["boxes"].numpy(), atol=1e-3)


def test_image_guided_parity(owl):
  _, ref, ours = owl
  size = ref.config.vision_config.image_size
  rng = np.random.default_rng(2)
  px = rng.normal(size=(2, 3, size, size)).astype(np.float32)
  qpx = rng.normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = ref.image_guided_detection(
      pixel_values=torch.from_numpy(px), query_pixel_values=torch.from_numpy(qpx)
    )
  got = ours.image_guided_detection(px, qpx)
  for name in (
    "logits",
    "target_pred_boxes",
    "query_pred_boxes",
    "image_embeds",
    "query_image_embeds",
    "class_embeds",
  ):
    _close(getattr(got, name), getattr(want, name), name)
  sizes = torch.tensor([[100, 60], [40, 80]])
  theirs = Owlv2ImageProcessorPil().post_process_image_guided_detection(want, 0.0, 0.3, sizes)
  mine = proc.post_process_image_guided_detection(want, 0.0, 0.3, sizes.numpy())
  assert len(mine) == len(theirs)
  for a, b in zip(mine, theirs):
    np.testing.assert_array_equal(a["boxes"], b["boxes"].numpy())
    np.testing.assert_allclose(a["scores"], b["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_export_round_trip_exact(owl, tmp_path):
  _, ref, ours = owl
  hf.save_pretrained(ours, str(tmp_path))
  back = transformers.Owlv2ForObjectDetection.from_pretrained(str(tmp_path)).eval()
  ref_sd, back_sd = ref.state_dict(), back.state_dict()
  assert set(ref_sd) == set(back_sd)
  for k in ref_sd:
    assert torch.equal(ref_sd[k], back_sd[k]), f"{k} changed in the round trip"
  assert back.config.vision_config.image_size == ref.config.vision_config.image_size
  assert back.config.text_config.pad_token_id == 0


def test_jitted_detect_with_shared_queries_matches_forward(owl):
  _, ref, ours = owl
  size = ref.config.vision_config.image_size
  rng = np.random.default_rng(3)
  px = rng.normal(size=(3, 3, size, size)).astype(np.float32)
  ids, mask = _queries(rng, images=1, per_image=2)
  queries = ours.embed_text_queries(ids, mask)
  detect = nnx.jit(lambda m, x, q: m.detect(x, q))
  got = detect(ours, px, queries)
  with torch.no_grad():
    want = ref(
      input_ids=torch.from_numpy(np.tile(ids, (3, 1))),
      attention_mask=torch.from_numpy(np.tile(mask, (3, 1))),
      pixel_values=torch.from_numpy(px),
    )
  _close(got.logits[..., :1], want.logits[..., :1], "logits (shared queries)")
  _close(got.pred_boxes, want.pred_boxes, "pred_boxes (jit)")


def test_bad_inputs(owl):
  _, ref, ours = owl
  size = ref.config.vision_config.image_size
  px = np.zeros((2, 3, size, size), np.float32)
  with pytest.raises(
    ValueError, match=rf"pixel_values must have shape \(batch, 3, {size}, {size}\)"
  ):
    ours(np.ones((2, 4), np.int32), np.zeros((2, size, size, 3), np.float32))
  with pytest.raises(
    ValueError,
    match=r"input_ids must have shape \(batch \* num_queries, "
    r"length\).*batch 2.*\(3, 4\)",
  ):
    ours(np.ones((3, 4), np.int32), px)
  with pytest.raises(
    ValueError, match="query_pixel_values batch 1 must equal pixel_values batch 2"
  ):
    ours.image_guided_detection(px, px[:1])
  with pytest.raises(ValueError, match=r"query_pixel_values must have shape"):
    ours.image_guided_detection(px, px[:, :, :8])
  with pytest.raises(
    ValueError, match=r"attention_mask shape \(2, 3\) does not match input_ids shape \(2, 4\)"
  ):
    ours(np.ones((2, 4), np.int32), px, np.ones((2, 3), np.int32))


def test_preprocess_errors_and_pad_value():
  with pytest.raises(
    ValueError, match=r"images\[1\] must be an \(H, W, 3\) RGB array, got shape \(4, 4\)"
  ):
    proc.preprocess([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)], 8)
  with pytest.raises(ValueError, match=r"images\[0\] must be uint8"):
    proc.preprocess([np.zeros((4, 4, 3), np.float32)], 8)
  with pytest.raises(ValueError, match="images is empty"):
    proc.preprocess([], 8)
  with pytest.raises(ValueError, match="size must be a positive int"):
    proc.preprocess([np.zeros((4, 4, 3), np.uint8)], 0)
  white = np.full((4, 8, 3), 255, np.uint8)
  grey = proc.preprocess([white], 8, pad_value=0.5)
  black = proc.preprocess([white], 8)
  assert grey[0, :, -1].mean() > black[0, :, -1].mean()  # bottom rows are padding
  np.testing.assert_allclose(grey[0, :, 0], black[0, :, 0])  # top rows are image


class _Out:
  def __init__(self, logits, boxes):
    self.logits, self.pred_boxes = logits, boxes


def test_post_process_nms_and_errors():
  # Three boxes for query 0 (two overlap heavily), one for query 1 on top of them.
  boxes = np.array(
    [[[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]],
    np.float32,
  )
  logits = np.full((1, 4, 2), -10.0, np.float32)
  logits[0, [0, 1, 2], 0] = [2.0, 3.0, 1.0]
  logits[0, 3, 1] = 0.5
  out = _Out(logits, boxes)
  res = proc.post_process_object_detection(out, 0.1, [(50, 100)], nms_threshold=0.5)[0]
  np.testing.assert_array_equal(res["labels"], [0, 0, 1])  # box 0 suppressed by box 1, not box 3
  np.testing.assert_allclose(
    res["boxes"][0], [21.0, 20.0, 41.0, 40.0], atol=1e-4
  )  # x scaled by max(h, w)
  assert len(proc.post_process_object_detection(out, 0.1, [(50, 100)])[0]["scores"]) == 4
  with pytest.raises(ValueError, match=r"target_sizes must be 1 \(height, width\) pairs"):
    proc.post_process_object_detection(out, 0.1, [(50, 100), (1, 1)])
  with pytest.raises(ValueError, match="nms_threshold must be in"):
    proc.post_process_object_detection(out, 0.1, None, nms_threshold=1.5)


def test_resize_matches_transformers_when_upsampling():
  rng = np.random.default_rng(5)
  img = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
  ref = Owlv2ImageProcessorPil(size={"height": 40, "width": 40})(images=[img], return_tensors="np")
  assert np.abs(proc.preprocess([img], 40) - ref["pixel_values"]).max() < 1e-5


def test_config_defaults_are_owlv2s():
  cfg = hf.registry.adapter_for("Owlv2ForObjectDetection").config_from_hf(
    {"text_config": {}, "vision_config": {}}
  )
  assert cfg.vision_config.image_size == 768 and cfg.vision_config.patch_size == 16
  assert cfg.text_config.max_position_embeddings == 16 and cfg.text_config.pad_token_id == 0
  assert isinstance(cfg, owlv2.Owlv2Config)
