# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Every method's loss on a tabular game, computed by `ipo_md.losses`.

A tabular policy is pi = softmax(theta) over K actions; a "sequence" is one
action, so its log-prob is log pi(action) and the token log-probs of the
policy-gradient losses are that one value ([batch, 1]). The exact expected
loss enumerates all K^2 pairs (y, y') as one batch with weights
SG[s(y) s'(y')] for the method's samplers s, s', and jax.grad of it is the
exact expected gradient. The sampled loss feeds sampled pairs instead. Both
call the same loss function as the T5 trainer (docs/methods.md):

  method          y from          y' from          loss
  online IPO      pi              pi               losses.ipo_loss
  IPO-MD(beta)    pi_beta         pi_beta          losses.ipo_loss
  offline IPO     mu (data)       mu (data)        losses.ipo_loss
  online DPO      pi              pi               losses.dpo_loss
  online SLiC     pi              pi               losses.slic_loss
  Nash-MD-PG(b)   pi              pi_beta          losses.nash_md_pg_loss
  self-play       pi              pi               losses.nash_md_pg_loss

where pi_beta is proportional to pi^(1-beta) ref^beta. Functions named
without a leading underscore that return numbers run in float64 inside
`jax.enable_x64(True)` and return numpy values.
"""

import functools
from typing import Callable

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from ipo_md import losses
from ipo_md.theory import games as games_lib

PreferenceGame = games_lib.PreferenceGame
PairLoss = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def in_float64(fn):
  """Runs `fn` with float64 enabled locally and returns numpy values."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.enable_x64(True):
      return jax.tree.map(np.asarray, fn(*args, **kwargs))
  return wrapper


def log_mixture(log_pi_K: jax.Array, log_ref_K: jax.Array, beta: float):
  """log pi_beta = log_softmax((1 - beta) log pi + beta log ref)."""
  return jax.nn.log_softmax((1.0 - beta) * log_pi_K + beta * log_ref_K)


def _all_pairs(num_actions: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (y_B, yp_B) of the K^2 ordered pairs, B = K^2."""
  actions = np.arange(num_actions)
  return np.repeat(actions, num_actions), np.tile(actions, num_actions)


def _sample_pairs(rng, log_y_K, log_yp_K, num_pairs: int):
  rng_y, rng_yp = jax.random.split(rng)
  return (jax.random.categorical(rng_y, log_y_K, shape=(num_pairs,)),
          jax.random.categorical(rng_yp, log_yp_K, shape=(num_pairs,)))


@struct.dataclass(kw_only=True)
class ContrastiveMethod:
  """Both responses from one sampler; the loss sees the policy's h only.

  A pytree: `beta` and `data_K` are leaves, so one compiled function serves
  every beta and every data policy of a given (K, tau).

  Attributes:
    name_format: label for reports, formatted with `beta`.
    pair_loss: `losses.ipo_loss`, `losses.dpo_loss` or `losses.slic_loss`.
    beta: the sampler is the geometric mixture with weight beta on ref
      (0: online, the policy itself).
    data_K: a fixed sampler mu (offline); overrides beta.
  """

  name_format: str = struct.field(pytree_node=False)
  pair_loss: PairLoss = struct.field(pytree_node=False)
  beta: float | jax.Array = 0.0
  data_K: jax.Array | None = None

  @property
  def name(self) -> str:
    return self.name_format.format(beta=float(self.beta))

  def log_sampler(self, log_pi_K, game: PreferenceGame) -> jax.Array:
    if self.data_K is not None:
      return jnp.log(jnp.asarray(self.data_K))
    log_ref = jnp.log(jnp.asarray(game.ref_K))
    return jax.lax.stop_gradient(log_mixture(log_pi_K, log_ref, self.beta))

  def pair_losses(self, theta_K, game: PreferenceGame, y_B, yp_B):
    """[B] per-pair losses of pairs (y_B, yp_B) under the policy theta."""
    log_pi = jax.nn.log_softmax(theta_K)
    log_ref = jnp.log(jnp.asarray(game.ref_K))
    pref_B = jnp.asarray(game.prefs_KxK)[y_B, yp_B]
    loss_B, _ = self.pair_loss(log_pi[y_B], log_pi[yp_B], log_ref[y_B],
                               log_ref[yp_B], pref_B, tau=game.tau)
    return loss_B

  def expected_loss(self, theta_K, game: PreferenceGame) -> jax.Array:
    y_B, yp_B = _all_pairs(game.num_actions)
    sampler = jnp.exp(self.log_sampler(jax.nn.log_softmax(theta_K), game))
    weights_B = jax.lax.stop_gradient(sampler[y_B] * sampler[yp_B])
    return jnp.sum(weights_B * self.pair_losses(theta_K, game, y_B, yp_B))

  def sampled_loss(self, theta_K, game, rng, num_pairs: int) -> jax.Array:
    log_s = self.log_sampler(jax.nn.log_softmax(theta_K), game)
    y_B, yp_B = _sample_pairs(rng, log_s, log_s, num_pairs)
    return jnp.mean(self.pair_losses(theta_K, game, y_B, yp_B))


@struct.dataclass(kw_only=True)
class PolicyGradientMethod:
  """Nash-MD-PG(beta): y from pi, y' from pi_beta, gradient through y only.

  Attributes:
    name_format: label for reports, formatted with `beta`.
    beta: weight of ref in the opponent's mixture (0: self-play); a leaf.
    kl_estimator: passed to `losses.nash_md_pg_loss`; with one token per
      sequence both estimators coincide.
  """

  name_format: str = struct.field(pytree_node=False)
  beta: float | jax.Array = 0.0
  kl_estimator: str = struct.field(pytree_node=False, default="reward_to_go")

  @property
  def name(self) -> str:
    return self.name_format.format(beta=float(self.beta))

  def pair_losses(self, theta_K, game: PreferenceGame, y_B, yp_B):
    log_pi = jax.nn.log_softmax(theta_K)
    log_ref = jnp.log(jnp.asarray(game.ref_K))
    pref_B = jnp.asarray(game.prefs_KxK)[y_B, yp_B]
    loss_B, _ = losses.nash_md_pg_loss(
        log_pi[y_B][:, None], log_ref[y_B][:, None],
        jnp.ones((y_B.shape[0], 1), log_pi.dtype), pref_B, tau=game.tau,
        kl_estimator=self.kl_estimator)
    return loss_B

  def _log_samplers(self, theta_K, game):
    log_pi = jax.lax.stop_gradient(jax.nn.log_softmax(theta_K))
    return log_pi, log_mixture(log_pi, jnp.log(jnp.asarray(game.ref_K)),
                               self.beta)

  def expected_loss(self, theta_K, game: PreferenceGame) -> jax.Array:
    y_B, yp_B = _all_pairs(game.num_actions)
    log_y, log_yp = self._log_samplers(theta_K, game)
    weights_B = jnp.exp(log_y[y_B] + log_yp[yp_B])
    return jnp.sum(weights_B * self.pair_losses(theta_K, game, y_B, yp_B))

  def sampled_loss(self, theta_K, game, rng, num_pairs: int) -> jax.Array:
    y_B, yp_B = _sample_pairs(rng, *self._log_samplers(theta_K, game),
                              num_pairs)
    return jnp.mean(self.pair_losses(theta_K, game, y_B, yp_B))


Method = ContrastiveMethod | PolicyGradientMethod


def online_ipo() -> ContrastiveMethod:
  return ContrastiveMethod(name_format="online IPO", pair_loss=losses.ipo_loss)


def ipo_md(beta: float) -> ContrastiveMethod:
  _check_beta(beta)
  return ContrastiveMethod(name_format="IPO-MD({beta:g})",
                           pair_loss=losses.ipo_loss, beta=float(beta))


def offline_ipo(data_K: np.ndarray) -> ContrastiveMethod:
  data = np.asarray(data_K, np.float64)
  if data.ndim != 1 or np.any(data <= 0) or abs(data.sum() - 1.0) > 1e-9:
    raise ValueError(
        f"data_K must be a positive probability vector; got {data_K}.")
  return ContrastiveMethod(name_format="offline IPO",
                           pair_loss=losses.ipo_loss, data_K=data)


def online_dpo() -> ContrastiveMethod:
  return ContrastiveMethod(name_format="online DPO", pair_loss=losses.dpo_loss)


def online_slic() -> ContrastiveMethod:
  return ContrastiveMethod(name_format="online SLiC",
                           pair_loss=losses.slic_loss)


def nash_md_pg(beta: float) -> PolicyGradientMethod:
  _check_beta(beta)
  return PolicyGradientMethod(name_format="Nash-MD-PG({beta:g})",
                              beta=float(beta))


def self_play() -> PolicyGradientMethod:
  return PolicyGradientMethod(name_format="self-play")


def _check_beta(beta: float) -> None:
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta={beta} must lie in [0, 1] (the weight on ref).")


@jax.jit
def _value_and_grad(method: Method, theta_K, game: PreferenceGame):
  return jax.value_and_grad(method.expected_loss)(theta_K, game)


@in_float64
def expected_loss(method: Method, theta_K, game: PreferenceGame):
  """Exact E[loss] over all K^2 pairs, through the training loss function."""
  return _value_and_grad(method, jnp.asarray(theta_K, jnp.float64), game)[0]


@in_float64
def expected_gradient(method: Method, theta_K, game: PreferenceGame):
  """Exact d E[loss] / d theta, through the training loss function."""
  return _value_and_grad(method, jnp.asarray(theta_K, jnp.float64), game)[1]


@functools.partial(jax.jit, static_argnums=4)
def _sampled_gradients(method, theta_K, game, keys, num_pairs):
  grad_fn = jax.grad(lambda t, key: method.sampled_loss(t, game, key,
                                                        num_pairs))
  return jax.vmap(grad_fn, in_axes=(None, 0))(theta_K, keys)


@in_float64
def sampled_gradients(method: Method, theta_K, game: PreferenceGame, *,
                      seed: int, num_draws: int, num_pairs: int):
  """[num_draws, K] independent gradients of the sampled loss."""
  keys = jax.random.split(jax.random.key(seed), num_draws)
  return _sampled_gradients(method, jnp.asarray(theta_K, jnp.float64), game,
                            keys, num_pairs)


@jax.jit
def _self_play_gradient(theta_K, game, opponent_K):
  def objective(theta):
    log_pi = jax.nn.log_softmax(theta)
    pi = jnp.exp(log_pi)
    kl = jnp.sum(pi * (log_pi - jnp.log(game.ref_K)))
    return pi @ game.prefs_KxK @ opponent_K - game.tau * kl
  return jax.grad(objective)(theta_K)


@in_float64
def self_play_gradient(theta_K, game: PreferenceGame, opponent_K):
  """grad_theta [pi^T P SG(opponent) - tau KL(pi || ref)] (Prop. 4.2)."""
  return _self_play_gradient(jnp.asarray(theta_K, jnp.float64), game,
                             jnp.asarray(opponent_K, jnp.float64))


def polish_stationary_point(method: Method, game: PreferenceGame,
                            pi0_K: np.ndarray) -> np.ndarray:
  """Newton-polishes a point where the exact expected gradient vanishes.

  Root-finding (scipy hybr) on the expected gradient from a nearby `pi0_K`,
  with the last logit pinned to 0 (softmax logits have one redundant
  direction, and the gradient sums to 0). From far away hybr can run to the
  simplex's boundary; `dynamics.stationary_point` supplies a close start.

  Args:
    method: any method of this module.
    game: the game.
    pi0_K: starting policy, close to the stationary point.

  Returns:
    [K] the stationary policy; raises RuntimeError if the polish fails.
  """
  with jax.enable_x64(True):
    def residual(free):
      theta = jnp.append(jnp.asarray(free), 0.0)
      return np.asarray(_value_and_grad(method, theta, game)[1])[:-1]
    start = np.log(pi0_K)
    solution = optimize.root(residual, start[:-1] - start[-1], method="hybr",
                             options={"xtol": 1e-14})
    if np.max(np.abs(residual(solution.x))) > 1e-10:
      raise RuntimeError(
          f"No stationary point of {method.name} found near {pi0_K}: "
          f"{solution.message}")
  return games_lib.softmax(np.append(solution.x, 0.0))


def _ipo_pair_gradients(theta_K, game, stop_yp: bool) -> jax.Array:
  """[K^2, K] per-pair gradients of `losses.ipo_loss` over all pairs."""
  y_B, yp_B = _all_pairs(game.num_actions)

  def pair_losses(theta):
    log_pi = jax.nn.log_softmax(theta)
    log_pi_yp = log_pi[yp_B]
    if stop_yp:
      log_pi_yp = jax.lax.stop_gradient(log_pi_yp)
    log_ref = jnp.log(game.ref_K)
    loss_B, _ = losses.ipo_loss(log_pi[y_B], log_pi_yp, log_ref[y_B],
                                log_ref[yp_B], game.prefs_KxK[y_B, yp_B],
                                tau=game.tau)
    return loss_B

  return jax.jacrev(pair_losses)(theta_K)


@jax.jit
def _estimator_variances(theta_K, game):
  y_B, yp_B = _all_pairs(game.num_actions)
  pi = jax.nn.softmax(theta_K)
  weights_B = pi[y_B] * pi[yp_B]
  contrastive_BxK = game.tau / 4 * _ipo_pair_gradients(theta_K, game, False)
  x1_BxK = game.tau / 2 * _ipo_pair_gradients(theta_K, game, True)
  x2_BxK = 2.0 * contrastive_BxK - x1_BxK

  def mean_and_variance(x_BxK):
    mean_K = weights_B @ x_BxK
    centred_BxK = x_BxK - mean_K[None, :]
    return mean_K, weights_B @ jnp.sum(jnp.square(centred_BxK), axis=1)

  mean_c, var_c = mean_and_variance(contrastive_BxK)
  mean_x1, var_x1 = mean_and_variance(x1_BxK)
  return {
      "var_contrastive": var_c,
      "var_noncontrastive": var_x1,
      "mean_gap": jnp.max(jnp.abs(mean_c - mean_x1)),
      "condition": -(weights_B @ jnp.sum(x1_BxK * x2_BxK, axis=1)),
  }


@in_float64
def estimator_variances(theta_K, game: PreferenceGame) -> dict[str, float]:
  """Variance of the contrastive vs non-contrastive estimators (App. D).

  With y, y' iid from pi and f = p(y>y') - 1/2 - tau h(y, y'), the
  non-contrastive sample is X1 = -grad log pi(y) f and the contrastive one
  (X1 + X2)/2 with X2 = grad log pi(y') f. Both come from `losses.ipo_loss`:
  its per-pair gradient is (4/tau) (X1 + X2)/2, and with SG on log pi(y') it
  is (2/tau) X1. Variances are traces of covariances over the K^2 pairs.

  Args:
    theta_K: policy logits.
    game: the game.

  Returns:
    A dict with `var_contrastive`, `var_noncontrastive` (Var X1),
    `mean_gap` (|E contrastive - E X1|_inf, which is 0) and `condition`,
    E[<grad log pi(y), grad log pi(y')> f^2] = -E<X1, X2>; when it is >= 0,
    Var contrastive <= Var X1 / 2.
  """
  return _estimator_variances(jnp.asarray(theta_K, jnp.float64), game)
