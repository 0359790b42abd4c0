"""The train step: a pure function that the Trainer compiles once.

prepare (sample, label; no gradient) -> loss and gradient -> Adafactor, with
gradient accumulation over microbatches. No logging, no host syncs.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ipo_md.trainer import train_state as train_state_lib


def _microbatch_grads(objective, params, frozen, batch, rng):
  prepared, prep_metrics = objective.prepare(params, frozen, batch,
                                             jax.random.fold_in(rng, 0))
  (loss, metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
      params, frozen, prepared, jax.random.fold_in(rng, 1))
  return grads, {**prep_metrics, **metrics, "loss": loss}


def _split(batch: dict, n: int) -> dict:
  def one(x):
    if x.shape[0] % n:
      raise ValueError(
          f"batch of {x.shape[0]} rows is not divisible by "
          f"num_microbatches={n}.")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree_util.tree_map(one, batch)


def compute_grads(objective, params, frozen, batch, rng, num_microbatches=1):
  """Gradients and metrics averaged over `num_microbatches` equal slices."""
  if num_microbatches == 1:
    return _microbatch_grads(objective, params, frozen, batch, rng)
  micro = _split(batch, num_microbatches)

  def body(carry, xs):
    i, mb = xs
    grads, metrics = _microbatch_grads(objective, params, frozen, mb,
                                       jax.random.fold_in(rng, i))
    acc = jax.tree_util.tree_map(jnp.add, carry, (grads, metrics))
    return acc, None

  shapes = jax.eval_shape(
      lambda: _microbatch_grads(objective, params, frozen,
                                jax.tree_util.tree_map(lambda x: x[0], micro),
                                rng))
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros,
                          (jnp.arange(num_microbatches), micro))
  return jax.tree_util.tree_map(lambda x: x / num_microbatches, total)


def train_step(state: train_state_lib.TrainState, batch: dict, frozen: dict,
               *, objective: Any, tx: optax.GradientTransformation,
               schedule: optax.Schedule, num_microbatches: int = 1):
  """One optimisation step. Returns (new_state, metrics of scalars)."""
  rng = jax.random.fold_in(state.rng, state.step)
  grads, metrics = compute_grads(objective, state.params, frozen, batch, rng,
                                 num_microbatches)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      **metrics,
      "learning_rate": schedule(state.step),
      "grad_norm": optax.global_norm(grads),
      "update_norm": optax.global_norm(updates),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics
