"""The tabular theory of docs/methods.md, checked through `ipo_md.losses`.

Gradients come from `ipo_md.theory.methods`, i.e. from the loss functions that
train the T5 policies; the expected values are independent numpy formulas or
the scipy ground truth of `ipo_md.theory.nash`. Tolerance 1e-6 unless stated.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from ipo_md.theory import dynamics
from ipo_md.theory import games
from ipo_md.theory import methods
from ipo_md.theory import nash

TOL = 1e-6


def _random_cases(num, seed=0, taus=(0.1, 2.0), sizes=(3, 5)):
  """(game, theta) pairs; (K, tau) pairs up sizes and taus, so that jitted
  code compiles once per pair."""
  rng = np.random.default_rng(seed)
  cases = []
  for i in range(num):
    game = games.random_game(sizes[i % len(sizes)], rng,
                             tau=taus[i % len(taus)])
    cases.append((game, rng.normal(size=game.num_actions)))
  return cases


def _softmax_jacobian(pi):
  """Row y is grad_theta log pi(y) = e_y - pi."""
  return np.eye(pi.shape[0]) - pi[None, :]


class GamesTest(absltest.TestCase):

  def test_invalid_games_raise(self):
    with self.assertRaisesRegex(ValueError, r"P \+ P\^T = 1"):
      games.PreferenceGame(prefs_KxK=[[0.5, 0.7], [0.7, 0.5]],
                           ref_K=[0.5, 0.5], tau=1.0)
    with self.assertRaisesRegex(ValueError, "strictly positive"):
      games.PreferenceGame(prefs_KxK=[[0.5, 0.7], [0.3, 0.5]],
                           ref_K=[1.0, 0.0], tau=1.0)
    with self.assertRaisesRegex(ValueError, "tau=0.0 must be"):
      games.two_action_game(0.7, tau=0.0)
    with self.assertRaisesRegex(ValueError, r"\|eps\| <= 1/3"):
      games.cyclic_eps_game(0.5, tau=0.1)
    with self.assertRaisesRegex(ValueError, "beta=1.5"):
      methods.ipo_md(1.5)

  def test_cyclic_eps_game_has_the_stated_unregularised_nash(self):
    for eps in (-1 / 3, -0.1, 0.0, 0.2, 1 / 3):
      game = games.cyclic_eps_game(eps, tau=0.1)
      ne = games.cyclic_eps_nash(eps)
      # Every action ties with the equilibrium, so nothing beats it.
      np.testing.assert_allclose(game.pref_against(ne), 0.5, atol=1e-15)
      self.assertTrue(np.all(game.prefs_KxK >= 0))
    np.testing.assert_allclose(games.cyclic_eps_game(0.0, tau=1).prefs_KxK,
                               [[0.5, 0.75, 0.25], [0.25, 0.5, 0.75],
                                [0.75, 0.25, 0.5]])

  def test_nontransitive_dice(self):
    game = games.dice_game(tau=0.1)
    np.testing.assert_allclose(game.prefs_KxK * 9,
                               [[4.5, 5, 4], [4, 4.5, 5], [5, 4, 4.5]],
                               atol=1e-12)
    np.testing.assert_allclose(nash.nash_equilibrium(game), 1 / 3, atol=1e-12)

  def test_game_is_a_pytree(self):
    game = games.two_action_game(0.7, tau=0.5)
    leaves, tree = jax.tree.flatten(game)
    self.assertLen(leaves, 2)
    rebuilt = jax.tree.unflatten(tree, leaves)
    self.assertEqual(rebuilt.tau, 0.5)
    np.testing.assert_array_equal(rebuilt.prefs_KxK, game.prefs_KxK)


class NashTest(absltest.TestCase):

  def test_convex_program_gives_the_fixed_point(self):
    for game, theta in _random_cases(9, taus=(0.1, 0.5, 2.0),
                                     sizes=(3, 4, 6)):
      pi = nash.nash_equilibrium(game)
      self.assertLess(abs(nash.exploitability(game, pi)), 1e-12)
      self.assertLess(nash.fixed_point_residual(game, pi), 1e-12)
      self.assertGreater(nash.exploitability(game, games.softmax(theta)), 0.0)

  def test_two_action_closed_form(self):
    # p(1 > 2) = 0.7, uniform ref: pi1/pi2 = exp(0.2/tau) (App. F).
    for tau, pi1 in ((1.0, 0.55), (0.1, 0.88)):
      pi = nash.nash_equilibrium(games.two_action_game(0.7, tau=tau))
      self.assertAlmostEqual(pi[0] / pi[1], np.exp(0.2 / tau), delta=1e-9)
      self.assertAlmostEqual(pi[0], pi1, delta=0.005)

  def test_damped_best_response_agrees_with_the_convex_program(self):
    for game, _ in _random_cases(6):
      np.testing.assert_allclose(nash.ipo_md_fixed_point(game, 0.0),
                                 nash.nash_equilibrium(game), atol=1e-10)


class OnlineIpoTest(absltest.TestCase):

  def test_gradient_is_self_play_ascent_scaled_by_minus_4_over_tau(self):
    """Prop. 4.2, exactly: grad L_IPO = -(4/tau) grad SP."""
    for game, theta in _random_cases(12):
      pi = games.softmax(theta)
      g_ipo = methods.expected_gradient(methods.online_ipo(), theta, game)
      g_sp = methods.self_play_gradient(theta, game, pi)
      np.testing.assert_allclose(g_ipo, -(4 / game.tau) * g_sp, atol=TOL)
      # The self-play gradient itself, by hand: (diag pi - pi pi^T) d.
      d = game.pref_against(pi) - game.tau * (np.log(pi / game.ref_K) + 1)
      np.testing.assert_allclose(g_sp, pi * (d - pi @ d), atol=1e-12)
      self.assertGreater(np.abs(g_ipo).max(), 1e-3)

  def test_stationary_exactly_at_the_nash_equilibrium(self):
    """Prop. 4.1: the expected gradient vanishes at pi*_tau and only there."""
    for game, _ in _random_cases(6):
      pi_star = nash.nash_equilibrium(game)
      grad = methods.expected_gradient(methods.online_ipo(), np.log(pi_star),
                                       game)
      self.assertLess(np.abs(grad).max(), TOL)
      root = dynamics.stationary_point(methods.online_ipo(), game)
      np.testing.assert_allclose(root, pi_star, atol=TOL)

  def test_self_play_is_nash_md_pg_at_beta_zero(self):
    for game, theta in _random_cases(3):
      g_sp = methods.expected_gradient(methods.self_play(), theta, game)
      g_pg = methods.expected_gradient(methods.nash_md_pg(0.0), theta, game)
      g_ipo = methods.expected_gradient(methods.online_ipo(), theta, game)
      np.testing.assert_allclose(g_sp, g_pg, atol=1e-12)
      np.testing.assert_allclose(g_sp, game.tau / 4 * g_ipo, atol=TOL)


class IpoMdTest(parameterized.TestCase):

  def test_gradient_is_the_centred_form_not_prop_5_1(self):
    """docs/methods.md: the loss's gradient has the +tau E_pi'[lr] centring."""
    beta = 0.125
    for game, theta in _random_cases(9):
      pi = games.softmax(theta)
      mix = games.geometric_mixture(pi, game.ref_K, beta)
      lr = np.log(pi / game.ref_K)
      bracket = game.pref_against(mix) - 0.5 - game.tau * lr
      centred = -(4 / game.tau) * (mix * (bracket + game.tau * mix @ lr)) @ (
          _softmax_jacobian(pi))
      uncentred = -(4 / game.tau) * (mix * bracket) @ _softmax_jacobian(pi)
      grad = methods.expected_gradient(methods.ipo_md(beta), theta, game)
      np.testing.assert_allclose(grad, centred, atol=TOL)
      # The missing term is -4 E_pi'[lr] (pi' - pi), since E_pi'[grad log pi]
      # = pi' - pi is not 0 off-policy.
      np.testing.assert_allclose(grad - uncentred, -4 * (mix @ lr) * (mix - pi),
                                 atol=TOL)
      self.assertGreater(np.abs(grad - uncentred).max(), 1e-5)

  @parameterized.parameters(0.125, 0.25, 0.5, 0.9)
  def test_fixed_point_prop_5_2(self, beta):
    for game, _ in _random_cases(4, seed=1):
      pi_beta = nash.ipo_md_fixed_point(game, beta)
      mix = games.geometric_mixture(pi_beta, game.ref_K, beta)
      # A best response to its own mixture ...
      np.testing.assert_allclose(pi_beta, nash.best_response(game, mix),
                                 atol=1e-12)
      # ... whose mixture is the Nash equilibrium at tau / (1 - beta) ...
      ne_eff = nash.nash_equilibrium(game.with_tau(game.tau / (1 - beta)))
      np.testing.assert_allclose(mix, ne_eff, atol=TOL)
      self.assertGreater(np.abs(pi_beta - ne_eff).max(), 1e-5)
      # ... where the IPO-MD loss and Nash-MD-PG(beta) are both stationary.
      theta = np.log(pi_beta)
      for method in (methods.ipo_md(beta), methods.nash_md_pg(beta)):
        grad = methods.expected_gradient(method, theta, game)
        self.assertLess(np.abs(grad).max(), TOL, msg=method.name)
      root = dynamics.stationary_point(methods.ipo_md(beta), game)
      np.testing.assert_allclose(root, pi_beta, atol=TOL)

  def test_nash_md_pg_gradient_is_on_policy_field(self):
    """E_{y~pi}[grad log pi(y) (p(y > pi') - 1/2 - tau lr(y))], negated."""
    beta = 0.3
    for game, theta in _random_cases(6):
      pi = games.softmax(theta)
      mix = games.geometric_mixture(pi, game.ref_K, beta)
      field = game.pref_against(mix) - 0.5 - game.tau * np.log(pi / game.ref_K)
      want = -(pi * field) @ _softmax_jacobian(pi)
      grad = methods.expected_gradient(methods.nash_md_pg(beta), theta, game)
      np.testing.assert_allclose(grad, want, atol=1e-12)

  def test_beta_one_is_offline_ipo_on_the_reference(self):
    for game, theta in _random_cases(3):
      np.testing.assert_allclose(
          methods.expected_gradient(methods.ipo_md(1.0), theta, game),
          methods.expected_gradient(methods.offline_ipo(game.ref_K), theta,
                                    game), atol=1e-12)

  def test_offline_ipo_optimum(self):
    """arXiv 2310.12036 Eq. 9: pi* proportional to ref exp(p(y > mu)/tau)."""
    rng = np.random.default_rng(3)
    for game, _ in _random_cases(6):
      data = rng.dirichlet(np.ones(game.num_actions))
      optimum = nash.best_response(game, data)
      grad = methods.expected_gradient(methods.offline_ipo(data),
                                       np.log(optimum), game)
      self.assertLess(np.abs(grad).max(), TOL)
      self.assertGreater(nash.exploitability(game, optimum), 1e-4)


class OnlineDpoTest(parameterized.TestCase):

  @parameterized.parameters(
      (0.7, (0.401, 0.599), (0.155, 0.845)),
      (0.9, (0.310, 0.690), (0.012, 0.988)),
      (0.5, (0.5, 0.5), (0.5, 0.5)),
  )
  def test_two_action_numbers_of_section_4_4(self, p, want_nash, want_dpo):
    """tau = 0.5, uniform ref, p = p(y2 > y1)."""
    game = games.two_action_game(1 - p, tau=0.5)
    ne = nash.nash_equilibrium(game)
    dpo = dynamics.stationary_point(methods.online_dpo(), game)
    np.testing.assert_allclose(ne, want_nash, atol=5e-4)
    np.testing.assert_allclose(dpo, want_dpo, atol=5e-4)

  @parameterized.parameters(0.05, 0.3, 0.45, 0.5, 0.55, 0.7, 0.95)
  def test_stationary_point_is_the_rlhf_solution_not_nash(self, p):
    """Thm. F.6/F.7: pi1/pi2 = exp(logit(p(1 > 2))/tau); NE iff p = 1/2."""
    tau = 0.5
    game = games.two_action_game(p, tau=tau)
    dpo = dynamics.stationary_point(methods.online_dpo(), game)
    self.assertAlmostEqual(np.log(dpo[0] / dpo[1]),
                           np.log(p / (1 - p)) / tau, delta=1e-8)
    gap = np.abs(dpo - nash.nash_equilibrium(game)).max()
    if p == 0.5:
      self.assertLess(gap, TOL)
    else:
      self.assertGreater(gap, 1e-3)

  def test_nash_is_not_stationary_on_random_games(self):
    for game, _ in _random_cases(6):
      grad = methods.expected_gradient(methods.online_dpo(),
                                       np.log(nash.nash_equilibrium(game)),
                                       game)
      self.assertGreater(np.abs(grad).max(), 1e-3)


class ContrastiveHandFormulaTest(absltest.TestCase):
  """The tabular plumbing against per-pair gradients written by hand."""

  def _enumerated(self, game, theta, pair_grad):
    pi = games.softmax(theta)
    jac = _softmax_jacobian(pi)
    lr = np.log(pi / game.ref_K)
    total = np.zeros_like(pi)
    for y in range(game.num_actions):
      for yp in range(game.num_actions):
        h = lr[y] - lr[yp]
        coef = pair_grad(h, game.prefs_KxK[y, yp], game.tau)
        total += pi[y] * pi[yp] * coef * (jac[y] - jac[yp])
    return total

  def test_online_dpo(self):
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    for game, theta in _random_cases(3):
      want = self._enumerated(
          game, theta, lambda h, p, tau: -tau * (p - sigmoid(tau * h)))
      got = methods.expected_gradient(methods.online_dpo(), theta, game)
      np.testing.assert_allclose(got, want, atol=1e-12)

  def test_online_slic(self):
    def coef(h, p, tau):
      return -tau * p * (1 - tau * h > 0) + tau * (1 - p) * (1 + tau * h > 0)
    for game, theta in _random_cases(3):
      want = self._enumerated(game, theta, coef)
      got = methods.expected_gradient(methods.online_slic(), theta, game)
      np.testing.assert_allclose(got, want, atol=1e-12)


class EstimatorTest(absltest.TestCase):

  def test_contrastive_variance_never_exceeds_non_contrastive(self):
    """App. D over many random games and policies."""
    rng = np.random.default_rng(7)
    for i in range(200):
      k = (2, 3, 4, 5)[i % 4]
      game = games.random_game(k, rng, tau=(0.1, 1.0)[i % 4 // 2])
      theta = rng.normal(size=k) * rng.uniform(0.0, 4.0)
      v = methods.estimator_variances(theta, game)
      self.assertLess(v["mean_gap"], 1e-12)
      self.assertLessEqual(v["var_contrastive"],
                           v["var_noncontrastive"] * (1 + 1e-12) + 1e-15)
      if v["condition"] >= 0:  # Prop. D.1's condition: the factor 2.
        self.assertLessEqual(v["var_contrastive"],
                             v["var_noncontrastive"] / 2 + 1e-15)

  def test_condition_of_prop_d1_gives_a_factor_two(self):
    # pi = ref is concentrated on action 0, which ties with everything, so
    # only the pair (1, 2) carries signal and <g(1), g(2)> = 0.715 > 0.
    game = games.PreferenceGame(
        prefs_KxK=[[0.5, 0.5, 0.5], [0.5, 0.5, 0.9], [0.5, 0.1, 0.5]],
        ref_K=[0.9, 0.05, 0.05], tau=1.0)
    v = methods.estimator_variances(np.log(game.ref_K), game)
    self.assertAlmostEqual(v["condition"], 2 * 0.05 ** 2 * 0.715 * 0.16,
                           delta=1e-12)
    self.assertLessEqual(v["var_contrastive"], v["var_noncontrastive"] / 2)
    self.assertGreater(v["var_contrastive"], 0.0)

  def test_two_action_counterexample_has_equal_variances(self):
    # pi uniform, p = 0.7. With two logits <g(y), g(y')> is twice the
    # one-logit value, so the condition is -0.01 here (-0.005 when the
    # counterexample is written with one logit).
    v = methods.estimator_variances(np.zeros(2),
                                    games.two_action_game(0.7, tau=0.5))
    self.assertAlmostEqual(v["condition"], -0.01, delta=1e-12)
    self.assertAlmostEqual(v["var_contrastive"], 0.005, delta=1e-12)
    self.assertAlmostEqual(v["var_noncontrastive"], 0.005, delta=1e-12)

  def test_sampled_estimators_are_unbiased(self):
    """Mean of sampled-loss gradients = exact expected gradient.

    One method per sampling path: on-policy pairs (shared by DPO and SLiC),
    mixture pairs, data pairs, and the policy/mixture pairs of Nash-MD-PG.
    """
    game, theta = _random_cases(1, taus=(0.5,), sizes=(4,))[0]
    data = games.softmax(np.arange(4.0))
    for method in (methods.online_ipo(), methods.ipo_md(0.25),
                   methods.offline_ipo(data), methods.nash_md_pg(0.25)):
      draws = methods.sampled_gradients(method, theta, game, seed=0,
                                        num_draws=2000, num_pairs=8)
      exact = methods.expected_gradient(method, theta, game)
      stderr = draws.std(axis=0) / np.sqrt(draws.shape[0])
      np.testing.assert_array_less(np.abs(draws.mean(axis=0) - exact),
                                   5 * stderr + 1e-9, err_msg=method.name)

if __name__ == "__main__":
  absltest.main()
