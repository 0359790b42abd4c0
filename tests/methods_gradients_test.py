"""Every method's trainer objective against the exact theory of its loss.

On a policy whose completions are one token long (`methods_fakes.TabularNet`,
max_decode_length=1) with a tabular preference over that token, each
objective runs unchanged: its sampler (policy, mixture, or both in one call),
its labelling, teacher-forced scoring and loss. Its gradient averaged over
many sampled batches must equal the exact expected gradient of the same
method in the theory lab (`ipo_md.theory.methods`, an enumeration of the K^2
pairs through the same `ipo_md.losses` functions), within a statistical
tolerance: every coordinate within Z standard errors of the mean (the
standard error measured from the draws themselves), plus 1e-5 for float32.
With K = 4 coordinates per method a correct objective fails with probability
below 1e-5 at Z = 5. Each test also checks that the tolerance is tight enough
to tell the method from a neighbouring one (e.g. IPO-MD(0.5) from online
IPO). The offline objectives sample nothing and must match exactly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipo_md import losses
from ipo_md import types
from ipo_md.decoding import sampling
from ipo_md.theory import games
from ipo_md.theory import methods as theory
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives
from ipo_md.trainer import offline
from ipo_md.trainer import policy_gradient
from tests import methods_fakes as fakes

K = 4                      # actions (tokens 1..K); token 0 is the pad
NET = fakes.TabularNet(vocab_size=K + 1)
MODELS = models_lib.Models(policy=NET, reference=NET)
ONE_TOKEN = sampling.SamplingConfig(max_decode_length=1)
BATCH, DRAWS = 64, 256     # 16,384 sampled pairs per estimate
Z = 5.0                    # standard errors allowed per coordinate
FLOAT32_ATOL = 1e-5


def _game(tau, seed=0):
  return games.random_game(K, np.random.default_rng(seed), tau=tau)


THETA = np.random.default_rng(1).normal(size=K) * 0.8


def _frozen(game):
  return types.Frozen(reference=fakes.params_of(np.log(game.ref_K)))


def _sampled_grads(objective, game, *, seed=0):
  """[DRAWS, K] gradients of the objective's loss, one per sampled batch."""
  params = fakes.params_of(THETA)
  frozen = _frozen(game)
  batch = {"inputs": fakes.prompts(BATCH)}

  def one(key):
    prepare_key, loss_key = jax.random.split(key)
    prepared, _ = objective.prepare(params, frozen, batch, prepare_key)
    return jax.grad(lambda p: objective.loss(p, frozen, prepared,
                                             loss_key)[0])(params)

  keys = jax.random.split(jax.random.PRNGKey(seed), DRAWS)
  return fakes.action_grad(jax.jit(jax.vmap(one))(keys))


def _assert_matches(grads_NxK, exact_K, *, unlike_K=None):
  mean = grads_NxK.mean(axis=0)
  sem = grads_NxK.std(axis=0, ddof=1) / np.sqrt(grads_NxK.shape[0])
  bound = Z * sem + FLOAT32_ATOL
  assert np.all(np.abs(mean - exact_K) <= bound), (
      f"sampled mean {mean} vs exact {exact_K}: |diff| "
      f"{np.abs(mean - exact_K)} > {bound}")
  if unlike_K is not None:  # The test can tell this method from another.
    assert np.max(np.abs(mean - unlike_K) - bound) > 0, (mean, unlike_K)


def _pairwise(loss_fn, tau, beta, game):
  return objectives.OnlinePairwise(
      models=MODELS, loss_fn=functools.partial(loss_fn, tau=tau),
      sampling=ONE_TOKEN, beta=beta,
      preference=fakes.TabularPreference(game.prefs_KxK))


@pytest.mark.parametrize("name,loss_fn,theory_method,beta,tau", [
    ("online_ipo", losses.ipo_loss, theory.online_ipo(), 0.0, 0.5),
    ("ipo_md", losses.ipo_loss, theory.ipo_md(0.5), 0.5, 0.5),
    ("online_dpo", losses.dpo_loss, theory.online_dpo(), 0.0, 1.0),
    ("online_slic", losses.slic_loss, theory.online_slic(), 0.0, 0.5),
])
def test_online_contrastive_gradient_equals_the_theory(name, loss_fn,
                                                       theory_method, beta,
                                                       tau):
  game = _game(tau)
  grads = _sampled_grads(_pairwise(loss_fn, tau, beta, game), game)
  exact = theory.expected_gradient(theory_method, THETA, game)
  # IPO-MD is told apart from online IPO, the others from IPO-MD(0.5).
  other = theory.online_ipo() if name == "ipo_md" else dataclass_replace(
      theory_method, beta=0.5)
  _assert_matches(grads, exact,
                  unlike_K=theory.expected_gradient(other, THETA, game))


def dataclass_replace(method, **changes):
  return method.replace(**changes)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_nash_md_pg_gradient_equals_the_theory(beta):
  tau = 0.3
  game = _game(tau, seed=2)
  objective = policy_gradient.NashMDPG(
      models=MODELS, sampling=ONE_TOKEN, tau=tau, beta=beta,
      preference=fakes.TabularPreference(game.prefs_KxK))
  grads = _sampled_grads(objective, game)
  exact = theory.expected_gradient(theory.nash_md_pg(beta), THETA, game)
  # Self-play vs the best response to the reference (beta = 1).
  other = theory.nash_md_pg(1.0 if beta == 0.0 else 0.0)
  _assert_matches(grads, exact,
                  unlike_K=theory.expected_gradient(other, THETA, game))


def _linear_game(reward_K, tau):
  """P(i > j) = 1/2 + r_i - r_j: self-play on it is RLHF with reward r
  (E_y'[P(y > y')] - 1/2 = r(y) - E r, a constant shift)."""
  prefs = 0.5 + reward_K[:, None] - reward_K[None, :]
  ref = games.random_game(K, np.random.default_rng(3), tau=tau).ref_K
  return games.PreferenceGame(prefs_KxK=prefs, ref_K=ref, tau=tau)


@pytest.mark.parametrize("baseline", ["leave_one_out", "batch_mean", "none"])
def test_rlhf_gradient_equals_self_play_on_the_linear_game(baseline):
  tau = 0.2
  reward = np.array([0.1, 0.45, 0.0, 0.3])
  game = _linear_game(reward, tau)
  objective = policy_gradient.RLHF(
      models=MODELS, sampling=ONE_TOKEN, tau=tau, baseline=baseline,
      reward=fakes.TabularReward(reward))
  grads = _sampled_grads(objective, game)
  exact = theory.expected_gradient(theory.self_play(), THETA, game)
  # The theory's other handle on the same number: minus the ascent
  # direction of E_pi[r] - tau KL(pi || ref), through the linear game.
  np.testing.assert_allclose(
      exact, -theory.self_play_gradient(THETA, game, games.softmax(THETA)),
      atol=1e-12)
  _assert_matches(grads, exact,
                  unlike_K=theory.expected_gradient(theory.self_play(), THETA,
                                                    game.with_tau(2 * tau)))


@pytest.mark.parametrize("loss_fn,tau", [
    (losses.ipo_loss, 0.5), (losses.dpo_loss, 1.0), (losses.slic_loss, 0.5)])
def test_offline_gradient_is_exactly_the_theory(loss_fn, tau):
  """All K^2 ordered pairs once, labelled P[y, y']: the batch mean is the
  theory's expectation under a uniform data policy mu."""
  game = _game(tau, seed=4)
  y, yp = np.repeat(np.arange(K), K), np.tile(np.arange(K), K)
  batch = {"inputs": fakes.prompts(K * K),
           "chosen": jnp.asarray(y[:, None] + 1, jnp.int32),
           "rejected": jnp.asarray(yp[:, None] + 1, jnp.int32),
           "label": jnp.asarray(game.prefs_KxK[y, yp], jnp.float32)}
  objective = offline.OfflinePairwise(
      models=MODELS, loss_fn=functools.partial(loss_fn, tau=tau))
  params, frozen = fakes.params_of(THETA), _frozen(game)
  prepared, _ = objective.prepare(params, frozen, batch,
                                  jax.random.PRNGKey(0))
  grads = jax.grad(lambda p: objective.loss(p, frozen, prepared, None)[0])(
      params)
  mu = theory.ContrastiveMethod(name_format="offline", pair_loss=loss_fn,
                                data_K=games.uniform(K))
  exact = theory.expected_gradient(mu, THETA, game)
  np.testing.assert_allclose(fakes.action_grad(grads), exact, rtol=1e-5,
                             atol=1e-6)
  assert np.max(np.abs(exact)) > 1e-2  # Not a vacuous zero.
