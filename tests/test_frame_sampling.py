"""`frame_sampling`: which N frames of a video (or window) the agent, the trainer and the
evaluation take: "ours" (both ends, transformers' linspace) or "official" (the AoTD release's
`np.linspace(0, vlen, N, endpoint=False).astype(int)`, cot_construction.py, train.py and
eval_nextqa.py); the real configs use the official one at every stage, the toy world ours."""

import numpy as np
import pytest

from aotd_jax.data import video, video_processing

FPS = 10
NUM_FRAMES = 50  # 5 s; frame i is grey level 5 * i
PATHS = "owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://127.0.0.1:9/v1"


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("fs") / "v.mp4"
  frames = (5 * np.arange(NUM_FRAMES, dtype=np.uint8))[:, None, None, None] * np.ones(
    (1, 16, 16, 3), np.uint8
  )
  video.write_video(path, frames, FPS)
  return str(path)


@pytest.mark.parametrize("vlen,n", [(50, 8), (50, 32), (300, 32), (1237, 32), (20, 32), (1, 4)])
def test_official_is_the_release_formula_and_ours_is_unchanged(vlen, n):
  official = video_processing.sample_frame_indices(vlen, n, sampling="official")
  np.testing.assert_array_equal(official, np.linspace(0, vlen, n, endpoint=False).astype(int))
  ours = video_processing.sample_frame_indices(vlen, n)
  np.testing.assert_array_equal(ours, np.linspace(0, vlen - 1, n).astype(int))
  # through the decoder's sampler, the whole video
  np.testing.assert_array_equal(video.sample_indices(vlen, FPS, n, sampling="official"), official)
  np.testing.assert_array_equal(video.sample_indices(vlen, FPS, n), ours)
  if vlen > n:
    assert official[0] == 0 and official[-1] < vlen - 1 and ours[-1] == vlen - 1


def test_a_window_is_sampled_by_the_same_rule():
  # 1 s .. 3 s at 10 fps: frames 10..29
  official = video.sample_indices(NUM_FRAMES, FPS, 8, 1.0, 3.0, sampling="official")
  np.testing.assert_array_equal(official, 10 + np.linspace(0, 20, 8, endpoint=False).astype(int))
  np.testing.assert_array_equal(official, [10, 12, 15, 17, 20, 22, 25, 27])
  ours = video.sample_indices(NUM_FRAMES, FPS, 8, 1.0, 3.0)
  np.testing.assert_array_equal(ours, np.linspace(10, 29, 8).astype(int))


def test_a_bad_value_is_named(clip_path):
  with pytest.raises(ValueError, match="frame_sampling='endpoint' is not one of"):
    video_processing.sample_frame_indices(10, 4, sampling="endpoint")
  with pytest.raises(ValueError, match="read_frames: frame_sampling='endpoint'"):
    video.read_frames(clip_path, 4, sampling="endpoint")


def test_read_frames_decodes_the_official_frames(clip_path):
  cache = video.FrameCache()
  got = video.read_frames(clip_path, 8, sampling="official", cache=cache)
  want = np.linspace(0, NUM_FRAMES, 8, endpoint=False).astype(int)
  np.testing.assert_allclose(got.reshape(8, -1).mean(1), 5 * want, atol=3)
  # the cache keeps the two samplings apart
  ours = video.read_frames(clip_path, 8, cache=cache)
  np.testing.assert_allclose(
    ours.reshape(8, -1).mean(1), 5 * np.linspace(0, NUM_FRAMES - 1, 8).astype(int), atol=3
  )
  assert cache.misses == 2


def test_the_agents_clip_is_the_students_frames(clip_path):
  from experts.clip import question_clip

  clip = question_clip(
    clip_path,
    max_frames=8,
    video_id="v",
    frame_numbers="sampled",
    frame_sampling="official",
  )
  np.testing.assert_array_equal(clip.frames, video.read_frames(clip_path, 8, sampling="official"))
  # the release's clip: fps = 1 / clip_len, clip_len = vlen / (N * fps), so 8 rows span 5 s
  assert clip.fps == pytest.approx(8 / 5.0) and clip.span_seconds == pytest.approx(5.0)
  assert clip.video_id == "v@None-None/8/official"
  ours = question_clip(clip_path, max_frames=8, video_id="v", frame_numbers="sampled")
  assert ours.video_id == "v@None-None/8" and ours.fps == pytest.approx(8 / 5.0)
  with pytest.raises(ValueError, match="frame_sampling='all' not in"):
    question_clip(clip_path, frame_sampling="all")


def test_the_student_pipeline_and_evaluation_pass_it_to_the_decoder(monkeypatch):
  from aotd_jax.data import pipeline
  from aotd_jax.eval import student as student_eval

  seen = []

  def read_frames(path, n, **kw):
    seen.append(kw["sampling"])
    if len(seen) == 1:
      raise video.VideoDecodeError(path, "stop here")
    return np.zeros((n, 8, 8, 3), np.uint8)

  monkeypatch.setattr(video, "read_frames", read_frames)
  prepare = pipeline.PrepareSample(
    None, pipeline.PipelineConfig(batch_size=1, num_frames=2, frame_sampling="official")
  )
  ex = {"qid": "q", "video_path": "v.mp4", "start": None, "end": None}
  assert "stop here" in prepare(ex)[pipeline.SKIP]
  record = type("R", (), {"video_id": "v", "meta": {}, "start": None, "end": None})()
  pixels = student_eval._pixels(
    [record],
    8,
    video_root="",
    video_ext=".mp4",
    num_frames=2,
    decode_size=None,
    frames_fn=None,
    frame_sampling="official",
  )
  assert pixels.shape[:2] == (1, 2) and seen == ["official", "official"]


def test_real_configs_take_the_official_frames_at_every_stage():
  """The CoT job, the trainer and launch.evaluate's defaults agree: the CoTs and the student
  see the same frames. The toy world keeps ours."""
  from absl import flags

  import launch.evaluate  # noqa: F401  (defines the flags)
  from aotd_jax.train import config_check, data as train_data
  from configs.cot import nextqa, star
  from configs.distill import lnv7b, onevision7b, qwen2vl7b
  from configs.toyworld import cot as toy_cot, distill as toy_distill
  from launch import generate_cots

  cots = [
    star.get_config(f"ann=a.json,videos=v,{PATHS}"),
    nextqa.get_config(f"ann=a.csv,videos=v,{PATHS}"),
  ]
  assert {c.frame_sampling for c in cots} == {"official"}
  assert cots[0].data.read_kwargs.window == "whole"
  _, identity, _ = generate_cots.provenance(cots[0])  # the CoT manifest's identity
  assert identity["frame_sampling"] == "official"
  assert identity["data"]["read_kwargs"]["window"] == "whole"
  for module in (lnv7b, onevision7b, qwen2vl7b):
    for target in ("h100x8", "tpu_v5p_128"):
      d = module.get_config(target).data
      assert (d.window, d.frame_sampling) == ("whole", "official"), (module.__name__, target)
  assert (flags.FLAGS["window"].default, flags.FLAGS["frame_sampling"].default) == (
    "whole",
    "official",
  )
  # the toy world: ours (its configs leave the keys to the trainer's defaults)
  assert toy_cot.get_config().frame_sampling == "ours"
  toy = toy_distill.get_config()
  assert toy.data.get("window") is None and toy.data.get("frame_sampling") is None
  assert train_data.DATA_DEFAULTS == {"window": "question", "frame_sampling": "ours"}
  # bad values are named
  with pytest.raises(ValueError, match=r"configs/cot/star\.py: frame_sampling='x'"):
    star.get_config(f"ann=a.json,videos=v,{PATHS},frame_sampling=x")
  cfg = lnv7b.get_config()
  cfg.data.frame_sampling, cfg.data.window = "x", "clip"
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check_train_config(cfg)
  assert "--config.data.frame_sampling='x'" in str(e.value)
  assert "--config.data.window='clip'" in str(e.value)
