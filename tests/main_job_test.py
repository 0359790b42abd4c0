"""The README's main job (gin/ipo_md_tiny.gin), whole, as a user runs it:
the learned preference model comes within 10 points of the gold oracle's own
accuracy on the noisy labels (tests/pm_synthetic_test.py checks a few points
for a longer PM run), and IPO-MD against that model raises the gold win rate
against the SFT reference.

About 6 minutes on a 2-core CPU (SFT, PM and IPO-MD stages), so it
runs only on request:

  IPO_MD_SLOW=1 python -m pytest -q tests/main_job_test.py
"""

import pytest

from tests import cli_runs

pytestmark = cli_runs.slow(minutes=6)


# Held-out accuracy of the PM on the noisy labels may trail the gold
# oracle's (the ceiling, 0.8765 on the 1,024 validation pairs) by at most
# this much, after one pass over the pairs in about two minutes (the same PM
# trained for 35 minutes on fresh pairs comes within 3.5 points,
# tests/pm_synthetic_test.py). Measured: 0.793, 8.4 points below (gold
# agreement 0.840). One pass lands anywhere in a spread of a few points: the
# training pairs in other orders (DataConfig.seed 1 and 2) gave 9.0 and 8.7
# points, and with the network's earlier row order, whose float32 gradients
# differ only in summation order, seeds 0-3 gave 7.2, 7.8, 9.3 and 8.8. So
# the bound is 10 points (it was 8, measured at that order's seed 0, which
# two of its four seeds would have failed).
PM_GAP = 0.10
# The final gold win rate against the SFT reference must exceed this (0.5
# when the policy does not move; 256 prompts give a standard error of about
# 0.03 on one evaluation). Measured: 0.687 (0.675 with the earlier row order;
# the run is deterministic on one machine, another CPU rounds differently),
# so this is 2.2 errors below.
GOLD_WIN = 0.62


def test_main_job_pm_near_the_ceiling_and_gold_win_rate_rises(tmp_path):
  model_dir = tmp_path / "run"
  run = cli_runs.train("gin/ipo_md_tiny.gin", model_dir, tmp_path / "cache",
                       timeout=1800)
  pm = cli_runs.last_metrics(model_dir / "pm" / "metrics.jsonl")
  ceiling, accuracy = pm["eval/gold_accuracy"], pm["eval/accuracy"]
  assert ceiling == pytest.approx(0.8765, abs=5e-4), ceiling
  assert accuracy >= ceiling - PM_GAP, (accuracy, ceiling)
  policy = cli_runs.last_metrics(model_dir / "ipo_md" / "metrics.jsonl")
  assert policy["eval/win_rate_vs_ref/gold"] > GOLD_WIN, policy
  # Both judges are logged on the same evaluation (over-optimisation shows
  # as the learned model's verdict running ahead of the gold one's).
  assert "eval/win_rate_vs_ref/pm" in policy, policy
  assert "charsmap" not in run.stdout + run.stderr
