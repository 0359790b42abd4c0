# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Finite preference games: one prompt, K responses, a preference matrix.

A game fixes everything the methods of docs/methods.md share: the matrix
P[i, j] = p(i > j) with P + P^T = 1 (so the diagonal is 1/2), a reference
policy with full support and the regularisation strength tau. Policies are
probability vectors over the K actions; the trained ones are softmaxes of
logits. Named games give the examples the document and the papers use.
"""

import dataclasses
import itertools

import jax
import numpy as np
from scipy import special

_SYMMETRY_ATOL = 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class PreferenceGame:
  """A regularised symmetric preference game (docs/methods.md).

  Attributes:
    prefs_KxK: P[i, j] = p(action i > action j), in [0, 1], P + P^T = 1.
    ref_K: the reference policy pi_ref, strictly positive, summing to 1.
    tau: the KL regularisation strength (> 0).
  """

  prefs_KxK: np.ndarray
  ref_K: np.ndarray
  tau: float

  def __post_init__(self):
    prefs = np.array(self.prefs_KxK, dtype=np.float64)
    ref = np.array(self.ref_K, dtype=np.float64)
    k = ref.shape[0] if ref.ndim == 1 else -1
    if ref.ndim != 1 or prefs.shape != (k, k) or k < 2:
      raise ValueError(
          f"Need ref_K of shape [K] and prefs_KxK of shape [K, K] with K >= 2;"
          f" got {ref.shape} and {prefs.shape}."
      )
    if np.any(prefs < 0) or np.any(prefs > 1):
      raise ValueError("prefs_KxK must hold probabilities in [0, 1].")
    asymmetry = np.max(np.abs(prefs + prefs.T - 1.0))
    if asymmetry > _SYMMETRY_ATOL:
      raise ValueError(
          f"prefs_KxK must satisfy P + P^T = 1 (max deviation {asymmetry:.3g})"
          "; symmetrise it with (P + 1 - P^T) / 2."
      )
    if np.any(ref <= 0) or abs(ref.sum() - 1.0) > 1e-9:
      raise ValueError(
          f"ref_K must be strictly positive and sum to 1; got {ref}."
      )
    if not 0.0 < self.tau < np.inf:
      raise ValueError(f"tau={self.tau} must be a finite float > 0.")
    for array in (prefs, ref):
      array.flags.writeable = False
    object.__setattr__(self, "prefs_KxK", prefs)
    object.__setattr__(self, "ref_K", ref)
    object.__setattr__(self, "tau", float(self.tau))

  @property
  def num_actions(self) -> int:
    return self.ref_K.shape[0]

  def with_tau(self, tau: float) -> "PreferenceGame":
    """The same preferences and reference with another tau."""
    return dataclasses.replace(self, tau=tau)

  def pref_against(self, opponent_K: np.ndarray) -> np.ndarray:
    """[K] p(y > opponent) = sum_y' P[y, y'] opponent(y')."""
    return self.prefs_KxK @ opponent_K


def _flatten_game(game: PreferenceGame):
  return (game.prefs_KxK, game.ref_K), game.tau


def _unflatten_game(tau, children) -> PreferenceGame:
  # Inside jit the leaves are tracers: bypass the numpy validation of
  # __post_init__, which already ran when the game was built.
  game = object.__new__(PreferenceGame)
  for field, value in zip(("prefs_KxK", "ref_K", "tau"), (*children, tau)):
    object.__setattr__(game, field, value)
  return game


# A pytree (arrays as leaves, tau static), so that jitted theory code
# compiles once per (K, tau) rather than once per game.
jax.tree_util.register_pytree_node(
    PreferenceGame, _flatten_game, _unflatten_game
)


def softmax(theta_K: np.ndarray) -> np.ndarray:
  """The tabular policy of logits theta."""
  return special.softmax(np.asarray(theta_K, np.float64))


def geometric_mixture(
    pi_K: np.ndarray, ref_K: np.ndarray, beta: float
) -> np.ndarray:
  """pi_beta proportional to pi^(1-beta) ref^beta (beta: the weight on ref)."""
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta={beta} must lie in [0, 1] (the weight on ref).")
  return softmax((1.0 - beta) * np.log(pi_K) + beta * np.log(ref_K))


def uniform(num_actions: int) -> np.ndarray:
  return np.full((num_actions,), 1.0 / num_actions)


def random_game(
    num_actions: int, rng: np.random.Generator, *, tau: float
) -> PreferenceGame:
  """A random game: P = (A + 1 - A^T)/2 with A uniform, ref ~ Dirichlet(1)."""
  a = rng.uniform(0.0, 1.0, (num_actions, num_actions))
  return PreferenceGame(
      prefs_KxK=(a + 1.0 - a.T) / 2.0,
      ref_K=rng.dirichlet(np.ones(num_actions)),
      tau=tau,
  )


def two_action_game(
    p: float, *, tau: float, ref_K: np.ndarray | None = None
) -> PreferenceGame:
  """Two actions with p(action 0 > action 1) = p (arXiv 2403.08635 App. F)."""
  return PreferenceGame(
      prefs_KxK=np.array([[0.5, p], [1.0 - p, 0.5]]),
      ref_K=uniform(2) if ref_K is None else ref_K,
      tau=tau,
  )


def cyclic_eps_game(
    eps: float, *, tau: float, ref_K: np.ndarray | None = None
) -> PreferenceGame:
  """A 3-action, nearly cyclic game whose unregularised NE is p_eps's.

  The p_eps game of arXiv 2312.00886 §3.2 is reported to have the Nash
  equilibrium (1/3 + eps/2, 1/3 + eps/2, 1/3 - eps); its matrix itself was not
  found. This stand-in is the cycle 0 > 1 > 2 > 0 with P = 1/2 + A and the
  antisymmetric A[0, 1] = s (1/3 - eps), A[1, 2] = A[2, 0] = s (1/3 + eps/2),
  s = 3/4: A pi = 0 exactly at that point, so it is the unregularised NE, and
  every entry stays in [0, 1] for |eps| <= 1/3. eps = 0 is rock-paper-scissors
  with p = 3/4.

  Args:
    eps: asymmetry of the cycle, |eps| <= 1/3.
    tau: regularisation strength.
    ref_K: reference policy; uniform by default (as in App. E).

  Returns:
    The game.
  """
  if not abs(eps) <= 1.0 / 3.0:
    raise ValueError(f"eps={eps} must satisfy |eps| <= 1/3.")
  scale = 0.75
  a = np.zeros((3, 3))
  a[0, 1] = scale * (1.0 / 3.0 - eps)
  a[1, 2] = a[2, 0] = scale * (1.0 / 3.0 + eps / 2.0)
  return PreferenceGame(
      prefs_KxK=0.5 + a - a.T,
      ref_K=uniform(3) if ref_K is None else ref_K,
      tau=tau,
  )


def cyclic_eps_nash(eps: float) -> np.ndarray:
  """The unregularised NE of `cyclic_eps_game(eps)`."""
  third = 1.0 / 3.0
  return np.array([third + eps / 2.0, third + eps / 2.0, third - eps])


# Three non-transitive dice: each beats the next with probability 5/9
# (arXiv 2312.00886 App. C.1).
NONTRANSITIVE_DICE = (
    (2, 2, 4, 4, 9, 9), (1, 1, 6, 6, 8, 8), (3, 3, 5, 5, 7, 7))


def dice_game(
    dice=NONTRANSITIVE_DICE, *, tau: float, ref_K: np.ndarray | None = None
) -> PreferenceGame:
  """p(i > j) = P(die i rolls higher than die j), ties counted one half."""
  k = len(dice)
  prefs = np.empty((k, k))
  for i, j in itertools.product(range(k), repeat=2):
    faces = np.array(dice[i])[:, None], np.array(dice[j])[None, :]
    prefs[i, j] = np.mean(faces[0] > faces[1]) + 0.5 * np.mean(
        faces[0] == faces[1]
    )
  return PreferenceGame(
      prefs_KxK=prefs,
      ref_K=uniform(k) if ref_K is None else ref_K,
      tau=tau,
  )
