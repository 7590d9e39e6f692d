"""Qwen2-VL against transformers' PyTorch `Qwen2VLForConditionalGeneration` (and its vision
tower) on random tiny configs."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from aotd_jax.hf import qwen2_vl as qwen2_vl_hf
from aotd_jax.hf.mapping import import_params
from aotd_jax.models import qwen2_vl

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VISION = dict(depth=2, embed_dim=32, hidden_size=24, num_heads=4, patch_size=4,
              spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)


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
  rules = [dataclasses.replace(r, hf=r.hf.lstrip("."), flax=r.flax.lstrip("/"))
           for r in qwen2_vl_hf.vision_rules(cfg, "", "")]
  tensors = {k: v.numpy() for k, v in ref.state_dict().items()}
  return ref, import_params(model, rules, tensors, {}, source="test")


@pytest.mark.parametrize("grid", [[[1, 4, 6], [2, 2, 4], [3, 4, 4]], [[2, 4, 4], [2, 4, 4]]],
                         ids=["mixed_sizes", "same_sizes"])
@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_vision_tower_matches_transformers(vision_pair, grid, cpu_kernels):
  ref, model = vision_pair
  model = qwen2_vl.with_vision_options(model, cpu_kernels=cpu_kernels)
  grid = np.asarray(grid)
  n = int(grid.prod(-1).sum())
  px = np.random.RandomState(0).randn(n, 3 * 2 * 4 * 4).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.tensor(px), grid_thw=torch.tensor(grid)).pooler_output.numpy()
  got = np.asarray(model(px, grid))
  assert got.shape == want.shape == (n // 4, 24)
  assert np.abs(got - want).max() < 1e-4
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
