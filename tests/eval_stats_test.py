"""Numbers of `ipo_md.eval.stats`: closed forms, hand values, simulations.

The coverage tests simulate side-by-side evaluations of policies whose true
win probabilities are known (Bradley-Terry strengths), 200 times, and check
that the bootstrap intervals contain the truth at the stated rate within a
binomial tolerance.
"""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ipo_md.eval import stats

STRENGTHS = np.array([0.6, 0.0, -0.4])


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _true_matrix(s):
  return _sigmoid(s[:, None] - s[None, :])


def _simulate(rng, s, num_prompts, kind):
  """Per-prompt verdicts p[i, j, n] of policies with strengths s; exactly
  antisymmetric, as a symmetrised judge gives."""
  q = _true_matrix(s)
  num = len(s)
  p = np.full((num, num, num_prompts), 0.5)
  for i in range(num):
    for j in range(i + 1, num):
      if kind == "bernoulli":
        v = (rng.random(num_prompts) < q[i, j]).astype(float)
      else:  # Soft verdicts with mean q (a continuous judge).
        v = rng.beta(4 * q[i, j], 4 * (1 - q[i, j]), num_prompts)
      p[i, j], p[j, i] = v, 1.0 - v
  return p


class BootstrapTest(parameterized.TestCase):

  def test_weights_are_resample_counts(self):
    w = stats.bootstrap_weights(7, 50, np.random.default_rng(0))
    self.assertEqual(w.shape, (50, 7))
    np.testing.assert_array_equal(w.sum(1), np.full(50, 7.0))
    self.assertTrue(np.all(w == np.round(w)) and np.all(w >= 0))

  def test_bootstrap_mean_of_constant_is_exact(self):
    mean, low, high = stats.bootstrap_mean(np.full(20, 0.3))
    self.assertAlmostEqual(mean, 0.3)
    self.assertAlmostEqual(low, 0.3)
    self.assertAlmostEqual(high, 0.3)

  def test_bootstrap_interval_width_matches_standard_error(self):
    rng = np.random.default_rng(1)
    values = rng.random(400)
    _, low, high = stats.bootstrap_mean(values, num_samples=4000, level=0.9)
    se = values.std() / np.sqrt(values.size)
    # A 90% normal interval is +-1.645 se wide.
    self.assertAlmostEqual((high - low) / (2 * 1.645 * se), 1.0, delta=0.08)

  def test_summary_means_and_diagonal(self):
    p = np.array([[[0.5, 0.5], [0.2, 0.6]], [[0.8, 0.4], [0.5, 0.5]]])
    summary = stats.pairwise_summary(p, num_samples=200)
    np.testing.assert_allclose(summary.mean, [[0.5, 0.4], [0.6, 0.5]])
    np.testing.assert_allclose(summary.low + summary.high.T,
                               np.ones((2, 2)), atol=1e-12)
    self.assertEqual(summary.boot.shape, (200, 2, 2))
    self.assertTrue(np.all(summary.low <= summary.mean + 1e-12))
    self.assertTrue(np.all(summary.high >= summary.mean - 1e-12))

  def test_summary_of_unjudged_pair_is_nan(self):
    p = np.full((3, 3, 4), 0.5)
    p[0, 2] = p[2, 0] = np.nan
    summary = stats.pairwise_summary(p, num_samples=20)
    self.assertTrue(np.isnan(summary.mean[0, 2]))
    self.assertTrue(np.isnan(summary.low[2, 0]))
    self.assertEqual(summary.mean[1, 1], 0.5)

  def test_bootstrap_keeps_antisymmetry(self):
    p = _simulate(np.random.default_rng(2), STRENGTHS, 30, "soft")
    summary = stats.pairwise_summary(p, num_samples=100)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose((summary.mean + summary.mean.T)[off], 1.0)
    np.testing.assert_allclose(
        (summary.boot + summary.boot.transpose(0, 2, 1))[:, off], 1.0)

  @parameterized.parameters("bernoulli", "soft")
  def test_interval_covers_truth_at_stated_rate(self, kind):
    rng = np.random.default_rng(3)
    truth = _true_matrix(STRENGTHS)
    level, sims = 0.9, 200
    hits = []
    for sim in range(sims):
      p = _simulate(rng, STRENGTHS, 100, kind)
      s = stats.pairwise_summary(p, num_samples=400, level=level, seed=sim)
      for i, j in ((0, 1), (0, 2), (1, 2)):
        hits.append(s.low[i, j] <= truth[i, j] <= s.high[i, j])
    coverage = np.mean(hits)
    # 600 trials: binomial sd sqrt(0.9 * 0.1 / 600) = 0.012; allow 3 sd.
    tolerance = 3 * np.sqrt(level * (1 - level) / len(hits))
    self.assertLess(abs(coverage - level), tolerance,
                    f"coverage {coverage:.3f} of nominal {level}")

  def test_bad_level(self):
    with self.assertRaisesRegex(ValueError, "level=1.5 must be in"):
      stats.pairwise_summary(np.full((2, 2, 3), 0.5), level=1.5)


class BradleyTerryTest(absltest.TestCase):

  def test_recovers_exact_strengths(self):
    s = np.array([1.0, 0.3, -0.2, -1.1])
    fitted = stats.bradley_terry(_true_matrix(s), ridge=1e-9)
    np.testing.assert_allclose(fitted, s - s.mean(), atol=1e-6)

  def test_incomplete_matrix(self):
    s = np.array([0.8, 0.1, -0.9])
    m = _true_matrix(s)
    m[0, 2] = m[2, 0] = np.nan  # 0 and 2 only meet through 1.
    fitted = stats.bradley_terry(m, ridge=1e-9)
    np.testing.assert_allclose(fitted, s - s.mean(), atol=1e-6)

  def test_perfect_separation_stays_finite_and_ordered(self):
    m = np.array([[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]])
    fitted = stats.bradley_terry(m)
    self.assertTrue(np.all(np.isfinite(fitted)))
    self.assertEqual(stats.ranking(fitted), [0, 1, 2])

  def test_recovers_known_ordering_from_samples(self):
    s = np.array([-0.5, 0.9, 0.2, -1.0, 0.5])
    p = _simulate(np.random.default_rng(4), s, 400, "bernoulli")
    summary = stats.pairwise_summary(p, num_samples=200)
    fitted = stats.bradley_terry(summary.mean)
    self.assertEqual(stats.ranking(fitted), [1, 4, 2, 0, 3])
    low, high = stats.bradley_terry_intervals(summary.boot)
    self.assertTrue(np.all(low <= fitted) and np.all(fitted <= high))
    # The simulated truth lies inside every 90% interval here.
    centred = s - s.mean()
    self.assertTrue(np.all(low <= centred) and np.all(centred <= high))

  def test_batch_equals_one_by_one(self):
    p = _simulate(np.random.default_rng(5), STRENGTHS, 20, "bernoulli")
    boot = stats.pairwise_summary(p, num_samples=30).boot
    batched = stats.bradley_terry(boot)
    single = np.stack([stats.bradley_terry(b) for b in boot])
    np.testing.assert_allclose(batched, single, atol=1e-9)

  def test_rejects_values_outside_unit_interval(self):
    with self.assertRaisesRegex(ValueError, "outside \\[0, 1\\]"):
      stats.bradley_terry(np.array([[0.5, 1.5], [-0.5, 0.5]]))


class GroupMatrixTest(absltest.TestCase):

  def test_seed_pairs_hand_values(self):
    # Methods a (seeds 0, 1), b (seeds 2, 3), c (seed 4).
    m = np.full((5, 5), 0.5)
    def put(i, j, v):
      m[i, j], m[j, i] = v, 1 - v
    put(0, 1, 0.6)
    put(2, 3, 0.5)
    put(0, 2, 0.7); put(0, 3, 0.8); put(1, 2, 0.6); put(1, 3, 0.5)
    put(0, 4, 0.9); put(1, 4, 0.7); put(2, 4, 0.4); put(3, 4, 0.2)
    g = stats.group_matrix(m, ["a", "a", "b", "b", "c"])
    self.assertEqual(g.names, ("a", "b", "c"))
    ab = np.array([0.7, 0.8, 0.6, 0.5])
    self.assertAlmostEqual(g.mean[0, 1], ab.mean())
    self.assertAlmostEqual(g.std[0, 1], ab.std())
    self.assertAlmostEqual(g.mean[1, 0], 1 - ab.mean())
    self.assertEqual(g.count[0, 1], 4)
    self.assertAlmostEqual(g.mean[0, 2], 0.8)
    self.assertAlmostEqual(g.std[0, 2], 0.1)
    # The diagonal: pairs of distinct seeds of one method.
    self.assertAlmostEqual(g.mean[0, 0], 0.5)
    self.assertAlmostEqual(g.std[0, 0], 0.1)
    self.assertEqual(g.count[0, 0], 2)
    self.assertEqual(g.mean[2, 2], 0.5)
    self.assertTrue(np.isnan(g.std[2, 2]))
    self.assertEqual(g.count[2, 2], 0)
    g1 = stats.group_matrix(m, ["a", "a", "b", "b", "c"], ddof=1)
    self.assertAlmostEqual(g1.std[0, 1], ab.std(ddof=1))

  def test_shape_mismatch(self):
    with self.assertRaisesRegex(ValueError, "one group per policy"):
      stats.group_matrix(np.full((2, 2), 0.5), ["a"])


if __name__ == "__main__":
  absltest.main()
