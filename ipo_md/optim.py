"""T5X-style Adafactor on optax, and the learning-rate schedules T5 users expect.

The paper trains with "Adafactor, decay 0.8" at a constant 1e-4
(docs/methods.md, the paper's T5X set-up), i.e. T5X's defaults: factored second moments, decay-rate
exponent 0.8, update clipping at 1.0, no momentum, and steps scaled by the
parameter's RMS. `optax.adafactor` implements exactly that; this module fixes
its defaults and adds the schedules, so gin files bind one function.
"""

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_constant", "rsqrt", "warmup_cosine")


def make_schedule(
    kind: str = "constant",
    *,
    base_learning_rate: float,
    warmup_steps: int = 0,
    decay_steps: int = 0,
) -> optax.Schedule:
  """Learning rate as a function of the step.

  Args:
    kind: "constant" (the paper's choice); "warmup_constant" (linear from 0 to
      `base_learning_rate` over `warmup_steps`, then constant); "rsqrt" (T5
      pre-training: `base_learning_rate * rsqrt(max(step, warmup_steps))`,
      i.e. constant `base/sqrt(warmup)` during warm-up, then decaying);
      "warmup_cosine" (linear from 0 over `warmup_steps`, then a cosine
      decay to 0 at step `decay_steps`).
    base_learning_rate: peak learning rate (> 0).
    warmup_steps: length of the warm-up (>= 0; > 0 for "rsqrt").
    decay_steps: "warmup_cosine" only: the step where the rate reaches 0
      (> warmup_steps; the stage's num_steps in OptimizerConfig).

  Returns:
    An optax schedule.
  """
  if base_learning_rate <= 0:
    raise ValueError(
        f"base_learning_rate={base_learning_rate} must be > 0."
    )
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps={warmup_steps} must be >= 0.")
  if kind == "constant":
    return optax.constant_schedule(base_learning_rate)
  if kind == "warmup_constant":
    if warmup_steps == 0:
      return optax.constant_schedule(base_learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, base_learning_rate, warmup_steps),
            optax.constant_schedule(base_learning_rate),
        ],
        [warmup_steps],
    )
  if kind == "warmup_cosine":
    if decay_steps <= warmup_steps:
      raise ValueError(
          f"The warmup_cosine schedule decays to 0 at decay_steps="
          f"{decay_steps}, which must exceed warmup_steps={warmup_steps}.")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_learning_rate,
        warmup_steps=warmup_steps, decay_steps=decay_steps, end_value=0.0)
  if kind == "rsqrt":
    if warmup_steps <= 0:
      raise ValueError(
          "The rsqrt schedule needs warmup_steps > 0 (it is "
          "base * rsqrt(max(step, warmup_steps))); got 0."
      )

    return lambda step: base_learning_rate * jnp.reciprocal(
        jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps))
    )
  raise ValueError(
      f"Unknown learning-rate schedule {kind!r}; choose one of {SCHEDULES}."
  )


def adafactor_t5(
    learning_rate: float | optax.Schedule,
    *,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_dim_size_to_factor: int = 128,
    momentum: float | None = None,
) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (Shazeer & Stern 2018, arXiv 1804.04235).

  Args:
    learning_rate: a float or an optax schedule.
    decay_rate: second-moment decay exponent (T5X and the paper: 0.8).
    clipping_threshold: update clipping by RMS (1.0); None disables it.
    multiply_by_parameter_scale: scale steps by the parameter's RMS (T5X: yes).
      Turn it off for parameters initialised at zero, e.g. tabular logits.
    min_dim_size_to_factor: factor the second moment of a matrix when its two
      largest dimensions are at least this big (T5X's rule for 2-D kernels).
    momentum: None (T5X: no first moment) or a decay in (0, 1).

  Returns:
    An optax GradientTransformation.
  """
  if not 0.0 < decay_rate <= 1.0:
    raise ValueError(f"Adafactor decay_rate={decay_rate} must be in (0, 1].")
  if clipping_threshold is not None and clipping_threshold < 1.0:
    raise ValueError(
        f"Adafactor clipping_threshold={clipping_threshold} must be >= 1 or "
        "None (no clipping)."
    )
  return optax.adafactor(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      clipping_threshold=clipping_threshold,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      min_dim_size_to_factor=min_dim_size_to_factor,
      momentum=momentum,
  )
