"""The train state: everything that changes during training, and nothing else.

Frozen models (reference, preference, reward) live outside the state (passed
to the step as their own argument), so they are neither differentiated nor
stored in the optimizer, and a checkpoint of the state is the trained model
alone.
"""

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ipo_md import types

NOT_HALTED = -1
# Bits of `TrainState.nonfinite_what`: which quantity was not finite.
LOSS, GRADIENTS, PARAMETERS = 1, 2, 4
WHAT = ((LOSS, "loss"), (GRADIENTS, "gradient"), (PARAMETERS, "parameters"))


class TrainState(flax.struct.PyTreeNode):
  """The trained model's state.

  Attributes:
    step: int32 scalar, optimisation steps completed (= global batches read).
    params: the trained model's parameters.
    opt_state: the optax state.
    rng: the run's base PRNG key (uint32 [2]); per-step keys are
      fold_in(rng, step), so a resumed run draws the same randomness.
    skipped: int32, updates skipped because they were not finite (the
      divergence guard's "skip" policy).
    nonfinite_step: int32, the step whose update was not finite and halted
      the run (-1: none). A halted state is the last finite one: the step
      that failed was not applied.
    nonfinite_what: int32 bit mask of LOSS | GRADIENTS | PARAMETERS.
  """

  step: jax.Array
  params: types.PyTree
  opt_state: optax.OptState
  rng: jax.Array
  skipped: jax.Array
  nonfinite_step: jax.Array
  nonfinite_what: jax.Array


def create(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  zero = jnp.zeros((), jnp.int32)
  return TrainState(
      step=zero, params=params, opt_state=tx.init(params),
      rng=jax.random.PRNGKey(seed), skipped=zero,
      nonfinite_step=jnp.full((), NOT_HALTED, jnp.int32), nonfinite_what=zero)


def describe_nonfinite(what: int) -> str:
  """'loss and gradient' from a bit mask."""
  names = [name for bit, name in WHAT if what & bit]
  return " and ".join(names) or "update"
