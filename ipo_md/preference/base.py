"""The preference-signal interface: p(y > y' | x) for a batch of pairs.

Online methods label their own samples with a preference signal inside the
jitted train step. A trained preference model, an LLM judge and a programmatic
oracle all implement the same protocol, so the step never knows which it has.
"""

from typing import Protocol

import jax
import jax.numpy as jnp

from ipo_md import types


class PreferenceSignal(Protocol):
  """p(y > y' | x), traceable under jax.jit.

  `params` is the signal's own frozen parameter tree (None for signals without
  parameters); the trainer passes it as a separate, non-differentiated input.
  A signal whose class sets `shares_prompts = True` also accepts b prompts
  for R * b response rows (row r * b + i answers prompt i) and then encodes
  each prompt once; callers pass prompts once per row to any other signal.
  """

  def __call__(
      self,
      params: types.PyTree,
      inputs_BxLi: jax.Array,
      y_BxT: jax.Array,
      yp_BxT: jax.Array,
  ) -> jax.Array:
    """Returns p(y > y' | x), shape [batch], float32 in [0, 1]."""
    ...


def symmetrized(
    signal: PreferenceSignal,
    params: types.PyTree,
    inputs_BxLi: jax.Array,
    y_BxT: jax.Array,
    yp_BxT: jax.Array,
) -> jax.Array:
  """0.5 * (p(y, y') + 1 - p(y', y)): an exactly antisymmetric preference.

  A learned preference model is not antisymmetric by construction; the theory
  of online IPO (arXiv 2403.08635 Prop. 4.1; docs/methods.md) assumes it is.
  Both orders are evaluated in one call of `signal` on a doubled batch; a
  signal with `shares_prompts = True` (the learned models) gets each prompt
  once for its two rows and encodes it once.
  """
  inputs = inputs_BxLi
  if not shares_prompts(signal):
    inputs = jnp.concatenate([inputs_BxLi, inputs_BxLi], axis=0)
  both = signal(
      params,
      inputs,
      jnp.concatenate([y_BxT, yp_BxT], axis=0),
      jnp.concatenate([yp_BxT, y_BxT], axis=0),
  )
  p_fwd, p_bwd = jnp.split(both, 2, axis=0)
  return 0.5 * (p_fwd + 1.0 - p_bwd)


class RewardSignal(Protocol):
  """r(x, y), traceable under jax.jit (e.g. a Bradley-Terry reward model)."""

  def __call__(self, params: types.PyTree, inputs_BxLi: jax.Array,
               y_BxT: jax.Array) -> jax.Array:
    """Returns the reward of each response, shape [batch], float32."""
    ...


def role(signal) -> str | None:
  """The frozen role whose parameters `signal` reads ("preference",
  "reward"), or None for signals without parameters (an oracle)."""
  return getattr(signal, "role", None)


def params_for(signal, frozen: types.Frozen) -> types.PyTree:
  """The parameter tree of `signal` in a stage's frozen models."""
  name = role(signal)
  return None if name is None else getattr(frozen, name)


def shares_prompts(signal) -> bool:
  """Whether `signal` takes b prompts for R * b response rows (row r * b + i
  answers prompt i) and encodes each once; see PreferenceSignal."""
  return bool(getattr(signal, "shares_prompts", False))
