"""The train state: everything that changes during training, and nothing else.

The reference and preference models are frozen and live outside the state
(passed to the step as their own argument), so they are neither differentiated
nor stored in the optimizer, and a checkpoint of the state is the policy alone.
"""

import flax.struct
import jax
import optax

from ipo_md import types


class TrainState(flax.struct.PyTreeNode):
  """step: int32 scalar; params: the policy; opt_state: optax state;
  rng: the run's base PRNG key (uint32 [2]); per-step keys are
  fold_in(rng, step), so a resumed run draws the same randomness."""

  step: jax.Array
  params: types.PyTree
  opt_state: optax.OptState
  rng: jax.Array


def create(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.PRNGKey(seed),
  )
