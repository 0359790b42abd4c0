"""The preference-model metrics of ipo_md.trainer.evaluation, by hand.

Every number the PM stage logs (accuracy, log-loss, ECE, agreement with the
gold preference, the gold's own accuracy and log-loss) against values worked
out on paper for four pairs.
"""

import numpy as np
import pytest

from ipo_md.trainer import evaluation

# Four pairs: the model's p(first > second), the label q (the first is the
# annotators' choice, soft on the last pair) and the gold preference.
P = [0.9, 0.2, 0.5, 0.7]
Q = [1.0, 1.0, 1.0, 0.5]
GOLD = [0.8, 0.6, 0.5, 0.3]


def test_accuracy_and_log_loss_by_hand():
  out, _ = evaluation.preference_metrics(P, Q)
  # q (p > 1/2) + (1 - q) (p < 1/2) + (p = 1/2) / 2: 1, 0, 1/2, 1/2.
  assert out["eval/accuracy"] == 0.5
  # -q log p - (1 - q) log(1 - p):
  #   -log 0.9 = 0.1053605, -log 0.2 = 1.6094379, -log 0.5 = 0.6931472,
  #   -(log 0.7 + log 0.3) / 2 = (0.3566749 + 1.2039728) / 2 = 0.7803239.
  assert out["eval/log_loss"] == pytest.approx(
      (0.1053605 + 1.6094379 + 0.6931472 + 0.7803239) / 4, abs=1e-7)
  assert "eval/gold_agreement" not in out


def test_calibration_swaps_every_other_order():
  out, bins = evaluation.preference_metrics(P, Q, num_bins=10)
  # Pairs 1 and 3 swapped: p = 0.9, 0.8, 0.5, 0.3 against y = 1, 0, 1, 0.5,
  # one pair in each of bins 9, 8, 5, 3: |y - p| = 0.1, 0.8, 0.5, 0.2.
  assert out["eval/ece"] == pytest.approx((0.1 + 0.8 + 0.5 + 0.2) / 4)
  np.testing.assert_array_equal(np.nonzero(bins["count"])[0], [3, 5, 8, 9])
  np.testing.assert_allclose(bins["mean_p"][[3, 5, 8, 9]],
                             [0.3, 0.5, 0.8, 0.9])
  np.testing.assert_allclose(bins["mean_y"][[3, 5, 8, 9]], [0.5, 1, 0, 1])


def test_calibration_error_averages_within_a_bin():
  ece, bins = evaluation.expected_calibration_error(
      np.array([0.12, 0.18, 0.95]), np.array([0.0, 1.0, 1.0]), num_bins=10)
  # Bin 1 holds two predictions (mean p 0.15, mean y 0.5), bin 9 one:
  # (2/3) |0.5 - 0.15| + (1/3) |1 - 0.95|.
  assert ece == pytest.approx(2 / 3 * 0.35 + 1 / 3 * 0.05)
  assert bins["count"][1] == 2 and bins["count"][9] == 1


def test_gold_agreement_accuracy_and_log_loss_by_hand():
  out, _ = evaluation.preference_metrics(P, Q, GOLD)
  # (p > 1/2) == (gold > 1/2): yes, no, yes (a gold tie and p = 1/2), no.
  assert out["eval/gold_agreement"] == 0.5
  # The gold's accuracy on the labels: 1, 1, 1/2 (tie), 1/2 (soft label).
  assert out["eval/gold_accuracy"] == 0.75
  # -log 0.8 = 0.2231436, -log 0.6 = 0.5108256, -log 0.5 = 0.6931472,
  # -(log 0.3 + log 0.7) / 2 = 0.7803239.
  assert out["eval/gold_log_loss"] == pytest.approx(
      (0.2231436 + 0.5108256 + 0.6931472 + 0.7803239) / 4, abs=1e-7)
  # Labels drawn from the gold: P(right) = 0.8 (p > 1/2), 1 - 0.6 (p < 1/2),
  # 1/2 (p = 1/2), 0.3 (p > 1/2); its ceiling max(g, 1 - g): .8, .6, .5, .7.
  assert out["eval/expected_accuracy"] == pytest.approx(2.0 / 4, abs=1e-12)
  assert out["eval/gold_expected_accuracy"] == pytest.approx(2.6 / 4,
                                                             abs=1e-12)


def test_expected_accuracy_is_the_mean_over_label_draws():
  rng = np.random.default_rng(1)
  gold = rng.uniform(0.0, 1.0, 64)
  p = np.clip(gold + rng.normal(0.0, 0.3, 64), 0.01, 0.99)
  out, _ = evaluation.preference_metrics(p, np.ones(64), gold)
  # 20,000 annotator draws of the 64 labels (1 = the first wins).
  draws = [evaluation.preference_metrics(
      p, (rng.uniform(size=64) < gold).astype(np.float64))[0]["eval/accuracy"]
           for _ in range(20_000)]
  # Standard error of the mean of the draws: under 0.0005.
  assert np.mean(draws) == pytest.approx(out["eval/expected_accuracy"],
                                         abs=0.002)


def test_a_model_equal_to_the_gold_reaches_its_ceiling_and_floor():
  rng = np.random.default_rng(0)
  gold = rng.uniform(0.05, 0.95, 256)
  labels = (rng.uniform(size=256) < gold).astype(np.float64)
  out, _ = evaluation.preference_metrics(gold, labels, gold)
  assert out["eval/gold_agreement"] == 1.0
  assert out["eval/accuracy"] == out["eval/gold_accuracy"]
  assert out["eval/log_loss"] == out["eval/gold_log_loss"]
  assert out["eval/expected_accuracy"] == out["eval/gold_expected_accuracy"]
