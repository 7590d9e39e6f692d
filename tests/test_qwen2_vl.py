"""Qwen2-VL against transformers' PyTorch `Qwen2VLForConditionalGeneration` (and its vision
tower) on random tiny configs."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax import hf, sharding
from aotd_jax.hf import qwen2_vl as qwen2_vl_hf
from aotd_jax.hf.io import CheckpointError, read_tensors
from aotd_jax.hf.mapping import import_params
from aotd_jax.models import qwen2_vl
from aotd_jax.models.options import with_options
from tests.test_llava_next_video import check_mesh_train_step

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VISION = dict(
  depth=2,
  embed_dim=32,
  hidden_size=24,
  num_heads=4,
  patch_size=4,
  spatial_merge_size=2,
  temporal_patch_size=2,
  mlp_ratio=2,
)
TEXT = dict(
  vocab_size=128,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  initializer_range=0.2,
  rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 3, 3]),
  bos_token_id=1,
  eos_token_id=2,
  pad_token_id=0,
)
IMAGE, VIDEO, START, END = 100, 101, 102, 103


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield


@pytest.fixture(scope="module")
def vision_pair():
  from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

  torch.manual_seed(0)
  ref = Qwen2VisionTransformerPretrainedModel(transformers.Qwen2VLVisionConfig(**VISION)).eval()
  with torch.no_grad():  # transformers' init leaves biases at zero and norms at one
    for p in ref.parameters():
      p.normal_(0, 0.3)
  cfg = qwen2_vl.Qwen2VLVisionConfig(**VISION)
  model = nnx.eval_shape(lambda: qwen2_vl.Qwen2VisionTransformer(cfg, rngs=nnx.Rngs(0)))
  rules = [
    dataclasses.replace(r, hf=r.hf.lstrip("."), flax=r.flax.lstrip("/"))
    for r in qwen2_vl_hf.vision_rules(cfg, "", "")
  ]
  tensors = {k: v.numpy() for k, v in ref.state_dict().items()}
  return ref, import_params(model, rules, tensors, {}, source="test")


@pytest.mark.parametrize(
  "grid",
  [[[1, 4, 6], [2, 2, 4], [3, 4, 4]], [[2, 4, 4], [2, 4, 4]]],
  ids=["mixed_sizes", "same_sizes"],
)
@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_vision_tower_matches_transformers(vision_pair, grid, cpu_kernels, expect_kernel):
  from aotd_jax.kernels import attention as attention_kernel

  ref, model = vision_pair
  model = with_options(model, cpu_kernels=cpu_kernels)
  grid = np.asarray(grid)
  n = int(grid.prod(-1).sum())
  px = np.random.RandomState(0).randn(n, 3 * 2 * 4 * 4).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.tensor(px), grid_thw=torch.tensor(grid)).pooler_output.numpy()
  with expect_kernel(attention_kernel, attention_kernel.TARGET_FWD, when=cpu_kernels):
    got = np.asarray(model(px, grid))
  assert got.shape == want.shape == (n // 4, 24)
  assert np.abs(got - want).max() < 1e-4
  with expect_kernel(attention_kernel, attention_kernel.TARGET_FWD, when=cpu_kernels):
    jitted = nnx.jit(lambda m, x: m(x, grid))(model, px)  # grid is static: traced pixels only
  assert np.abs(np.asarray(jitted) - want).max() < 1e-4


def test_vision_tower_rejects_bad_inputs(vision_pair):
  _, model = vision_pair
  with pytest.raises(ValueError, match=r"pixel values must have shape \(16, 96\)"):
    model(np.zeros((15, 96), np.float32), [[1, 4, 4]])
  with pytest.raises(ValueError, match="not a multiple of spatial_merge_size"):
    model(np.zeros((12, 96), np.float32), [[1, 3, 4]])
  with pytest.raises(ValueError, match="head dim 6 must be a multiple of 4"):
    qwen2_vl.Qwen2VLVisionConfig(embed_dim=24, num_heads=4)


def test_vision_position_ids_are_block_major():
  pos = qwen2_vl.vision_position_ids([[1, 2, 4]], 2)
  # Two 2x2 blocks: (0,0) (0,1) (1,0) (1,1), then (0,2) (0,3) (1,2) (1,3).
  assert pos.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
  assert qwen2_vl.vision_segments([[3, 2, 4], [1, 4, 4]]) == [8, 8, 8, 16]


# ------------------------------------------------------------------------------ the whole model


def _save_hf(path, **kw):
  torch.manual_seed(0)
  config = transformers.Qwen2VLConfig(
    vision_config={**VISION, "hidden_size": 64},
    text_config=TEXT,
    image_token_id=IMAGE,
    video_token_id=VIDEO,
    vision_start_token_id=START,
    vision_end_token_id=END,
    **kw,
  )
  ref = transformers.Qwen2VLForConditionalGeneration(config).eval()
  with torch.no_grad():  # transformers' init leaves biases at zero and norms at one
    for name, p in ref.named_parameters():
      if name.endswith("bias") or "norm" in name or "ln_q" in name:
        p.normal_(0, 0.3)
      elif "visual" in name:
        p.normal_(0, 0.2)
  ref.save_pretrained(str(path))
  return ref


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("qwen2vl"))
  ref = _save_hf(path)
  return path, ref, hf.from_pretrained(path)


def _media_batch(rng, pads=(3, 0)):
  """Two left-padded rows, each: text, a 3x4x4 video (12 tokens), text, a 1x4x6 image (6), text."""

  def row(pre, post):
    return (
      list(rng.integers(3, 99, pre))
      + [START]
      + [VIDEO] * 12
      + [END]
      + list(rng.integers(3, 99, 3))
      + [START]
      + [IMAGE] * 6
      + [END]
      + list(rng.integers(3, 99, post))
    )

  width = 40
  ids = np.zeros((len(pads), width), np.int64)
  mask = np.zeros_like(ids)
  for i, p in enumerate(pads):
    ids[i, p:] = row(width - 30 - p, 5)
    mask[i, p:] = 1
  media = dict(
    pixel_values=rng.standard_normal((2 * 24, 96)).astype(np.float32),
    image_grid_thw=np.array([[1, 4, 6]] * 2),
    pixel_values_videos=rng.standard_normal((2 * 48, 96)).astype(np.float32),
    video_grid_thw=np.array([[3, 4, 4]] * 2),
  )
  return ids, mask, media


def _types(ids):
  return np.where(ids == IMAGE, 1, np.where(ids == VIDEO, 2, 0))


def _torch(media):
  return {k: torch.tensor(np.asarray(v)) for k, v in media.items()}


def _torch_logits(model, ids, mask, media):
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      mm_token_type_ids=torch.tensor(_types(ids)),
      **_torch(media),
    ).logits.numpy()


def _frames_batch(rng, batch=2, frames=3):
  """Rows of text + one clip of `frames` 16x16 frames (grid (ceil(T/2), 4, 4)) + text."""
  n = -(-frames // 2) * 4
  ids = np.concatenate(
    [
      rng.integers(3, 99, (batch, 5)),
      np.full((batch, 1), START),
      np.full((batch, n), VIDEO),
      np.full((batch, 1), END),
      rng.integers(3, 99, (batch, 6)),
    ],
    1,
  )
  mask = np.ones_like(ids)
  mask[-1, :2] = 0
  videos = rng.standard_normal((batch, frames, 3, 16, 16)).astype(np.float32)
  return ids, mask, videos


def test_config_and_token_counts(pair):
  _, _, model = pair
  cfg = model.config
  assert isinstance(model, qwen2_vl.Qwen2VLForConditionalGeneration)
  assert cfg.text_config.mrope_section == (2, 3, 3) and cfg.text_config.qkv_bias
  assert cfg.text_config.rms_norm_eps == 1e-5 and cfg.text_config.rope_theta == 1e4
  assert cfg.grid(3, 16, 16) == (2, 4, 4) and cfg.tokens((2, 4, 4)) == 8
  big = qwen2_vl.qwen2_vl_7b_config()  # 16 frames of 336 x 336: 8 x (24 x 24 patches / 4)
  assert big.video_tokens(16) == 1152 and big.video_token == "<|video_pad|>"


def test_rope_index_matches_transformers(pair):
  _, ref, model = pair
  ids, mask, media = _media_batch(np.random.default_rng(0))
  want, want_deltas = ref.model.get_rope_index(
    torch.tensor(ids),
    torch.tensor(_types(ids)),
    torch.tensor(media["image_grid_thw"]),
    torch.tensor(media["video_grid_thw"]),
    torch.tensor(mask),
  )
  pos, deltas = qwen2_vl.rope_index(
    model.config, ids, mask, media["image_grid_thw"], media["video_grid_thw"]
  )
  np.testing.assert_array_equal(pos, want.numpy())
  np.testing.assert_array_equal(deltas, want_deltas.numpy().ravel())
  # The in-graph version for same-grid clips agrees with it.
  ids, mask, _ = _frames_batch(np.random.default_rng(1))
  grids = ((2, 4, 4),) * 2
  uniform = qwen2_vl.rope_index_uniform(
    model.config, jnp.asarray(ids), jnp.asarray(mask), VIDEO, grids[0]
  )
  np.testing.assert_array_equal(
    np.asarray(uniform), qwen2_vl.rope_index(model.config, ids, mask, None, grids)[0]
  )


def test_image_and_video_logits_match_transformers(pair):
  _, ref, model = pair
  ids, mask, media = _media_batch(np.random.default_rng(2))
  want = _torch_logits(ref, ids, mask, media)
  got = np.asarray(model(ids, mask, **media).logits)
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def transformers_video_patchify():
  """transformers' `Qwen2VLVideoProcessor.patchify` (torch only), read from its source: the
  module itself imports torchvision, which this environment does not have."""
  import ast
  import transformers.models.qwen2_vl as package

  path = os.path.join(os.path.dirname(package.__file__), "video_processing_qwen2_vl.py")
  tree = ast.parse(open(path).read())
  cls = next(
    n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor"
  )
  fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
  namespace = {"torch": torch}
  exec(compile(ast.Module([fn], []), path, "exec"), namespace)  # pylint: disable=exec-used
  return namespace["patchify"]


def test_video_frames_path_matches_transformers(pair):
  """(B, T, C, H, W) frames, patchified in the graph as transformers' video processor does,
  with the M-RoPE positions computed under jit: the trainer's inputs."""
  _, ref, model = pair
  ids, mask, videos = _frames_batch(np.random.default_rng(3))
  theirs, t, h, w = transformers_video_patchify()(None, torch.tensor(videos), 4, 2, 2)
  patches, grid = qwen2_vl.patchify_frames(model.config, jnp.asarray(videos))
  assert grid == (t, h, w) == (2, 4, 4)
  np.testing.assert_array_equal(np.asarray(patches), theirs.reshape(-1, 96).numpy())
  media = dict(
    pixel_values_videos=theirs.reshape(-1, 96).numpy(), video_grid_thw=np.array([[2, 4, 4]] * 2)
  )
  want = _torch_logits(ref, ids, mask, media)
  jitted = nnx.jit(lambda m, i, a, v: m(i, a, pixel_values_videos=v).logits)
  got = np.asarray(jitted(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(videos)))
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def test_greedy_generation_with_video_matches_transformers(pair):
  _, ref, model = pair
  ids, mask, media = _media_batch(np.random.default_rng(4))
  with torch.no_grad():
    out = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      mm_token_type_ids=torch.tensor(_types(ids)),
      **_torch(media),
      max_new_tokens=12,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    )
  want = out[:, ids.shape[1] :].numpy()
  assert len(np.unique(want)) > 3  # a sequence that exercises the positions, not one token
  got = qwen2_vl.generate(model, ids, mask, max_new_tokens=12, eos_token_id=-1, **media)
  np.testing.assert_array_equal(np.asarray(got.sequences), want)
  # Frames in the prompt (the evaluation's inputs) generate as the processor's patches do.
  ids, mask, videos = _frames_batch(np.random.default_rng(5))
  patches = np.asarray(qwen2_vl.patchify_frames(model.config, jnp.asarray(videos))[0])
  media = dict(pixel_values_videos=patches, video_grid_thw=np.array([[2, 4, 4]] * 2))
  with torch.no_grad():
    out = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      mm_token_type_ids=torch.tensor(_types(ids)),
      **_torch(media),
      max_new_tokens=8,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    )
  got = qwen2_vl.generate(
    model, ids, mask, pixel_values_videos=videos, max_new_tokens=8, eos_token_id=-1
  )
  np.testing.assert_array_equal(np.asarray(got.sequences), out[:, ids.shape[1] :].numpy())


# ------------------------------------------------------------------------------------ HF I/O


def test_reads_both_key_layouts_and_exports_for_transformers(pair, tmp_path):
  path, ref, model = pair
  tensors, _ = read_tensors(path)
  # transformers 5 saves the released checkpoints' layout: visual.*, model.layers.*
  assert (
    "visual.patch_embed.proj.weight" in tensors
    and "model.layers.0.self_attn.q_proj.bias" in tensors
  )
  ids, mask, media = _media_batch(np.random.default_rng(6))
  ours = np.asarray(model(ids, mask, **media).logits)
  # Export writes the released layout (visual.*, model.*; what transformers 5 saves too) and
  # the released flat config.json, which transformers and we read back.
  hf.save_pretrained(model, str(tmp_path / "out"))
  exported, _ = read_tensors(str(tmp_path / "out"))
  assert set(exported) == set(tensors)
  written = json.load(open(tmp_path / "out" / "config.json"))
  assert "text_config" not in written and written["rope_scaling"]["type"] == "mrope"
  again = hf.from_pretrained(str(tmp_path / "out"))
  assert again.config == model.config
  np.testing.assert_allclose(np.asarray(again(ids, mask, **media).logits), ours, atol=1e-6)
  loaded, info = transformers.Qwen2VLForConditionalGeneration.from_pretrained(
    str(tmp_path / "out"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  want = _torch_logits(ref, ids, mask, media)
  theirs = _torch_logits(loaded.eval(), ids, mask, media)
  assert np.abs(theirs - want).max() < 1e-6
  assert np.abs(ours - theirs)[mask > 0].max() < 1e-4
  # The released checkpoints' config.json: text fields at the top, an "mrope" rope_scaling.
  cfg = json.load(open(os.path.join(path, "config.json")))
  text = dict(cfg.pop("text_config"))
  rope = text.pop("rope_parameters")
  vision = dict(cfg["vision_config"], in_chans=3)
  vision.pop("in_channels")
  os.makedirs(tmp_path / "old")
  os.symlink(os.path.join(path, "model.safetensors"), tmp_path / "old" / "model.safetensors")
  json.dump(
    {
      **cfg,
      **text,
      "model_type": "qwen2_vl",
      "vision_config": vision,
      "rope_theta": rope["rope_theta"],
      "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
    },
    open(tmp_path / "old" / "config.json", "w"),
  )
  assert hf.from_pretrained(str(tmp_path / "old")).config == model.config


def test_bad_checkpoints_and_inputs_are_named(pair, tmp_path):
  path, _, model = pair
  cfg = json.load(open(os.path.join(path, "config.json")))
  os.makedirs(tmp_path / "bad")
  rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2, 2]}
  for key, value, message in (
    (
      "text_config",
      {**cfg["text_config"], "rope_parameters": rope},
      r"mrope_section \[2, 2, 2\] must be three parts summing to head_dim // 2 = 8",
    ),
    ("text_config", {**cfg["text_config"], "use_sliding_window": True}, "use_sliding_window=true"),
    (
      "vision_config",
      {**cfg["vision_config"], "hidden_size": 32},
      "must equal text_config.hidden_size 64",
    ),
  ):
    json.dump({**cfg, key: value}, open(tmp_path / "bad" / "config.json", "w"))
    with pytest.raises(CheckpointError, match=message):
      hf.from_pretrained(str(tmp_path / "bad"))
  ids, mask, media = _media_batch(np.random.default_rng(7))
  bad = ids.copy()
  bad[np.arange(2), (ids == VIDEO).argmax(1)] = 5  # one video token fewer per row
  with pytest.raises(ValueError, match=r"input_ids hold 22 video tokens .* give 24 features"):
    model(bad, mask, **media)
  with pytest.raises(ValueError, match="H and W multiples of 8"):
    qwen2_vl.patchify_frames(model.config, jnp.zeros((1, 2, 3, 12, 16)))
  with pytest.raises(ValueError, match="grid_thw must be concrete"):
    jax.jit(lambda g: qwen2_vl.vision_segments(g))(jnp.ones((1, 3), jnp.int32))


# ------------------------------------------------------------------------ training machinery


def _loss(model, batch):
  import optax

  logits = model(
    batch["input_ids"], batch["attention_mask"], pixel_values_videos=batch["pixel_values_videos"]
  ).logits
  targets = jnp.roll(batch["input_ids"], -1, axis=1)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits[:, :-1], targets[:, :-1]
  ).mean(), logits


@pytest.mark.slow  # more compilations of the model (bf16, remat); `make test` runs it
def test_bf16_remat_and_frozen_tower(pair):
  path, _, model = pair
  ids, mask, videos = _frames_batch(np.random.default_rng(8))
  batch = dict(
    input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values_videos=videos
  )
  want = np.asarray(nnx.jit(lambda m, b: _loss(m, b)[1])(model, batch))
  options = dataclasses.replace(model.options, remat="full", freeze_vision_tower=True)
  remat = nnx.eval_shape(
    lambda: qwen2_vl.Qwen2VLForConditionalGeneration(
      model.config, options=options, rngs=nnx.Rngs(0)
    )
  )
  assert remat.visual.options.remat_enabled and remat.language_model.options.remat_enabled
  nnx.update(remat, nnx.state(model))
  (_, logits), grads = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))(remat, batch)
  assert np.abs(np.asarray(logits) - want).max() < 1e-4
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(nnx.state(grads.visual)))
  assert float(jnp.abs(grads.language_model.model.layers[0].self_attn.q_proj.bias[...]).max()) > 0
  trainable = nnx.state(remat, qwen2_vl.trainable_filter(options))
  assert not any("visual" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable))
  bf16 = hf.from_pretrained(path, dtype=jnp.bfloat16)
  logits = nnx.jit(lambda m, b: _loss(m, b)[1])(bf16, batch)
  assert logits.dtype == jnp.bfloat16
  assert np.abs(np.asarray(logits, np.float32) - want).max() < 0.1


def test_weights_carry_logical_axes(pair):
  path, _, _ = pair
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  placed = hf.from_pretrained(path, mesh=mesh)
  P = jax.sharding.PartitionSpec
  assert placed.language_model.model.layers[0].self_attn.q_proj.kernel[...].sharding.spec == P(
    "fsdp", "tensor"
  )
  assert placed.visual.blocks[0].attn.qkv.kernel[...].sharding.spec == P("fsdp", "tensor")
  assert placed.visual.merger.mlp[0].kernel[...].sharding.spec == P("fsdp", "tensor")


@pytest.mark.slow  # two SPMD compilations on 8 host devices
def test_mesh_forward_and_train_step_match_one_device(pair):
  _, _, model = pair
  assert len(jax.devices()) >= 8, "conftest forces 8 host devices"
  ids, mask, videos = _frames_batch(np.random.default_rng(9), batch=4, frames=2)
  batch = dict(
    input_ids=jnp.asarray(ids),
    attention_mask=jnp.asarray(mask),
    pixel_values_videos=jnp.asarray(videos),
  )
  check_mesh_train_step(model, batch, _loss)
