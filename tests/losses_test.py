"""Numbers, gradients and invariants of `ipo_md.losses`.

Expected values are written out by hand (or with numpy on the same small
inputs), never by calling the function under test.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np

from ipo_md import losses

PAIR_LOSSES = (
    ("ipo", losses.ipo_loss),
    ("dpo", losses.dpo_loss),
    ("slic", losses.slic_loss),
    ("slic_hf", losses.slic_hf_loss),
)
PAIR_METRICS = {
    "loss", "rewards/margin", "rewards/accuracy", "signal/mean",
    "logps/policy_y", "logps/policy_yp", "logps/ref_y", "logps/ref_yp",
}

# Three pairs. h = (py - ry) - (pyp - ryp) = [2.0, -1.0, 0.25].
POLICY_Y = np.array([-1.0, -2.0, -4.0], np.float32)
POLICY_YP = np.array([-3.0, -1.0, -4.25], np.float32)
REF_Y = np.array([-2.0, -2.0, -3.5], np.float32)
REF_YP = np.array([-2.0, -2.0, -3.5], np.float32)
PREF = np.array([1.0, 0.3, 0.5], np.float32)
H = np.array([2.0, -1.0, 0.25])


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _pair_args(dtype=np.float32):
  return tuple(
      jnp.asarray(a, dtype) for a in (POLICY_Y, POLICY_YP, REF_Y, REF_YP, PREF)
  )


def _grads_wrt_policy(loss_fn, tau):
  """d sum(loss_B) / d (policy_logps_y_B, policy_logps_yp_B)."""
  def total(py, pyp, ry, ryp, p):
    return jnp.sum(loss_fn(py, pyp, ry, ryp, p, tau=tau)[0])
  return jax.grad(total, argnums=(0, 1))(*_pair_args())


class PairwiseLossTest(parameterized.TestCase):

  def test_ipo_values_gradient_and_metrics(self):
    tau = 0.5
    target = (PREF - 0.5) / tau  # [1.0, -0.4, 0.0]
    loss_B, metrics = losses.ipo_loss(*_pair_args(), tau=tau)
    np.testing.assert_allclose(loss_B, [1.0, 0.36, 0.0625], rtol=1e-6)
    np.testing.assert_allclose(loss_B, (H - target) ** 2, rtol=1e-6)
    self.assertEqual(loss_B.dtype, jnp.float32)
    g_y, g_yp = _grads_wrt_policy(losses.ipo_loss, tau)
    np.testing.assert_allclose(g_y, [2.0, -1.2, 0.5], rtol=1e-6)
    np.testing.assert_allclose(g_yp, [-2.0, 1.2, -0.5], rtol=1e-6)
    self.assertEqual(set(metrics), PAIR_METRICS | {"ipo/target"})
    np.testing.assert_allclose(metrics["loss"], (1.0 + 0.36 + 0.0625) / 3,
                               rtol=1e-6)
    # The preferred response's margin under the label, (2p - 1) h:
    # 1 * 2.0 + (-0.4) * (-1.0) + 0 * 0.25.
    np.testing.assert_allclose(metrics["rewards/margin"], 2.4 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["signal/mean"], 1.8 / 3, rtol=1e-6)
    # Soft accuracy: 1 (h>0, p=1) + 0.7 (h<0, 1-p) + 0.5 (h>0, p=1/2).
    np.testing.assert_allclose(metrics["rewards/accuracy"], 2.2 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["ipo/target"], 0.6 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/policy_yp"], -8.25 / 3,
                               rtol=1e-6)
    for value in metrics.values():
      self.assertEqual(value.shape, ())

  def test_dpo_values_and_gradient(self):
    tau = 2.0
    loss_B, metrics = losses.dpo_loss(*_pair_args(), tau=tau)
    expected = -PREF * np.log(_sigmoid(tau * H)) - (1 - PREF) * np.log(
        _sigmoid(-tau * H))
    np.testing.assert_allclose(loss_B, expected, rtol=1e-5)
    np.testing.assert_allclose(loss_B[0], np.log1p(np.exp(-4.0)), rtol=1e-5)
    g_y, g_yp = _grads_wrt_policy(losses.dpo_loss, tau)
    grad = -tau * (PREF - _sigmoid(tau * H))
    np.testing.assert_allclose(g_y, grad, rtol=1e-5)
    np.testing.assert_allclose(g_yp, -grad, rtol=1e-5)
    np.testing.assert_allclose(metrics["dpo/implied_pref"],
                               np.mean(_sigmoid(tau * H)), rtol=1e-6)

  def test_slic_values_and_gradient(self):
    tau = 2.0  # tau * h = [4, -2, 0.5]
    loss_B, metrics = losses.slic_loss(*_pair_args(), tau=tau)
    # [1*max(0,-3)+0, 0.3*max(0,3)+0.7*max(0,-1), 0.5*0.5+0.5*1.5]
    np.testing.assert_allclose(loss_B, [0.0, 0.9, 1.0], rtol=1e-6)
    g_y, g_yp = _grads_wrt_policy(losses.slic_loss, tau)
    # -tau p 1[1 - tau h > 0] + tau (1-p) 1[1 + tau h > 0]
    np.testing.assert_allclose(g_y, [0.0, -0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(g_yp, [0.0, 0.6, 0.0], atol=1e-6)
    # active: pair 0 none, pair 1 the y-hinge (weight 0.3), pair 2 both.
    np.testing.assert_allclose(metrics["slic/active"], 1.3 / 3, rtol=1e-6)

  def test_slic_hf_values_gradient_and_no_reference(self):
    tau, lam = 2.0, 0.5  # d = log pi(y) - log pi(y') = [2, -1, 0.25] = H
    loss_B, metrics = losses.slic_hf_loss(*_pair_args(), tau=tau,
                                          regularizer=lam)
    # The hinges of slic_loss [0, 0.9, 1.0] plus lam times the label-weighted
    # NLL [1.0, 0.3*2 + 0.7*1, 0.5*4 + 0.5*4.25].
    np.testing.assert_allclose(loss_B, [0.5, 1.55, 3.0625], rtol=1e-6)
    py, pyp, ry, ryp, p = _pair_args()
    moved_B, _ = losses.slic_hf_loss(py, pyp, ry + 3.0, ryp - 1.0, p, tau=tau,
                                     regularizer=lam)
    np.testing.assert_allclose(moved_B, loss_B, rtol=1e-6)
    g_y, g_yp = _grads_wrt_policy(
        functools.partial(losses.slic_hf_loss, regularizer=lam), tau)
    np.testing.assert_allclose(g_y, [-0.5, -0.75, -0.25], atol=1e-6)
    np.testing.assert_allclose(g_yp, [0.0, 0.25, -0.25], atol=1e-6)
    np.testing.assert_allclose(metrics["slic/nll_preferred"], 6.425 / 3,
                               rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "regularizer=-1.0 must be"):
      losses.slic_hf_loss(*_pair_args(), tau=tau, regularizer=-1.0)

  def test_soft_ipo_equals_both_orderings_up_to_a_constant(self):
    tau = 0.7
    two_orderings = lambda h, p: (p * (h - 1 / (2 * tau)) ** 2
                                  + (1 - p) * (-h - 1 / (2 * tau)) ** 2)
    ipo = lambda h, p: losses.ipo_loss(h, jnp.zeros_like(h), jnp.zeros_like(h),
                                       jnp.zeros_like(h), p, tau=tau)[0]
    p = jnp.array([0.0, 0.2, 0.5, 0.9, 1.0])
    for h in (jnp.array([-1.0, 0.3, 2.0, 0.0, 0.7]), jnp.full((5,), 3.0)):
      diff = two_orderings(h, p) - ipo(h, p)
      # The constant depends on (p, tau) only: p(1-p)/tau^2.
      np.testing.assert_allclose(diff, p * (1 - p) / tau ** 2, atol=1e-5)
      grad_two = jax.grad(lambda h: jnp.sum(two_orderings(h, p)))(h)
      grad_ipo = jax.grad(lambda h: jnp.sum(ipo(h, p)))(h)
      np.testing.assert_allclose(grad_ipo, grad_two, atol=1e-5)

  def test_offline_ipo_is_eq17(self):
    tau = 0.25
    loss_B, _ = losses.ipo_loss(*_pair_args()[:4], jnp.ones(3), tau=tau)
    np.testing.assert_allclose(loss_B, (H - 1 / (2 * tau)) ** 2, rtol=1e-6)

  @parameterized.named_parameters(*PAIR_LOSSES)
  def test_swapping_pair_and_label_leaves_loss_unchanged(self, loss_fn):
    py, pyp, ry, ryp, p = _pair_args()
    loss_B, metrics = loss_fn(py, pyp, ry, ryp, p, tau=1.5)
    swapped_B, swapped = loss_fn(pyp, py, ryp, ry, 1.0 - p, tau=1.5)
    np.testing.assert_allclose(swapped_B, loss_B, rtol=1e-6)
    np.testing.assert_allclose(swapped["rewards/margin"],
                               metrics["rewards/margin"], rtol=1e-6)
    np.testing.assert_allclose(swapped["rewards/accuracy"],
                               metrics["rewards/accuracy"], rtol=1e-6)

  def test_ipo_minimised_at_target_margin(self):
    tau = 0.4
    pref = jnp.array([1.0, 0.8, 0.5, 0.1])
    ipo = lambda h: jnp.sum(losses.ipo_loss(
        h, jnp.zeros(4), jnp.zeros(4), jnp.zeros(4), pref, tau=tau)[0])
    h_star = (pref - 0.5) / tau  # 1/(2 tau) = 1.25 for the offline pair
    np.testing.assert_allclose(h_star[0], 1.25)
    self.assertAlmostEqual(float(ipo(h_star)), 0.0, places=10)
    np.testing.assert_allclose(jax.grad(ipo)(h_star), 0.0, atol=1e-7)
    self.assertGreater(float(ipo(h_star + 0.01)), 0.0)

  @parameterized.named_parameters(*PAIR_LOSSES)
  def test_check_grads(self, loss_fn):
    with jax.enable_x64(True):
      args = tuple(jnp.asarray(a, jnp.float64) for a in _pair_args())
      fn = lambda *a: loss_fn(*a, tau=0.8)[0]
      jtu.check_grads(fn, args, order=1, modes=("rev",))

  @parameterized.product(
      loss=(losses.ipo_loss, losses.dpo_loss, losses.slic_loss),
      dtype=(jnp.bfloat16, jnp.float32),
  )
  def test_dtypes(self, loss, dtype):
    loss_B, metrics = loss(*_pair_args(dtype), tau=0.5)
    reference_B, _ = loss(*_pair_args(np.float32), tau=0.5)
    self.assertEqual(loss_B.dtype, jnp.float32)
    self.assertEqual(metrics["loss"].dtype, jnp.float32)
    np.testing.assert_allclose(loss_B, reference_B, rtol=2e-2, atol=2e-2)

  def test_jit(self):
    fn = jax.jit(functools.partial(losses.ipo_loss, tau=0.5))
    loss_B, metrics = fn(*_pair_args())
    np.testing.assert_allclose(loss_B, [1.0, 0.36, 0.0625], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], np.mean(loss_B), rtol=1e-6)

  @parameterized.named_parameters(*PAIR_LOSSES)
  def test_bad_inputs_raise(self, loss_fn):
    args = _pair_args()
    for tau in (0.0, -1.0, float("inf"), None):
      with self.assertRaisesRegex(ValueError, "tau=.* must be a finite"):
        loss_fn(*args, tau=tau)
    with self.assertRaisesRegex(ValueError, "pref_B must have rank 1"):
      loss_fn(*args[:4], args[4][:, None], tau=1.0)
    with self.assertRaisesRegex(ValueError, "Shapes must match"):
      loss_fn(*args[:4], args[4][:2], tau=1.0)


# Two sequences of length 3; the second has one padding token whose garbage
# log-probs must be ignored.
TOKENS_PI = np.array([[-0.5, -1.0, -0.2], [-2.0, -0.1, -9.0]], np.float32)
TOKENS_REF = np.array([[-1.0, -0.5, -0.4], [-1.0, -0.3, -7.0]], np.float32)
MASK = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], np.float32)
P_PG = np.array([0.9, 0.2], np.float32)


def _token_grad(loss_fn, signal, tau, **kw):
  def total(pi):
    return jnp.sum(loss_fn(pi, TOKENS_REF, MASK, signal, tau=tau, **kw)[0])
  return jax.grad(total)(jnp.asarray(TOKENS_PI))


class PolicyGradientLossTest(parameterized.TestCase):

  def test_reward_to_go_gradient_is_hand_formula(self):
    tau = 0.5
    # masked log-ratios: [[0.5, -0.5, 0.2], [-1.0, 0.2, 0]]
    # reward-to-go:      [[0.2, -0.3, 0.2], [-0.8, 0.2, 0]]
    rtg = np.array([[0.2, -0.3, 0.2], [-0.8, 0.2, 0.0]])
    expected = MASK * (-(P_PG[:, None] - 0.5) + tau * rtg)
    grad = _token_grad(losses.nash_md_pg_loss, P_PG, tau)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    np.testing.assert_allclose(grad[0], [-0.3, -0.55, -0.3], atol=1e-6)

  def test_per_token_gradient_differs_from_reward_to_go(self):
    tau = 0.5
    log_ratio = np.array([[0.5, -0.5, 0.2], [-1.0, 0.2, 0.0]])
    expected = MASK * (-(P_PG[:, None] - 0.5) + tau * log_ratio)
    per_token = _token_grad(losses.nash_md_pg_loss, P_PG, tau,
                            kl_estimator="per_token")
    rtg = _token_grad(losses.nash_md_pg_loss, P_PG, tau)
    np.testing.assert_allclose(per_token, expected, atol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(per_token - rtg))), 0.1)
    # They differ by tau times the log-ratios of the later tokens.
    np.testing.assert_allclose(per_token[:, 0] - rtg[:, 0],
                               tau * (log_ratio[:, 0] - [0.2, -0.8]), atol=1e-6)

  def test_values_and_metrics(self):
    tau = 0.5
    loss_B, metrics = losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG,
                                             tau=tau)
    seq_pi = np.array([-1.7, -2.1])
    rtg = np.array([[0.2, -0.3, 0.2], [-0.8, 0.2, 0.0]])
    expected = -(P_PG - 0.5) * seq_pi + tau * np.sum(MASK * TOKENS_PI * rtg, 1)
    np.testing.assert_allclose(loss_B, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["logps/policy_y"], -1.9, rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/ref_y"], -1.6, rtol=1e-6)
    np.testing.assert_allclose(metrics["kl/sampled"], (0.2 - 0.8) / 2,
                               rtol=1e-5)
    np.testing.assert_allclose(metrics["signal/mean"], 0.55, rtol=1e-6)
    np.testing.assert_allclose(metrics["pg/regularised_return"],
                               np.mean([0.4 - 0.1, -0.3 + 0.4]), rtol=1e-5)

  def test_rlhf_uses_the_reward_in_place_of_pref_minus_half(self):
    reward = P_PG - 0.5
    tau = 0.3
    rl_B, rl_metrics = losses.rlhf_pg_loss(TOKENS_PI, TOKENS_REF, MASK,
                                           reward, tau=tau)
    nash_B, _ = losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG,
                                       tau=tau)
    np.testing.assert_allclose(rl_B, nash_B, rtol=1e-6)
    np.testing.assert_allclose(rl_metrics["signal/mean"], 0.05, atol=1e-7)
    np.testing.assert_allclose(
        _token_grad(losses.rlhf_pg_loss, reward, tau),
        _token_grad(losses.nash_md_pg_loss, P_PG, tau), atol=1e-6)

  def test_rlhf_baseline_shifts_the_advantage_not_the_reward_metric(self):
    reward = np.array([1.0, -0.5], np.float32)
    baseline = np.array([0.25, 0.5], np.float32)
    with_b, metrics = losses.rlhf_pg_loss(TOKENS_PI, TOKENS_REF, MASK, reward,
                                          tau=0.3, baseline_B=baseline)
    shifted, _ = losses.rlhf_pg_loss(TOKENS_PI, TOKENS_REF, MASK,
                                     reward - baseline, tau=0.3)
    np.testing.assert_allclose(with_b, shifted, rtol=1e-6)
    np.testing.assert_allclose(metrics["signal/mean"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(metrics["pg/advantage"], -0.125, rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "one baseline per sequence"):
      losses.rlhf_pg_loss(TOKENS_PI, TOKENS_REF, MASK, reward, tau=0.3,
                          baseline_B=baseline[:1])

  def test_padding_is_ignored(self):
    garbage = np.where(MASK > 0, TOKENS_PI, 123.0).astype(np.float32)
    a_B, _ = losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG, tau=0.5)
    b_B, _ = losses.nash_md_pg_loss(garbage, TOKENS_REF, MASK, P_PG, tau=0.5)
    np.testing.assert_allclose(a_B, b_B, rtol=1e-6)
    sliced_B, _ = losses.nash_md_pg_loss(TOKENS_PI[1:, :2], TOKENS_REF[1:, :2],
                                         MASK[1:, :2], P_PG[1:], tau=0.5)
    np.testing.assert_allclose(a_B[1:], sliced_B, rtol=1e-6)

  @parameterized.named_parameters(("bf16", jnp.bfloat16), ("f32", jnp.float32))
  def test_dtypes(self, dtype):
    cast = lambda a: jnp.asarray(a, dtype)
    loss_B, metrics = losses.nash_md_pg_loss(
        cast(TOKENS_PI), cast(TOKENS_REF), cast(MASK), cast(P_PG), tau=0.5)
    reference_B, _ = losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG,
                                            tau=0.5)
    self.assertEqual(loss_B.dtype, jnp.float32)
    self.assertEqual(metrics["loss"].dtype, jnp.float32)
    np.testing.assert_allclose(loss_B, reference_B, rtol=2e-2, atol=2e-2)

  @parameterized.named_parameters(("reward_to_go", "reward_to_go", True),
                                  ("per_token", "per_token", False))
  def test_expected_gradient_is_exact_for_reward_to_go(self, estimator,
                                                        unbiased):
    """Two-token autoregressive policy over two symbols, enumerated exactly.

    Weighting every sequence y by SG[pi(y)], the surrogate's gradient must be
    minus the gradient of E_pi[r] - tau KL(pi || pi_ref) for reward-to-go;
    TRL's per-token estimator is biased.
    """
    tau = 0.7
    rng = np.random.default_rng(0)
    first, second = (0, 0, 1, 1), (0, 1, 0, 1)  # the four sequences
    reward_np = rng.normal(size=4)
    ref_first, ref_second = rng.normal(size=2), rng.normal(size=(2, 2))
    with jax.enable_x64(True):
      reward = jnp.asarray(reward_np)
      def token_logps(params):
        lp1 = jax.nn.log_softmax(params[0])
        lp2 = jax.nn.log_softmax(params[1], axis=-1)
        return jnp.stack([lp1[jnp.array(first)],
                          lp2[jnp.array(first), jnp.array(second)]], axis=1)

      ref_BxL = token_logps((ref_first, ref_second))
      def surrogate(params):
        logps_BxL = token_logps(params)
        weights_B = jax.lax.stop_gradient(jnp.exp(jnp.sum(logps_BxL, 1)))
        loss_B, _ = losses.rlhf_pg_loss(logps_BxL, ref_BxL, jnp.ones((4, 2)),
                                        reward, tau=tau,
                                        kl_estimator=estimator)
        return jnp.sum(weights_B * loss_B)

      def objective(params):
        seq_B = jnp.sum(token_logps(params), 1)
        pi_B = jnp.exp(seq_B)
        kl = jnp.sum(pi_B * (seq_B - jnp.sum(ref_BxL, 1)))
        return jnp.sum(pi_B * reward) - tau * kl

      params = (jnp.asarray(rng.normal(size=2)),
                jnp.asarray(rng.normal(size=(2, 2))))
      got = jax.grad(surrogate)(params)
      want = jax.grad(objective)(params)
    gap = max(np.max(np.abs(np.asarray(g) + np.asarray(w)))
              for g, w in zip(got, want))
    if unbiased:
      self.assertLess(gap, 1e-12)
    else:
      self.assertGreater(gap, 1e-2)

  def test_bad_inputs_raise(self):
    with self.assertRaisesRegex(ValueError, "kl_estimator='mean' is not one "
                                r"of \('reward_to_go', 'per_token'\)"):
      losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG, tau=1.0,
                             kl_estimator="mean")
    with self.assertRaisesRegex(ValueError, "tau=0 must be a finite"):
      losses.rlhf_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG, tau=0)
    with self.assertRaisesRegex(ValueError, "mask_BxL must have rank 2"):
      losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK[0], P_PG, tau=1.0)
    with self.assertRaisesRegex(ValueError,
                                r"pref_B must have shape \[batch\]"):
      losses.nash_md_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG[:1], tau=1.0)
    with self.assertRaisesRegex(ValueError, r"reward_B must have shape"):
      losses.rlhf_pg_loss(TOKENS_PI, TOKENS_REF, MASK, P_PG[:, None], tau=1.0)


class SftAndLabelsTest(parameterized.TestCase):

  def test_sft_loss(self):
    loss_B, metrics = losses.sft_loss(TOKENS_PI, MASK)
    np.testing.assert_allclose(loss_B, [1.7, 2.1], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], 1.9, rtol=1e-6)
    np.testing.assert_allclose(metrics["nll_per_token"], 3.8 / 5, rtol=1e-6)
    np.testing.assert_allclose(metrics["num_tokens"], 5.0)
    grad = jax.grad(lambda t: jnp.sum(losses.sft_loss(t, MASK)[0]))(
        jnp.asarray(TOKENS_PI))
    np.testing.assert_allclose(grad, -MASK)

  def test_sft_bad_rank(self):
    with self.assertRaisesRegex(ValueError, "token_logps_BxL must have rank 2"):
      losses.sft_loss(TOKENS_PI[0], MASK[0])

  def test_argmax_labels(self):
    labels = losses.hard_labels(jnp.array([0.9, 0.1, 0.5, 1.0]), mode="argmax")
    np.testing.assert_array_equal(labels, [1.0, 0.0, 0.5, 1.0])

  def test_bernoulli_labels_have_mean_p(self):
    pref = jnp.full((20000,), 0.3)
    labels = losses.hard_labels(pref, mode="bernoulli",
                                rng=jax.random.key(0))
    self.assertTrue(set(np.unique(labels)) <= {0.0, 1.0})
    self.assertAlmostEqual(float(jnp.mean(labels)), 0.3, delta=0.015)

  def test_label_errors(self):
    with self.assertRaisesRegex(ValueError, "needs an rng"):
      losses.hard_labels(jnp.array([0.5]), mode="bernoulli")
    with self.assertRaisesRegex(ValueError, "mode='soft' is not one of"):
      losses.hard_labels(jnp.array([0.5]), mode="soft")


if __name__ == "__main__":
  absltest.main()


class PreferenceAndRewardModelLossTest(parameterized.TestCase):
  """The learned models' training losses against hand computations."""

  def test_preference_model_cross_entropy_and_gradient(self):
    s = jnp.asarray([2.0, -1.0, 0.0], jnp.float32)
    q = jnp.asarray([1.0, 0.25, 0.5], jnp.float32)
    loss_B, metrics = losses.preference_model_loss(s, q)
    # -q log sigma(s) - (1-q) log sigma(-s), written out.
    expected = [np.log1p(np.exp(-2.0)),
                -0.25 * np.log(_sigmoid(-1.0)) - 0.75 * np.log(_sigmoid(1.0)),
                np.log(2.0)]
    np.testing.assert_allclose(loss_B, expected, rtol=1e-6)
    # d/ds = sigma(s) - q.
    grad = jax.grad(lambda s: jnp.sum(losses.preference_model_loss(s, q)[0]))(s)
    np.testing.assert_allclose(grad, _sigmoid(np.asarray(s)) - np.asarray(q),
                               rtol=1e-6)
    # Accuracy: 1 (right), 0.75 (s < 0 with q = 0.25), 0.5 (a tie).
    np.testing.assert_allclose(metrics["pm/accuracy"], (1 + 0.75 + 0.5) / 3,
                               rtol=1e-6)

  def test_bradley_terry_loss_gradient_and_margin(self):
    r_y = jnp.asarray([1.5, 0.0, -1.0], jnp.float32)
    r_yp = jnp.asarray([0.5, 0.5, -1.0], jnp.float32)
    q = jnp.asarray([1.0, 1.0, 0.8], jnp.float32)
    d = np.array([1.0, -0.5, 0.0])
    for margin in (0.0, 0.3):
      loss_B, metrics = losses.bradley_terry_loss(r_y, r_yp, q, margin=margin)
      qn = np.asarray(q, np.float64)
      expected = (-qn * np.log(_sigmoid(d - margin))
                  - (1 - qn) * np.log(_sigmoid(-d - margin)))
      np.testing.assert_allclose(loss_B, expected, rtol=1e-6)
      g_y, g_yp = jax.grad(
          lambda a, b: jnp.sum(losses.bradley_terry_loss(
              a, b, q, margin=margin)[0]), argnums=(0, 1))(r_y, r_yp)
      # d loss / d r(y) = -q (1 - sigma(d - m)) + (1 - q) sigma(d + m).
      expected_g = (-qn * (1 - _sigmoid(d - margin))
                    + (1 - qn) * _sigmoid(d + margin))
      np.testing.assert_allclose(g_y, expected_g, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(g_yp, -expected_g, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(metrics["rm/margin"], np.mean(d), rtol=1e-6)
    np.testing.assert_allclose(metrics["rm/accuracy"], (1 + 0 + 0.5) / 3,
                               rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "margin=-1.0 must be"):
      losses.bradley_terry_loss(r_y, r_yp, q, margin=-1.0)
