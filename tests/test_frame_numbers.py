"""CoT frame references name the student's frames (issue 21): with frame_numbers="sampled" the
agent's clip is exactly the frames the trainer decodes for the window, numbered 0..N-1."""

import numpy as np
import pytest

from aotd_jax.data import video
from experts.clip import question_clip


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
  path = tmp_path_factory.mktemp("fn") / "long.mp4"
  frames = (np.arange(600)[:, None, None, None] % 256).astype(np.uint8) * np.ones(
    (1, 16, 16, 3), np.uint8
  )
  video.write_video(path, frames, 30)  # 20 s; frame i is grey level i % 256
  return str(path)


def test_sampled_clip_is_the_students_frames(long_video):
  clip = question_clip(
    long_video, start=4.0, end=14.0, max_frames=32, video_id="v", frame_numbers="sampled"
  )
  student = video.read_frames(long_video, 32, start=4.0, end=14.0)
  np.testing.assert_array_equal(clip.frames, student)
  assert list(clip.frame_ids) == list(range(32)) and (clip.start_frame, clip.end_frame) == (0, 32)
  # time still reads true seconds: 32 rows over the 10 s window
  assert clip.span_seconds == pytest.approx(10.0, rel=0.01)
  assert clip.video_id == "v@4.0-14.0/32"  # caches never mix two windows' frame 0


def test_source_numbering_is_unchanged(long_video):
  clip = question_clip(long_video, start=4.0, end=14.0, max_frames=32, video_id="v")
  ids = np.arange(120, 420)
  want = ids[np.linspace(0, len(ids) - 1, 32).round().astype(int)]
  np.testing.assert_array_equal(clip.frame_ids, want)
  assert clip.fps == 30.0 and clip.video_id == "v"
  with pytest.raises(ValueError, match="frame_numbers='rows'"):
    question_clip(long_video, frame_numbers="rows")


def test_real_configs_number_frames_as_the_student():
  from configs.cot import star
  from configs.distill import lnv7b

  c = star.get_config("ann=a,videos=v,owlv2=o,univtg=u,clip=c,llava=l,llm=http://x/v1")
  assert c.frame_numbers == "sampled" and c.max_frames == lnv7b.get_config().data.num_frames
