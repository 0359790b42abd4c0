"""Training tabular policies with the framework's optimiser and losses."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import optax

from ipo_md import optim
from ipo_md.theory import dynamics
from ipo_md.theory import games
from ipo_md.theory import methods
from ipo_md.theory import nash

START = np.log([0.8, 0.1, 0.1])
STEPS = 1000
# Module-level optimisers: the compiled training scan is cached per object.
ADAFACTOR = optim.adafactor_t5(
    dynamics.decaying_learning_rate(0.1, 1e-3, STEPS),
    multiply_by_parameter_scale=False)  # tabular logits start at ~0
SGD = optax.sgd(0.02)


class SampledTrainingTest(parameterized.TestCase):

  @parameterized.parameters(0, 1)
  def test_adafactor_drives_online_ipo_exploitability_below_1e_3(self, seed):
    """Sampled pairs, soft labels, T5X Adafactor, a 3-action cyclic game."""
    game = games.cyclic_eps_game(0.2, tau=0.1)
    policies = dynamics.train(methods.online_ipo(), game, optimizer=ADAFACTOR,
                              num_steps=STEPS, theta0_K=START, num_pairs=16,
                              seed=seed)
    exploit = dynamics.exploitabilities(game, policies)
    self.assertGreater(exploit[0], 0.1)
    self.assertLess(exploit[-1], 1e-3)
    np.testing.assert_allclose(policies[-1], nash.nash_equilibrium(game),
                               atol=0.05)  # e(pi) is flat near the NE

  def test_exploitabilities_match_the_scalar_function(self):
    game = games.cyclic_eps_game(0.1, tau=0.3)
    policies = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(
        dynamics.exploitabilities(game, policies),
        [nash.exploitability(game, p) for p in policies], atol=1e-15)


class ExactDynamicsTest(absltest.TestCase):

  def test_each_method_converges_to_its_fixed_point(self):
    game = games.cyclic_eps_game(0.2, tau=0.1)
    data = np.array([0.2, 0.5, 0.3])
    runs = [(methods.online_ipo(), nash.nash_equilibrium(game)),
            (methods.offline_ipo(data), nash.best_response(game, data))]
    runs += [(methods.ipo_md(b), nash.ipo_md_fixed_point(game, b))
             for b in (0.25, 0.75)]
    for method, fixed_point in runs:
      policies = dynamics.train(method, game, optimizer=SGD, num_steps=2000,
                                theta0_K=START)
      np.testing.assert_allclose(policies[-1], fixed_point, atol=1e-6,
                                 err_msg=method.name)
    exploit = dynamics.exploitabilities(game, policies)
    self.assertGreater(exploit[-1], 1e-3)  # IPO-MD(0.75) stops short of NE

  def test_bad_arguments(self):
    game = games.two_action_game(0.7, tau=1.0)
    with self.assertRaisesRegex(ValueError, "num_steps=0 must be >= 1"):
      dynamics.train(methods.online_ipo(), game, optimizer=SGD, num_steps=0)
    with self.assertRaisesRegex(ValueError, "num_pairs=0 must be >= 1"):
      dynamics.train(methods.online_ipo(), game, optimizer=SGD, num_steps=1,
                     num_pairs=0)


if __name__ == "__main__":
  absltest.main()
