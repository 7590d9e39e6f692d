"""Video decoding: seek-based sampling equals a decode-everything reference; windows, fps and
size edge cases; the frame cache; bad files raise a clear error and are counted, not fatal."""

import numpy as np
import pytest

from aotd_jax.data import video as V


def ramp(n: int, size: int = 64) -> np.ndarray:
  """Frame i has red = 16 * (i % 16), green = 16 * (i // 16): the index survives compression."""
  frames = np.zeros((n, size, size, 3), np.uint8)
  frames[..., 0] = ((np.arange(n) % 16) * 16)[:, None, None]
  frames[..., 1] = ((np.arange(n) // 16) * 16)[:, None, None]
  return frames


def decoded_index(frame: np.ndarray) -> int:
  red, green = float(frame[..., 0].mean()), float(frame[..., 1].mean())
  return int(round(green / 16)) * 16 + int(round(red / 16))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = tmp_path_factory.mktemp("videos")
  out = {}
  for name, n, fps in [("pal", 100, 25), ("ntsc", 90, 30000 / 1001), ("slow", 23, 10)]:
    path = d / f"{name}.mp4"
    V.write_video(path, ramp(n), fps)
    out[name] = (str(path), n, fps)
  return out


def test_probe(clips):
  path, n, fps = clips["ntsc"]
  info = V.probe(path)
  assert (
    info.num_frames == n and abs(info.fps - fps) < 1e-6 and (info.width, info.height) == (64, 64)
  )


@pytest.mark.parametrize("name", ["pal", "ntsc", "slow"])
@pytest.mark.parametrize(
  "window", [(None, None), (1.0, 2.6), (0.0, 0.05), (0.9, None), (None, 1.234)]
)
def test_seek_matches_decode_all(clips, name, window):
  path, n, fps = clips[name]
  ref = V.decode_all(path)
  assert len(ref) == n
  start, end = window
  indices = V.sample_indices(n, fps, 8, start, end)
  frames = V.read_frames(path, 8, start=start, end=end)
  np.testing.assert_array_equal(frames, ref[indices])
  np.testing.assert_array_equal(V.read_frames(path, 8, start=start, end=end, seek=False), frames)
  # the pixels say which frame it is: decoding really returned those indices
  assert [decoded_index(f) for f in frames] == list(indices)
  # every index lies in the window
  lo = 0 if start is None else int(np.floor(start * fps + 1e-6))
  assert indices.min() >= min(lo, n - 1)
  if end is not None:
    assert indices.max() < max(np.ceil(end * fps - 1e-6), lo + 1)


def test_sample_indices_edges():
  np.testing.assert_array_equal(V.sample_indices(100, 25, 5), [0, 24, 49, 74, 99])
  # a window of exactly 1 s at 25 fps holds frames 25..49 (frame 50 starts at t = 2.0)
  np.testing.assert_array_equal(V.sample_indices(100, 25, 2, 1.0, 2.0), [25, 49])
  # fewer frames in the window than wanted: indices repeat
  np.testing.assert_array_equal(V.sample_indices(100, 25, 4, 1.0, 1.08), [25, 25, 25, 26])
  # a window past the end collapses onto the last frame; an overrunning end is clipped
  np.testing.assert_array_equal(V.sample_indices(100, 25, 3, 10.0, 12.0), [99, 99, 99])
  np.testing.assert_array_equal(V.sample_indices(100, 25, 2, 3.0, 99.0), [75, 99])
  # zero-length window (start == end): the frame at start
  np.testing.assert_array_equal(V.sample_indices(100, 25, 2, 2.0, 2.0), [50, 50])
  with pytest.raises(ValueError, match="must be positive"):
    V.sample_indices(100, 25, 0)


def test_resize(clips):
  path, n, fps = clips["pal"]
  ref = V.decode_all(path, size=(32, 48))
  frames = V.read_frames(path, 6, start=0.5, end=3.5, size=(32, 48))
  assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames, ref[V.sample_indices(n, fps, 6, 0.5, 3.5)])
  assert V.read_frames(path, 2, size=16).shape == (2, 16, 16, 3)


def test_decode_frames_any_order_and_repeats(clips):
  path, n, _ = clips["pal"]
  ref = V.decode_all(path)
  idx = [99, 3, 50, 50, 0, 13]
  np.testing.assert_array_equal(V.decode_frames(path, idx), ref[idx])
  np.testing.assert_array_equal(V.decode_frames(path, idx, seek_gap=0), ref[idx])
  with pytest.raises(V.VideoDecodeError, match="pal.mp4: frame index out of range"):
    V.decode_frames(path, [n])


def test_cache(clips):
  path, _, _ = clips["pal"]
  cache = V.FrameCache(max_items=2)
  a = V.read_frames(path, 4, start=1.0, end=2.0, cache=cache)
  b = V.read_frames(path, 4, start=1.0, end=2.0, cache=cache)
  assert b is a and cache.hits == 1 and cache.misses == 1
  assert not a.flags.writeable
  V.read_frames(path, 4, start=1.0, end=3.0, cache=cache)  # another window: another key
  V.read_frames(path, 5, start=1.0, end=2.0, cache=cache)  # another N: evicts the first
  assert len(cache) == 2 and cache.misses == 3
  c = V.read_frames(path, 4, start=1.0, end=2.0, cache=cache)
  assert c is not a and cache.misses == 4
  np.testing.assert_array_equal(c, a)
  small = V.FrameCache(max_items=10, max_bytes=a.nbytes)
  V.read_frames(path, 4, cache=small)
  V.read_frames(path, 4, size=32, cache=small)
  assert len(small) == 1


def test_bad_files_raise_and_are_counted(clips, tmp_path):
  good, _, _ = clips["pal"]
  data = open(good, "rb").read()
  (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
  (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
  (tmp_path / "empty.mp4").write_bytes(b"")
  bad = {
    "missing.mp4": "file not found",
    "truncated.mp4": "",
    "corrupt.mp4": "cannot open",
    "empty.mp4": "cannot open",
  }
  for name, why in bad.items():
    with pytest.raises(V.VideoDecodeError, match=f"{name}: {why}") as e:
      V.read_frames(tmp_path / name, 4)
    assert e.value.path == str(tmp_path / name)
  # a loop over a mix of good and bad files keeps going and counts the bad ones
  ok, errors = 0, []
  for path in [good] + [tmp_path / n for n in bad] + [good]:
    try:
      V.read_frames(path, 4, cache=V.FrameCache())
      ok += 1
    except V.VideoDecodeError as e:
      errors.append(e.path)
  assert ok == 2 and len(errors) == 4


def test_truncated_mid_stream(clips, tmp_path):
  """A faststart mp4 (index first) cut short opens, then runs out of frames."""
  import av

  path, n, _ = clips["pal"]
  fast = tmp_path / "fast.mp4"
  with av.open(path) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
    s_in = src.streams.video[0]
    s_out = dst.add_stream_from_template(s_in)
    for packet in src.demux(s_in):
      if packet.dts is None:
        continue
      packet.stream = s_out
      dst.mux(packet)
  data = fast.read_bytes()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[: int(len(data) * 0.6)])
  with pytest.raises(V.VideoDecodeError, match="cut.mp4"):
    V.read_frames(cut, 4)


def test_write_video_rejects_bad_frames(tmp_path):
  with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
    V.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8))


def test_a_folder_of_frames_reads_as_a_video_at_its_rate(tmp_path):
  """MVBench's episodic_reasoning clips are folders of TVQA frames (00001.jpg, ... at 3 per
  second): read with the same window and sampling rules as a video file, frame i covering
  [i / 3, (i + 1) / 3) s; a folder without a rate is not read as frames."""
  import PIL.Image

  clip = tmp_path / "castle_s01e01_seg02_clip_00"
  clip.mkdir()
  for i in range(30):  # 10 s at 3 fps; frame i is filled with grey level 8 * i
    PIL.Image.fromarray(np.full((6, 8, 3), 8 * i, np.uint8)).save(clip / f"{i + 1:05d}.png")
  got = V.read_frame_folder(str(clip), 4, fps=3.0, start=2.0, end=5.0, sampling="official")
  want = V.sample_indices(30, 3.0, 4, 2.0, 5.0, sampling="official")
  assert list(want) == [6, 8, 10, 12]
  assert got.shape == (4, 6, 8, 3) and list(got[:, 0, 0, 0]) == [8 * i for i in want]
  same = V.read_frames(str(clip), 4, start=2.0, end=5.0, sampling="official", folder_fps=3.0)
  np.testing.assert_array_equal(same, got)
  assert V.read_frame_folder(str(clip), 2, fps=3.0, size=4).shape == (2, 4, 4, 3)
  with pytest.raises(V.VideoDecodeError):
    V.read_frames(str(clip), 4)
  (tmp_path / "empty").mkdir()
  with pytest.raises(V.VideoDecodeError, match="a folder without frame images"):
    V.read_frame_folder(str(tmp_path / "empty"), 4, fps=3.0)
