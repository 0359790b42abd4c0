# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Training trajectories of tabular policies, exact or sampled.

One function trains softmax logits with any optax optimiser on either the
exact expected loss of a method (all K^2 pairs) or its sampled estimate (a
batch of pairs drawn from the method's samplers), in float64, as one jitted
`lax.scan`. With `ipo_md.optim.adafactor_t5` this is the update rule that
trains the T5 policies, applied to the same loss functions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import special

from ipo_md.theory import games as games_lib
from ipo_md.theory import methods as methods_lib

PreferenceGame = games_lib.PreferenceGame


def train(
    method: methods_lib.Method,
    game: PreferenceGame,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    theta0_K: np.ndarray | None = None,
    num_pairs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
  """Trains tabular logits on a method's loss and returns the trajectory.

  Args:
    method: a method of `ipo_md.theory.methods`.
    game: the game (its tau is the loss's tau).
    optimizer: an optax optimiser, e.g. `optax.sgd(lr)` for the exact
      gradient flow or `ipo_md.optim.adafactor_t5(...)`.
    num_steps: number of updates.
    theta0_K: initial logits; default log pi_ref (Alg. 1 of arXiv 2310.12036
      starts at the reference).
    num_pairs: None for the exact expected loss; otherwise the number of
      sampled pairs per step.
    seed: PRNG seed of the sampled pairs.

  Returns:
    [num_steps + 1, K] float64 policies, the initial one first.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  if num_pairs is not None and num_pairs < 1:
    raise ValueError(f"num_pairs={num_pairs} must be >= 1 or None (exact).")
  theta0 = np.log(game.ref_K) if theta0_K is None else theta0_K
  with jax.enable_x64(True):
    rngs = jax.random.split(jax.random.key(seed), num_steps)
    policies = np.asarray(_scan_updates(
        method, game, jnp.asarray(theta0, jnp.float64), rngs,
        optimizer=optimizer, num_pairs=num_pairs))
  return np.concatenate([games_lib.softmax(theta0)[None], policies])


@functools.partial(jax.jit, static_argnames=("optimizer", "num_pairs"))
def _scan_updates(method, game, theta_K, rngs, *, optimizer, num_pairs):
  """[num_steps, K] policies after each update.

  Compiled once per optimiser object, method type, K and tau: methods and
  games are pytrees, so their arrays, beta included, are traced.
  """
  def loss_fn(theta, rng):
    if num_pairs is None:
      return method.expected_loss(theta, game)
    return method.sampled_loss(theta, game, rng, num_pairs)

  def step(carry, rng):
    theta, opt_state = carry
    grads = jax.grad(loss_fn)(theta, rng)
    updates, opt_state = optimizer.update(grads, opt_state, theta)
    theta = optax.apply_updates(theta, updates)
    return (theta, opt_state), jax.nn.softmax(theta)

  _, policies = jax.lax.scan(step, (theta_K, optimizer.init(theta_K)), rngs)
  return policies


def exploitabilities(game: PreferenceGame, policies_TxK: np.ndarray):
  """[T] exploitability of each policy of a trajectory (nash.exploitability)."""
  values_TxK = np.log(game.ref_K) + policies_TxK @ game.prefs_KxK.T / game.tau
  kl_T = np.sum(special.rel_entr(policies_TxK, game.ref_K), axis=1)
  return game.tau * (special.logsumexp(values_TxK, axis=1) + kl_T) - 0.5


def decaying_learning_rate(
    initial: float, final: float, num_steps: int
) -> optax.Schedule:
  """Exponential decay from `initial` to `final` over `num_steps`.

  Sampled gradients keep a noise floor at a constant step size; decaying the
  step lets the last iterate settle (Robbins-Monro), which is what a
  1e-3 exploitability target needs.
  """
  if not 0.0 < final <= initial:
    raise ValueError(f"Need 0 < final={final} <= initial={initial}.")
  return optax.exponential_decay(
      initial, transition_steps=num_steps, decay_rate=final / initial
  )


_WARMUP_STEPS = 2000
# One optimiser object, so that the compiled warm-up is reused across calls.
_WARMUP_OPTIMIZER = optax.adam(
    decaying_learning_rate(0.1, 1e-4, _WARMUP_STEPS))


def stationary_point(
    method: methods_lib.Method, game: PreferenceGame, *,
    theta0_K: np.ndarray | None = None,
) -> np.ndarray:
  """A policy where a method's exact expected gradient vanishes.

  Follows the exact expected gradient for 2000 steps of Adam with a decaying
  step (which copes with the very different gradient scales of IPO, DPO and
  SLiC) to get close, then Newton-polishes the root
  (`methods.polish_stationary_point`).

  Args:
    method: a method of `ipo_md.theory.methods`.
    game: the game.
    theta0_K: initial logits; default log pi_ref.

  Returns:
    [K] the stationary policy the dynamics reach from `theta0_K`.
  """
  policies = train(method, game, optimizer=_WARMUP_OPTIMIZER,
                   num_steps=_WARMUP_STEPS, theta0_K=theta0_K)
  return methods_lib.polish_stationary_point(method, game, policies[-1])
