"""Faults on purpose, for tests/fault_injection_test.py: an SFT objective
whose loss is NaN at chosen steps, and a cheap evaluation.

`NaNAtSteps` knows the step it is in from the key the train step hands to
the loss: fold_in(fold_in(PRNGKey(seed), step - 1), 1) for step `step`
(1-based, as the console counts; one microbatch), so the fault lands at
exactly the chosen steps, on any mesh, after any resume, through gin:

    sft/pipeline.Stage.objective = @faults.NaNAtSteps
    faults.NaNAtSteps.steps = (3,)
"""

import dataclasses

import jax
import jax.numpy as jnp

from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives


def loss_key(seed: int, step: int) -> jax.Array:
  """The key the loss of 1-based step `step` receives (one microbatch)."""
  return jax.random.fold_in(
      jax.random.fold_in(jax.random.PRNGKey(seed), step - 1), 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NaNAtSteps:
  """SFT whose loss (and so its gradient) is NaN at `steps`.

  Attributes:
    models: the run's models.
    steps: 1-based steps whose update is non-finite.
    seed: the stage's LoopConfig.seed.
  """

  models: models_lib.Models
  steps: tuple[int, ...] = ()
  seed: int = 0
  batch_kind = objectives.SFT_KIND
  reads = ()
  rows_per_example = 1

  @property
  def _sft(self):
    return objectives.SFT(models=self.models)

  def prepare(self, params, frozen, batch, rng):
    return self._sft.prepare(params, frozen, batch, rng)

  def loss(self, params, frozen, batch, rng):
    loss, metrics = self._sft.loss(params, frozen, batch, rng)
    here = jax.random.key_data(rng) if jnp.issubdtype(
        rng.dtype, jax.dtypes.prng_key) else rng
    bad = jnp.zeros((), bool)
    for step in self.steps:
      bad |= jnp.all(here == loss_key(self.seed, step))
    # A product, so that the gradient is NaN too (as in a real divergence).
    return loss * jnp.where(bad, jnp.nan, 1.0), metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParamNorm:
  """A cheap evaluation: the global norm of the trained parameters. Tests
  patch `hook` to act while an evaluation runs.

  Attributes:
    models: the run's models.
  """

  models: models_lib.Models
  reads = ()
  data = None
  hook = None  # Called with no argument at the start of each evaluation.

  def build(self, mesh, seed: int):
    del mesh, seed
    norm = jax.jit(lambda p: jnp.sqrt(sum(
        jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(p))))

    def evaluate(params, frozen):
      del frozen
      if ParamNorm.hook is not None:
        ParamNorm.hook()  # pylint: disable=not-callable
      return {"eval/param_norm": float(norm(params))}

    return evaluate

  def finish(self, directory) -> None:
    del directory
