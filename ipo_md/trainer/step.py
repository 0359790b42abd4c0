"""The train step: a pure function that the Trainer compiles once.

prepare (sample, label; no gradient) -> loss and gradient -> Adafactor, with
gradient accumulation over microbatches, and a divergence guard. No logging,
no host syncs.

`train_step` is the whole step as one program. The same step also comes in
three phases, each a pure function the Trainer compiles separately so that
`profiling.PhaseTimer` can time them without a device sync: `sample_phase`
(the objective's `sample`: completions and the reference's log-probs),
`label_phase` (its `label`: the preference or reward signal) and
`update_phase` (loss, gradient, optimizer, guard). The phases draw the same
random numbers as `train_step` (microbatch i of step s uses
fold_in(fold_in(rng, s), i), its preparation fold_in(that, 0) and its loss
fold_in(that, 1)), so they sample the same tokens and compute the same
update; only XLA's fusion across the phase boundaries may differ, which can
move the last bits of a float.

The divergence guard. A step whose loss, gradient or new parameters are not
finite is never applied. With `nonfinite="stop"` (the default) the state then
stays exactly the last finite one (step counter included) and records the
failing step in `nonfinite_step`; every later step leaves it unchanged, so
the loop can stop, save that finite state and report the step. With
`nonfinite="skip"` the update is dropped, the data advances and `skipped`
counts it; after `max_skipped` skips the state halts as with "stop".
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ipo_md.trainer import train_state as train_state_lib

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuardConfig:
  """What to do with a non-finite update (see the module docstring).

  Attributes:
    nonfinite: "stop" (halt at the first one) or "skip" (drop it, count it).
    max_skipped: with "skip", the number of dropped updates after which the
      run halts anyway.
  """

  nonfinite: str = "stop"
  max_skipped: int = 10

  def __post_init__(self):
    if self.nonfinite not in NONFINITE_POLICIES:
      raise ValueError(
          f"GuardConfig.nonfinite={self.nonfinite!r}; choose one of "
          f"{NONFINITE_POLICIES}.")
    if (isinstance(self.max_skipped, bool)
        or not isinstance(self.max_skipped, int) or self.max_skipped < 0):
      raise ValueError(
          f"GuardConfig.max_skipped={self.max_skipped!r} must be an int >= 0.")


def _loss_grads(objective, params, frozen, prepared, rng):
  (loss, metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
      params, frozen, prepared, jax.random.fold_in(rng, 1))
  return grads, {**metrics, "loss": loss}


def _microbatch_grads(objective, params, frozen, batch, rng):
  prepared, prep_metrics = objective.prepare(params, frozen, batch,
                                             jax.random.fold_in(rng, 0))
  grads, metrics = _loss_grads(objective, params, frozen, prepared, rng)
  return grads, {**prep_metrics, **metrics}


def _split(batch: dict, n: int) -> dict:
  def one(x):
    if x.shape[0] % n:
      raise ValueError(
          f"batch of {x.shape[0]} rows is not divisible by "
          f"num_microbatches={n}.")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree_util.tree_map(one, batch)


def _mean_scan(fn, rng, n, xs):
  """The mean over i < n of fn(fold_in(rng, i), xs[i]) (xs stacked [n, ...])."""

  def body(carry, inp):
    i, x = inp
    out = fn(jax.random.fold_in(rng, i), x)
    return jax.tree_util.tree_map(jnp.add, carry, out), None

  shapes = jax.eval_shape(
      lambda: fn(rng, jax.tree_util.tree_map(lambda x: x[0], xs)))
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(n), xs))
  return jax.tree_util.tree_map(lambda x: x / n, total)


def compute_grads(objective, params, frozen, batch, rng, num_microbatches=1):
  """Gradients and metrics averaged over `num_microbatches` equal slices."""
  fn = lambda r, mb: _microbatch_grads(objective, params, frozen, mb, r)
  if num_microbatches == 1:
    return fn(rng, batch)
  return _mean_scan(fn, rng, num_microbatches,
                    _split(batch, num_microbatches))


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _guard(state, new, loss, grads, guard: GuardConfig):
  """The state after the guard (see the module docstring)."""
  what = (jnp.where(jnp.isfinite(loss), 0, train_state_lib.LOSS)
          | jnp.where(_all_finite(grads), 0, train_state_lib.GRADIENTS)
          | jnp.where(_all_finite(new.params), 0,
                      train_state_lib.PARAMETERS)).astype(jnp.int32)
  ok = what == 0
  halted = state.nonfinite_step != train_state_lib.NOT_HALTED
  if guard.nonfinite == "skip":
    skipped = state.skipped + jnp.where(ok, 0, 1).astype(jnp.int32)
    halt_now = ~halted & (skipped > guard.max_skipped)
    advance = ~halted & ~halt_now
  else:
    skipped = state.skipped
    halt_now = ~halted & ~ok
    advance = ~halted & ok
  apply = advance & ok
  # One conditional for the whole tree, not a select per leaf: with a select
  # per leaf, XLA's CPU fusion pass ran superlinearly in the depth (an
  # 8-layer model's step compiled in 118 s instead of 21 s).
  params, opt_state = jax.lax.cond(
      apply, lambda: (new.params, new.opt_state),
      lambda: (state.params, state.opt_state))
  return state.replace(
      step=jnp.where(advance, state.step + 1, state.step),
      params=params,
      opt_state=opt_state,
      skipped=jnp.where(halted | halt_now, state.skipped, skipped),
      nonfinite_step=jnp.where(halt_now, state.step, state.nonfinite_step),
      nonfinite_what=jnp.where(halt_now, what, state.nonfinite_what),
  ), what


def has_phases(objective) -> bool:
  """Whether the objective splits `prepare` into `sample` and `label`."""
  return callable(getattr(objective, "sample", None)) and callable(
      getattr(objective, "label", None))


def _step_rng(state) -> jax.Array:
  return jax.random.fold_in(state.rng, state.step)


def _per_microbatch(fn, rng, n: int, batch: dict, *stacked):
  """fn(rng_i, batch_i, *stacked_i) for each of n microbatches, outputs
  stacked [n, ...] (n = 1: one call on the whole batch, nothing stacked)."""
  if n == 1:
    return fn(rng, batch, *stacked)
  return jax.lax.map(
      lambda a: fn(jax.random.fold_in(rng, a[0]), *a[1:]),
      (jnp.arange(n), _split(batch, n), *stacked))


def sample_phase(state: train_state_lib.TrainState, batch: dict, frozen: Any,
                 *, objective: Any, num_microbatches: int = 1):
  """Phase 1 of a step: `objective.sample` per microbatch (see the module
  docstring). Returns the samples (stacked [n, ...] for n > 1 microbatches)."""
  return _per_microbatch(
      lambda r, mb: objective.sample(state.params, frozen, mb,
                                     jax.random.fold_in(r, 0)),
      _step_rng(state), num_microbatches, batch)


def label_phase(state: train_state_lib.TrainState, batch: dict, frozen: Any,
                samples: Any, *, objective: Any, num_microbatches: int = 1):
  """Phase 2: `objective.label` of phase 1's samples. Returns (prepared,
  metrics averaged over the microbatches)."""
  prepared, metrics = _per_microbatch(
      lambda r, mb, s: objective.label(state.params, frozen, mb, s,
                                       jax.random.fold_in(r, 0)),
      _step_rng(state), num_microbatches, batch, samples)
  if num_microbatches > 1:
    metrics = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), metrics)
  return prepared, metrics


def update_phase(state: train_state_lib.TrainState, prepared: Any,
                 prepare_metrics: dict, frozen: Any, *, objective: Any,
                 tx: optax.GradientTransformation, schedule: optax.Schedule,
                 num_microbatches: int = 1,
                 guard: GuardConfig = GuardConfig()):
  """Phase 3: loss, gradient, optimizer and guard on phase 2's `prepared`.
  Returns (new_state, metrics), as `train_step`."""
  rng = _step_rng(state)
  fn = lambda r, p: _loss_grads(objective, state.params, frozen, p, r)
  if num_microbatches == 1:
    grads, metrics = fn(rng, prepared)
  else:
    grads, metrics = _mean_scan(fn, rng, num_microbatches, prepared)
  return _apply(state, grads, {**prepare_metrics, **metrics}, tx=tx,
                schedule=schedule, guard=guard)


def train_step(state: train_state_lib.TrainState, batch: dict, frozen: Any,
               *, objective: Any, tx: optax.GradientTransformation,
               schedule: optax.Schedule, num_microbatches: int = 1,
               guard: GuardConfig = GuardConfig()):
  """One optimisation step. Returns (new_state, metrics of scalars)."""
  grads, metrics = compute_grads(objective, state.params, frozen, batch,
                                 _step_rng(state), num_microbatches)
  return _apply(state, grads, metrics, tx=tx, schedule=schedule, guard=guard)


def _apply(state, grads, metrics, *, tx, schedule, guard):
  """The optimizer step on averaged gradients, behind the guard."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(params=params, opt_state=opt_state)
  new_state, what = _guard(state, new, metrics["loss"], grads, guard)
  metrics = {
      **metrics,
      "learning_rate": schedule(state.step),
      "grad_norm": optax.global_norm(grads),
      "update_norm": optax.global_norm(updates),
      "guard/nonfinite": (what != 0).astype(jnp.float32),
      "guard/skipped": new_state.skipped.astype(jnp.float32),
      "guard/halted": (new_state.nonfinite_step
                       != train_state_lib.NOT_HALTED).astype(jnp.float32),
  }
  return new_state, metrics
