"""LLaVA-NeXT-Video student: parity with transformers on random tiny weights, HF/Orbax round
trips, generation, mesh equivalence and the errors users hit."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import spmd

from aotd_jax import hf, sharding
from aotd_jax.data import video_processing as vp
from aotd_jax.hf.io import CheckpointError, read_tensors
from fixtures.hf_layouts import to_current_layout
from aotd_jax.models import generate as generate_lib
from aotd_jax.models import llava_next_video as lnv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VIDEO, IMAGE, VOCAB = 99, 98, 100
PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def _hf_config(**kw):
  vision = transformers.CLIPVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=28,
    patch_size=7,
    projection_dim=16,
  )
  text = transformers.LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    eos_token_id=2,
  )
  args = dict(image_token_index=IMAGE, video_token_index=VIDEO, image_grid_pinpoints=PINPOINTS)
  args.update(kw)
  return transformers.LlavaNextVideoConfig(vision_config=vision, text_config=text, **args)


def _save_hf(path, seed=0, **kw):
  torch.manual_seed(seed)
  model = transformers.LlavaNextVideoForConditionalGeneration(_hf_config(**kw)).eval()
  with torch.no_grad():  # image_newline and the pooler conv start at zero/random; make all random
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  model.save_pretrained(path)
  return model


def _positions(mask):
  return torch.tensor(np.where(mask > 0, np.cumsum(mask, 1) - 1, 1))


def _torch_logits(model, ids, mask, **media):
  media = {k: torch.tensor(np.asarray(v)) for k, v in media.items() if v is not None}
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      position_ids=_positions(mask),
      **media,
    ).logits.numpy()


def _video_batch(config, rng, frames=3, batch=2):
  n = frames * config.video_tokens_per_frame()
  ids = np.concatenate(
    [rng.integers(3, 90, (batch, 5)), np.full((batch, n), VIDEO), rng.integers(3, 90, (batch, 4))],
    1,
  )
  mask = np.ones_like(ids)
  mask[-1, :2] = 0  # left padding
  videos = rng.standard_normal((batch, frames, 3, 28, 28)).astype(np.float32)
  return ids, mask, videos


def _image_batch(config, rng, sizes=((40, 70), (60, 30))):
  images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
  batch = vp.preprocess_images(
    images, shortest_edge=28, crop_size=28, image_grid_pinpoints=PINPOINTS
  )
  rows = [
    np.concatenate([[5, 6], np.full(config.image_tokens(s), IMAGE), [7, 8, 9]]) for s in sizes
  ]
  width = max(map(len, rows))
  ids = np.stack([np.pad(r, (width - len(r), 0)) for r in rows])
  mask = np.stack([np.pad(np.ones(len(r), np.int64), (width - len(r), 0)) for r in rows])
  return ids, mask, batch


@nnx.jit(static_argnames=("image_sizes",))
def _jit_logits(model, ids, mask, pixel_values, image_sizes, pixel_values_videos):
  return model(
    ids,
    mask,
    pixel_values=pixel_values,
    image_sizes=image_sizes,
    pixel_values_videos=pixel_values_videos,
  ).logits


def _logits(model, ids, mask, *, pixel_values=None, image_sizes=None, pixel_values_videos=None):
  """Our logits through one jitted call (far fewer compilations than op-by-op eager mode)."""
  sizes = None if image_sizes is None else tuple(map(tuple, np.asarray(image_sizes).tolist()))
  return np.asarray(
    _jit_logits(
      model, jnp.asarray(ids), jnp.asarray(mask), pixel_values, sizes, pixel_values_videos
    )
  )


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("llava"))
  ref = _save_hf(path)
  return path, ref, hf.from_pretrained(path)


# ------------------------------------------------------------------------------------- parity


# (-2, "average") is the shared fixture's config (the video+text and image tests below).
@pytest.mark.parametrize("layer,mode", [(-1, "max"), ([0, -1], "average"), (-2, "conv")])
def test_video_logits_match_transformers(tmp_path, layer, mode):
  ref = _save_hf(str(tmp_path), vision_feature_layer=layer, spatial_pool_mode=mode)
  model = hf.from_pretrained(str(tmp_path))
  assert model.config.spatial_pool_mode == mode
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(1))
  want = _torch_logits(ref, ids, mask, pixel_values_videos=videos)
  got = _logits(model, ids, mask, pixel_values_videos=videos)
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def test_image_logits_match_transformers(pair):
  _, ref, model = pair
  ids, mask, batch = _image_batch(model.config, np.random.default_rng(2))
  want = _torch_logits(ref, ids, mask, **batch)
  got = _logits(model, ids, mask, **batch)
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def test_video_and_text_batches_match_transformers(pair):
  _, ref, model = pair
  rng = np.random.default_rng(3)
  ids, mask, videos = _video_batch(model.config, rng, frames=2, batch=1)
  text = rng.integers(3, 90, (1, ids.shape[1]))  # a text-only row beside the video row
  ids, mask = np.concatenate([ids, text]), np.concatenate([mask, np.ones_like(text)])
  want = _torch_logits(ref, ids, mask, pixel_values_videos=videos)
  got = _logits(model, ids, mask, pixel_values_videos=videos)
  assert np.abs(got - want)[mask > 0].max() < 1e-4
  text_only = _logits(model, text, np.ones_like(text))
  assert np.abs(text_only - _torch_logits(ref, text, np.ones_like(text))).max() < 1e-4


def test_full_strategy_errors_are_clear(pair):
  # 'full' keeps the class token, so neither video pooling nor any-res tiles see a square grid;
  # transformers fails with a shape error, we name the option.
  import dataclasses

  _, _, model = pair
  full = nnx.clone(model)
  full.config = dataclasses.replace(model.config, vision_feature_select_strategy="full")
  with pytest.raises(ValueError, match="square patch grid, got 17 tokens per frame"):
    full.get_video_features(np.zeros((1, 1, 3, 28, 28), np.float32))
  with pytest.raises(ValueError, match="any-res image tiles give 17 tokens each"):
    full.get_image_features(np.zeros((1, 3, 3, 28, 28), np.float32), [(28, 40)])
  assert full.config.image_tokens((28, 28)) == model.config.image_tokens((28, 28)) + 1


def test_greedy_generation_matches_transformers(pair):
  _, ref, model = pair
  rng = np.random.default_rng(5)
  ids, mask, videos = _video_batch(model.config, rng)
  out = lnv.generate(
    model, ids, mask, pixel_values_videos=videos, max_new_tokens=6, eos_token_id=-1, pad_token_id=0
  )
  with torch.no_grad():
    want = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      pixel_values_videos=torch.tensor(videos),
      max_new_tokens=6,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    ).numpy()[:, ids.shape[1] :]
  np.testing.assert_array_equal(np.asarray(out.sequences), want)
  # a caller's kept splits (the experts' LLaVA on fixed weights) give the same tokens
  kept = lnv.generate(
    model,
    ids,
    mask,
    pixel_values_videos=videos,
    max_new_tokens=6,
    eos_token_id=-1,
    pad_token_id=0,
    splits=lnv.generation_splits(model),
  )
  np.testing.assert_array_equal(np.asarray(kept.sequences), want)


def test_generation_compiles_once_per_bucket(pair):
  _, _, model = pair
  rng = np.random.default_rng(6)
  ids, mask, videos = _video_batch(model.config, rng)
  lnv.generate(model, ids, mask, pixel_values_videos=videos, max_new_tokens=3, eos_token_id=-1)
  merges, decodes = lnv.merge_jit._cache_size(), generate_lib.decode_jit._cache_size()
  longer = np.concatenate([ids[:, :1], ids], 1)  # 1 token longer, same prompt bucket
  lnv.generate(
    model,
    longer,
    np.ones_like(longer),
    pixel_values_videos=videos,
    max_new_tokens=3,
    eos_token_id=-1,
  )
  assert (lnv.merge_jit._cache_size(), generate_lib.decode_jit._cache_size()) == (merges, decodes)


# ------------------------------------------------------------------------------- HF / Orbax I/O


def test_reads_both_key_layouts(pair, tmp_path):
  path, ref, model = pair
  tensors, _ = read_tensors(path)
  # transformers 5 writes the older layout: language_model.model.*, vision_tower.*. Exports
  # use the released checkpoints' (vision_tower.vision_model.*), which 4.45 reads too.
  assert "language_model.lm_head.weight" in tensors and "image_newline" in tensors
  hf.save_pretrained(model, str(tmp_path / "out"))
  exported, _ = read_tensors(str(tmp_path / "out"))
  released = {k.replace("vision_tower.", "vision_tower.vision_model.", 1) for k in tensors}
  assert set(exported) == released
  current = to_current_layout(str(tmp_path / "out"), str(tmp_path / "current"))
  assert (
    "lm_head.weight" in current
    and "model.vision_tower.vision_model.embeddings.class_embedding" in current
  )
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(7))
  want = _logits(model, ids, mask, pixel_values_videos=videos)
  for folder in ("out", "current"):
    again = hf.from_pretrained(str(tmp_path / folder))
    np.testing.assert_allclose(
      _logits(again, ids, mask, pixel_values_videos=videos), want, atol=1e-6
    )


def test_export_loads_in_transformers_with_same_logits(pair, tmp_path):
  _, _, model = pair
  hf.save_pretrained(model, str(tmp_path))
  loaded, info = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(
    str(tmp_path), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(8))
  want = _torch_logits(loaded.eval(), ids, mask, pixel_values_videos=videos)
  got = _logits(model, ids, mask, pixel_values_videos=videos)
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def test_orbax_convert_export_cli(pair, tmp_path):
  from aotd_jax.hf.__main__ import main

  path, ref, model = pair
  assert main(["convert", "--hf_dir", path, "--orbax_dir", str(tmp_path / "orbax")]) == 0
  assert (
    main(["export", "--orbax_dir", str(tmp_path / "orbax"), "--hf_dir", str(tmp_path / "hf")]) == 0
  )
  loaded = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(
    str(tmp_path / "hf")
  ).eval()
  ids, mask, batch = _image_batch(model.config, np.random.default_rng(9))
  want = _torch_logits(ref, ids, mask, **batch)
  assert np.abs(_torch_logits(loaded, ids, mask, **batch) - want).max() < 1e-5


def test_bad_checkpoints_are_named(pair, tmp_path):
  path, _, _ = pair
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg["spatial_pool_mode"] = "median"
  os.makedirs(tmp_path / "bad")
  json.dump(cfg, open(tmp_path / "bad" / "config.json", "w"))
  with pytest.raises(
    CheckpointError, match=r"config.json: .*spatial_pool_mode='median' is not supported"
  ):
    hf.from_pretrained(str(tmp_path / "bad"))
  cfg["spatial_pool_mode"] = "average"
  cfg["vision_config"]["model_type"] = "siglip_vision_model"
  json.dump(cfg, open(tmp_path / "bad" / "config.json", "w"))
  with pytest.raises(CheckpointError, match="vision_config.model_type 'siglip_vision_model'"):
    hf.from_pretrained(str(tmp_path / "bad"))


# --------------------------------------------------------------------------------- errors


def test_mismatched_video_tokens_are_reported(pair):
  _, _, model = pair
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(10))
  short = ids[:, 1:]
  short[:, 4] = 7  # drop one video token per row
  with pytest.raises(
    ValueError,
    match=r"input_ids hold 22 video tokens .* give 24 features "
    r"\(2 clip\(s\) x 3 frames x 4 tokens per frame\)",
  ):
    model(short, mask[:, 1:], pixel_values_videos=videos)
  with pytest.raises(ValueError, match="input_ids hold 22 video tokens"):
    lnv.generate(model, short, mask[:, 1:], pixel_values_videos=videos, max_new_tokens=2)
  ids2, mask2, batch = _image_batch(model.config, np.random.default_rng(11))
  with pytest.raises(ValueError, match="image features and image tokens do not match"):
    model(ids2[:, 3:], mask2[:, 3:], **batch)


def test_wrong_frame_shapes_are_reported(pair):
  _, _, model = pair
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(12))
  with pytest.raises(
    ValueError,
    match=r"pixel_values_videos must have shape \(batch, frames, 3, 28, 28\).*"
    r"got \(2, 3, 28, 28, 3\)",
  ):
    model(ids, mask, pixel_values_videos=videos.transpose(0, 1, 3, 4, 2))
  with pytest.raises(ValueError, match=r"got \(6, 3, 28, 28\)"):
    model(ids, mask, pixel_values_videos=videos.reshape(6, 3, 28, 28))
  ids2, mask2, batch = _image_batch(model.config, np.random.default_rng(13))
  with pytest.raises(ValueError, match="pixel_values must have shape"):
    model(ids2, mask2, pixel_values=batch["pixel_values"][:, :2], image_sizes=batch["image_sizes"])
  with pytest.raises(ValueError, match="pixel_values need image_sizes"):
    model(ids2, mask2, pixel_values=batch["pixel_values"])


def test_bad_configs_are_reported():
  base = hf.registry.adapter_for("LlavaNextVideoForConditionalGeneration").config_from_hf(
    _hf_config().to_dict()
  )
  import dataclasses

  with pytest.raises(
    ValueError, match="spatial_pool_mode='bilinear' is not supported; use one of average, max, conv"
  ):
    dataclasses.replace(base, spatial_pool_mode="bilinear")
  with pytest.raises(
    ValueError, match="vision_feature_select_strategy must be 'default' or 'full'"
  ):
    dataclasses.replace(base, vision_feature_select_strategy="cls")
  with pytest.raises(ValueError, match="vision_feature_layer -4 is out of range for a 2-layer"):
    dataclasses.replace(base, vision_feature_layer=-4)
  with pytest.raises(ValueError, match="'conv' takes one vision_feature_layer"):
    dataclasses.replace(base, spatial_pool_mode="conv", vision_feature_layer=[-2, -1])


# ------------------------------------------------------------------- training options, mesh


def _loss(model, batch):
  logits = model(
    batch["input_ids"], batch["attention_mask"], pixel_values_videos=batch["pixel_values_videos"]
  ).logits
  targets = jnp.roll(batch["input_ids"], -1, axis=1)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits[:, :-1], targets[:, :-1]
  ).mean(), logits


def test_freeze_vision_tower_filter_and_gradients(pair):
  _, _, model = pair
  import dataclasses

  frozen = nnx.clone(model)
  frozen.options = dataclasses.replace(model.options, freeze_vision_tower=True)
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(14))
  batch = dict(
    input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values_videos=videos
  )
  trainable = nnx.state(frozen, lnv.trainable_filter(frozen.options))
  assert not any("vision_tower" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable))
  assert any(
    "vision_tower" in "/".join(map(str, p))
    for p, _ in nnx.to_flat_state(nnx.state(model, lnv.trainable_filter(model.options)))
  )
  grads = nnx.jit(nnx.grad(lambda m, b: _loss(m, b)[0]))(frozen, batch)
  tower = jax.tree.leaves(nnx.state(grads.vision_tower))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in tower)
  assert float(jnp.abs(grads.multi_modal_projector.linear_1.kernel[...]).max()) > 0


def test_bf16_and_remat(pair):
  path, _, model = pair
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(15))
  want = _logits(model, ids, mask, pixel_values_videos=videos)
  import dataclasses

  options = dataclasses.replace(model.options, remat="full")
  remat = nnx.eval_shape(
    lambda: lnv.LlavaNextVideoForConditionalGeneration(
      model.config, options=options, rngs=nnx.Rngs(0)
    )
  )
  # one switch for the whole model
  assert remat.vision_tower.options.remat_enabled and remat.language_model.options.remat_enabled
  nnx.update(remat, nnx.state(model))
  got = nnx.jit(
    lambda m: m(jnp.asarray(ids), jnp.asarray(mask), pixel_values_videos=videos).logits
  )(remat)
  assert np.abs(np.asarray(got) - want).max() < 1e-4
  bf16 = hf.from_pretrained(path, dtype=jnp.bfloat16)
  assert bf16.multi_modal_projector.linear_1.kernel[...].dtype == jnp.bfloat16
  logits = _jit_logits(bf16, jnp.asarray(ids), jnp.asarray(mask), None, None, videos)
  assert logits.dtype == jnp.bfloat16
  assert np.abs(np.asarray(logits, np.float32) - want).max() < 0.1


def test_weights_carry_logical_axes(pair):
  path, _, model = pair
  meta = model.multi_modal_projector.linear_1.kernel.get_metadata()
  assert (meta.get("out_sharding") or meta.get("sharding")) == ("embed", "mlp")
  assert model.image_newline.get_metadata().get("out_sharding") == ("embed",)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  placed = hf.from_pretrained(path, mesh=mesh)  # loads straight onto the mesh
  P = jax.sharding.PartitionSpec
  assert placed.multi_modal_projector.linear_1.kernel[...].sharding.spec == P("fsdp", "tensor")
  assert placed.language_model.model.layers[0].mlp.down_proj.kernel[...].sharding.spec == P(
    "tensor", "fsdp"
  )


@pytest.mark.slow  # two SPMD compilations on 8 host devices
def test_mesh_forward_and_train_step_match_one_device(pair):
  _, _, model = pair
  assert len(jax.devices()) >= 8, "conftest forces 8 host devices"
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(16), frames=1, batch=4)
  batch = dict(
    input_ids=jnp.asarray(ids),
    attention_mask=jnp.asarray(mask),
    pixel_values_videos=jnp.asarray(videos),
  )
  check_mesh_train_step(model, batch, _loss)


def check_mesh_train_step(model, batch, loss_fn):
  """One SGD step of `loss_fn(model, batch) -> (loss, logits)` on one device and on a 2x2x2
  (data, fsdp, tensor) mesh of host devices: logits, loss and updated weights agree."""

  def run(m, b):
    # SGD: the update is the gradient itself (Adam's g/|g| would amplify float-order noise
    # in near-zero gradients far past any tolerance).
    opt = nnx.Optimizer(m, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt, b):
      (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, b)
      opt.update(m, grads)
      return logits, loss

    logits, loss = step(m, opt, b)
    return np.asarray(logits), float(loss), jax.tree.map(np.asarray, nnx.state(m, nnx.Param))

  single = run(nnx.clone(model), batch)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with jax.set_mesh(mesh), spmd.logical_axis_rules(sharding.DEFAULT_RULES):
    sharded_model = sharding.shard_model(nnx.clone(model), mesh)
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    sharded = run(sharded_model, {k: jax.device_put(v, spec) for k, v in batch.items()})
  np.testing.assert_allclose(sharded[0], single[0], atol=1e-5)
  assert abs(sharded[1] - single[1]) < 1e-5
  for a, b in zip(jax.tree.leaves(sharded[2]), jax.tree.leaves(single[2])):
    np.testing.assert_allclose(a, b, atol=1e-5)
