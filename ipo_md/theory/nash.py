# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Ground truth for tabular games: exploitability and the regularised NE.

These are numpy/scipy computations, independent of `ipo_md.losses`, so the
tests can hold the losses' stationary points against them. The regularised
Nash equilibrium pi*_tau is found by minimising the exploitability, a convex
function of pi that is zero exactly at pi*_tau (docs/methods.md):

  e(pi) = tau log sum_y ref(y) exp((P pi)_y / tau) + tau KL(pi || ref) - 1/2

with BFGS on softmax logits, then polished by Newton steps on the fixed-point
equation pi = BR(pi) so that it is exact to machine precision.
"""

import numpy as np
from scipy import optimize
from scipy import special

from ipo_md.theory import games as games_lib

PreferenceGame = games_lib.PreferenceGame


def best_response(game: PreferenceGame, opponent_K: np.ndarray) -> np.ndarray:
  """BR(opponent)(y) proportional to ref(y) exp(p(y > opponent) / tau)."""
  return special.softmax(
      np.log(game.ref_K) + game.pref_against(opponent_K) / game.tau
  )


def kl(pi_K: np.ndarray, ref_K: np.ndarray) -> float:
  """KL(pi || ref), with 0 log 0 = 0."""
  return float(np.sum(special.rel_entr(pi_K, ref_K)))


def exploitability(game: PreferenceGame, pi_K: np.ndarray) -> float:
  """max_pi' P_tau(pi' > pi) - 1/2 >= 0, zero only at the regularised NE."""
  best_value = game.tau * special.logsumexp(
      np.log(game.ref_K) + game.pref_against(pi_K) / game.tau
  )
  return float(best_value + game.tau * kl(pi_K, game.ref_K) - 0.5)


def _exploitability_and_logit_grad(
    theta_K: np.ndarray, game: PreferenceGame
) -> tuple[float, np.ndarray]:
  pi = games_lib.softmax(theta_K)
  # d e / d pi = P^T BR(pi) + tau (log(pi/ref) + 1); the softmax Jacobian
  # diag(pi) - pi pi^T maps it to the logits.
  d_pi = game.prefs_KxK.T @ best_response(game, pi) + game.tau * (
      np.log(pi / game.ref_K) + 1.0
  )
  return exploitability(game, pi), pi * (d_pi - pi @ d_pi)


def _centred_log(pi_K: np.ndarray) -> np.ndarray:
  log_pi = np.log(pi_K)
  return log_pi - log_pi.mean()


def solve_fixed_point(fixed_point_map, pi0_K: np.ndarray) -> np.ndarray:
  """Newton-polishes pi = F(pi) in centred log space, from a nearby pi0."""
  def residual(theta_K):
    pi = games_lib.softmax(theta_K)
    return theta_K - _centred_log(fixed_point_map(pi))

  solution = optimize.root(residual, _centred_log(pi0_K), method="hybr",
                           options={"xtol": 1e-14})
  # hybr reports "no further improvement" once it sits at machine precision,
  # so judge the answer by its residual, not by the solver's status.
  if np.max(np.abs(residual(solution.x))) > 1e-10:
    raise RuntimeError(f"Fixed-point polish failed: {solution.message}")
  return games_lib.softmax(solution.x)


def nash_equilibrium(game: PreferenceGame) -> np.ndarray:
  """The regularised Nash equilibrium pi*_tau of the game (docs/methods.md).

  Args:
    game: the game; its tau is the regularisation.

  Returns:
    [K] pi*_tau, with exploitability about 1e-15 and fixed-point residual
    |pi - BR(pi)|_inf about 1e-16.
  """
  result = optimize.minimize(
      _exploitability_and_logit_grad,
      np.zeros(game.num_actions),
      args=(game,),
      jac=True,
      method="BFGS",
      options={"gtol": 1e-12, "maxiter": 10_000},
  )
  pi = games_lib.softmax(result.x)
  return solve_fixed_point(lambda p: best_response(game, p), pi)


def fixed_point_residual(game: PreferenceGame, pi_K: np.ndarray) -> float:
  """|pi - BR(pi)|_inf: zero exactly at the NE."""
  return float(np.max(np.abs(pi_K - best_response(game, pi_K))))


def ipo_md_fixed_point(
    game: PreferenceGame, beta: float, *, damping: float | None = None,
    max_iters: int = 200_000, tol: float = 1e-10,
) -> np.ndarray:
  """The IPO-MD(beta) stationary point: a best response to its own mixture.

  Iterates pi <- (1 - a) pi + a BR(geometric_mixture(pi, ref, beta)) (the
  damped best-response iteration of docs/methods.md), then Newton-polishes.
  It does not use Prop. 5.2, so tests can check that the mixture is
  NE(tau/(1-beta)).

  Args:
    game: the game.
    beta: mixture weight on the reference, in [0, 1].
    damping: step a of the damped iteration; by default small enough for the
      map's rotation (about 1/(1 + (1/tau)^2)), capped at 0.5.
    max_iters: iteration budget before giving up.
    tol: stop when the sup-norm change is below this.

  Returns:
    [K] pi*_beta.
  """
  def fixed_point_map(pi):
    return best_response(game, games_lib.geometric_mixture(pi, game.ref_K,
                                                           beta))

  if damping is None:
    damping = min(0.5, 1.0 / (1.0 + ((1.0 - beta) / game.tau) ** 2))
  pi = game.ref_K.copy()
  for _ in range(max_iters):
    new_pi = (1.0 - damping) * pi + damping * fixed_point_map(pi)
    if np.max(np.abs(new_pi - pi)) < tol:
      break
    pi = new_pi
  else:
    raise RuntimeError(
        f"IPO-MD fixed point did not converge in {max_iters} damped steps "
        f"(damping={damping}); pass a smaller damping."
    )
  return solve_fixed_point(fixed_point_map, new_pi)
