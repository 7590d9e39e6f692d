"""Rationale grounding on STAR: the annotated key frames in the student's frame numbers, and
the box / window IoU of a rationale against them (hand-computed)."""

import numpy as np
import pytest

from aotd_jax.eval import star_grounding as sg
from aotd_jax.eval import student

SITUATIONS = {
  "000120": {"bbox": [[10, 10, 50, 50]], "bbox_labels": ["o001"]},
  "000160": {"bbox": [[20, 20, 60, 60], [0, 0, 5, 5]], "bbox_labels": ["o001", "o002"]},
}
IDS = np.arange(100, 200, 10)  # the student's 10 frames: source frames 100, 110, ..., 190


def test_key_frames_in_student_numbers():
  boxes, windows = sg.star_truth(SITUATIONS, IDS)
  assert boxes == {
    2: [[10.0, 10.0, 50.0, 50.0]],
    6: [[20.0, 20.0, 60.0, 60.0], [0.0, 0.0, 5.0, 5.0]],
  }
  assert windows == [(2, 7)]  # student frames 2 (source 120) to 6 (source 160)
  src_boxes, src_windows = sg.star_truth(SITUATIONS, IDS, "source")
  assert sorted(src_boxes) == [120, 160] and src_windows == [(120, 161)]
  assert sg.star_truth({}, IDS) == ({}, [])
  with pytest.raises(ValueError, match="frame_numbers='rows'"):
    sg.star_truth(SITUATIONS, IDS, "rows")


def test_a_rationale_is_scored_against_them():
  truth = sg.star_truth(SITUATIONS, IDS)
  text = (
    "In frames 2-4 the person holds the cup at [10, 10, 50, 30] in frame 2. "
    "So the answer is the cup."
  )
  got = student.grounding([text], [truth])
  # box: intersection 40x20 = 800 over union 1600 -> 0.5; window [2, 5) vs [2, 7): 3 / 5
  assert got["box_iou"] == pytest.approx(0.5) and got["window_iou"] == pytest.approx(0.6)
  assert got["box_rationales"] == 1 and got["window_rationales"] == 1
