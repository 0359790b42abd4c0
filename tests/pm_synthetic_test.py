"""gin/pm_synthetic.gin, whole, as a user runs it: the main job's preference
model trained longer on fresh pairs comes within a few points of the gold
oracle's own accuracy on the noisy labels.

About 35 minutes on a 2-core CPU (the SFT stage, then 4,000 PM steps of 128
pairs), so it runs only on request:

  IPO_MD_SLOW=1 python -m pytest -q tests/pm_synthetic_test.py
"""

import pytest

from tests import cli_runs

pytestmark = cli_runs.slow(minutes=35)


# Held-out accuracy on the noisy labels may trail the gold oracle's (the
# ceiling, 0.8765 on the 1,024 validation pairs) by at most this much.
# Measured: 0.8418, 3.5 points below (gold agreement 0.922).
PM_GAP = 0.04
# The same without the labels' sampling noise: the accuracy expected over the
# annotators' draws against its ceiling (0.8805). Measured: 0.8561, 2.4 points
# below.
PM_EXPECTED_GAP = 0.03


def test_pm_trained_on_fresh_pairs_comes_within_a_few_points(tmp_path):
  model_dir = tmp_path / "run"
  cli_runs.train("gin/pm_synthetic.gin", model_dir, tmp_path / "cache",
                 timeout=4 * 3600)
  pm = cli_runs.last_metrics(model_dir / "pm" / "metrics.jsonl")
  assert pm["eval/gold_accuracy"] == pytest.approx(0.8765, abs=5e-4)
  assert pm["eval/gold_expected_accuracy"] == pytest.approx(0.8805, abs=5e-4)
  assert pm["eval/accuracy"] >= pm["eval/gold_accuracy"] - PM_GAP, pm
  assert (pm["eval/expected_accuracy"]
          >= pm["eval/gold_expected_accuracy"] - PM_EXPECTED_GAP), pm
