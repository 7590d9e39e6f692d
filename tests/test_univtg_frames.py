"""UniVTG's CLIP frames as the official AoTD makes them (`frame_preprocess="official"`, the real
CoT configs): the whole frame squashed to 224 x 224 with an antialiased bilinear resize (its
`UniVTG/run_on_video/preprocessing.py`: torchvision's `Resize([224, 224])`, /255, CLIP's
mean/std), not CLIP's processor's resize and centre crop. torchvision is not installed here:
the reference is the interpolation torchvision's `Resize` runs on a uint8 tensor
(`torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)`)."""

import numpy as np
import pytest

import experts
from aotd_jax.models import pixel_norms
from experts import random_weights as rw
from experts.backends.univtg import UniVTGGrounder

torch = pytest.importorskip("torch")

CLIP_SIZE = dict(
  image_size=32, patch_size=16, vision_hidden=16, vision_layers=1, vision_heads=2,
  text_hidden=16, text_layers=1, text_heads=2, projection=12, vocab=99, text_length=16,
)  # fmt: skip
SIZE = dict(hidden_dim=32, nheads=4, enc_layers=1, dim_feedforward=48, clip_length=1.0)


def _official(frames: np.ndarray, size: int) -> np.ndarray:
  """The official `Preprocessing()` on (T, H, W, 3) uint8 frames, torchvision's resize done by
  the interpolation it calls."""
  x = torch.from_numpy(frames).permute(0, 3, 1, 2)
  x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
  mean = torch.tensor(pixel_norms.CLIP_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(pixel_norms.CLIP_STD).view(1, 3, 1, 1)
  return ((x / 255.0 - mean) / (std + 1e-8)).numpy()


@pytest.fixture(scope="module")
def grounder_models():
  from flax import nnx

  # shapes only: the tests read the pixels the grounder would feed CLIP, not its outputs
  return nnx.eval_shape(lambda: rw.univtg(SIZE, CLIP_SIZE)), rw.word_tokenize(99, 16)


@pytest.mark.parametrize("hw", [(48, 64), (30, 90), (20, 20)])
def test_official_frames_match_the_official_preprocessing(grounder_models, hw, monkeypatch):
  (model, clip_model), tokenize = grounder_models
  g = UniVTGGrounder(model, clip_model, tokenize, frame_preprocess="official")
  monkeypatch.setattr(g, "_run", lambda part, fn, rows, state: rows)  # the pixels it would run
  frames = np.random.default_rng(hw[0]).integers(0, 256, (4,) + hw + (3,), dtype=np.uint8)
  pixels, pos = g.features(experts.VideoClip(frames, fps=2.0, video_id="v"))
  want = _official(frames[pos], 32)
  # Pillow's and PyTorch's antialiased bilinear kernels round a few pixels one grey level apart
  diff = np.abs(pixels - want)
  assert diff.max() <= 1.0 / 255 / min(pixel_norms.CLIP_STD) + 1e-5
  assert (diff > 1e-4).mean() < 0.02
  # CLIP's processor (resize the short side, crop the centre) is another picture
  g.frame_preprocess = "clip_processor"
  cropped, _ = g.features(experts.VideoClip(frames, fps=2.0, video_id="v"))
  if hw[0] != hw[1]:
    assert np.abs(cropped - want).mean() > 0.05


def test_real_configs_use_the_official_frames_and_the_manifest_says_so(grounder_models):
  from configs.cot import star
  from experts import registry

  paths = "owlv2=o,univtg=u.ckpt,clip=c,llava=l"
  c = star.get_config(f"ann=a.json,videos=v,classes=cls,{paths},llm=http://127.0.0.1:9/v1,model=m")
  assert c.experts.grounder.frame_preprocess == "official"
  from aotd_jax.projects.toyworld import oracle as toyworld_oracle

  toy = registry.default_config()
  assert toy.grounder.frame_preprocess == "clip_processor"
  toy.grounder.kind, toy.grounder.frame_preprocess = "univtg", "official"
  described = registry.describe(toy, plugins=(toyworld_oracle.PLUGIN,))  # what the manifest holds
  assert described["grounder"]["frame_preprocess"] == "official"
  (model, clip_model), tokenize = grounder_models
  with pytest.raises(ValueError, match="frame_preprocess='crop' is not one of"):
    UniVTGGrounder(model, clip_model, tokenize, frame_preprocess="crop")
