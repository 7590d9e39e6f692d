"""Evaluation metrics: option parsing, accuracy by type, open-ended, rationale grounding."""

import pytest

from aotd_jax import memory_stats
from aotd_jax.eval import efficiency, metrics

CHOICES = ["The red circle.", "The blue square.", "The green triangle.", "Nothing."]


@pytest.mark.parametrize(
  "output,want",
  [
    ("B", 1),
    ("(C)", 2),
    ("A. The red circle.", 0),
    ("The answer is D.", 3),
    ("the blue square", 1),
    ("I think it's the green triangle", 2),
    ("", None),
    ("circle or square?", None),
    ("E", None),
  ],
)
def test_parse_choice(output, want):
  assert metrics.parse_choice(output, CHOICES) == want


def test_mc_accuracy_per_type_counts_unparsed_as_wrong():
  r = metrics.mc_accuracy(
    [0, None, 2, 1], [0, 1, 2, 2], ["Interaction", "Sequence", "Sequence", "Prediction"]
  )
  assert r["accuracy"] == 0.5 and r["count"] == 4
  assert r["per_type"] == {"Interaction": 1.0, "Prediction": 0.0, "Sequence": 0.5}


def test_open_ended_normalised_match_and_judge():
  r = metrics.open_ended_score(
    ["A dog.", "two"], ["dog", "3"], judge=lambda o, a: 5.0 if o == "A dog." else 1.0
  )
  assert r["exact_match"] == 0.5 and r["judge_score"] == 3.0


def test_rationale_grounding_parses_the_verbaliser_format():
  text = (
    "I look at frames 4-9 and find the red circle at [10, 10, 20, 20] in frame 5. "
    "Then in frame 12 the blue square at [0, 0, 10, 10] in frame 12. So the answer is B."
  )
  assert metrics.parse_boxes(text) == [(5, [10, 10, 20, 20]), (12, [0, 0, 10, 10])]
  assert metrics.parse_windows(text) == [(4, 10), (12, 13)]
  g = metrics.rationale_grounding(text, {5: [[10, 10, 20, 30]], 12: [[0, 0, 10, 10]]}, [(4, 10)])
  assert g["box_iou"] == pytest.approx((0.5 + 1.0) / 2)
  assert g["window_iou"] == pytest.approx((1.0 + 0.0) / 2)
  assert metrics.rationale_grounding("no evidence", {}, [])["box_iou"] is None


def test_efficiency_measure_records_time_and_memory(monkeypatch):
  clock = iter([10.0, 12.5])
  monkeypatch.setattr(efficiency.time, "perf_counter", lambda: next(clock))
  monkeypatch.setattr(memory_stats, "host_peak_rss_mb", lambda: 123.0)
  monkeypatch.setattr(memory_stats, "device_memory_mb", lambda: {})
  with efficiency.measure(4) as e:
    pass
  assert e.to_dict() == {
    "seconds": 2.5,
    "questions": 4,
    "seconds_per_question": 0.625,
    "peak_mb": 123.0,
    "memory_kind": "host_rss",
  }
  # an accelerator that reports its peak is preferred to the host's RSS
  clock = iter([0.0, 1.0])
  monkeypatch.setattr(
    memory_stats, "device_memory_mb", lambda: {"device_mb": 5.0, "device_peak_mb": 77.0}
  )
  with efficiency.measure(0) as e:
    pass
  assert (e.peak_mb, e.memory_kind, e.seconds_per_question) == (77.0, "device_peak", 0.0)
