# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Every training objective of ipo-md, as a pure function of log-probabilities.

Why a module of its own: the losses are where the methods of arXiv 2403.08635
(online IPO, IPO-MD), arXiv 2312.00886 (Nash-MD-PG) and their baselines
actually differ, so they must be checkable against hand maths without a model,
a mesh or a sampler. Each function takes per-sequence (or per-token)
log-probabilities of the policy and of the frozen reference, the preference
signal and scalar hyper-parameters, and returns

  (loss_B, metrics)

where `loss_B` is the per-example loss of shape [batch] (float32, or float64
when the inputs are float64, as in the tabular theory lab) and `metrics` maps
names to scalar batch means. The trainer averages `loss_B` (or weights it);
`ipo_md.theory` feeds the same functions tabular log-probs, so the theory
checks the code that trains the T5 policies.

The contrastive losses share one metric vocabulary:

  loss, rewards/margin, rewards/accuracy, signal/mean,
  logps/policy_y, logps/policy_yp, logps/ref_y, logps/ref_yp

with h = [log pi(y) - log pi_ref(y)] - [log pi(y') - log pi_ref(y')].
`rewards/margin` and `rewards/accuracy` are the log-ratio margin and the
accuracy of the preferred response over the other, expected under the soft
label p: (2p - 1) h and p 1[h > 0] + (1 - p) 1[h < 0] + 1/2 1[h = 0]. For an
offline (chosen, rejected) pair (p = 1) they are h and 1[h > 0]; both are
invariant to swapping y and y' (with p -> 1 - p). `signal/mean` is the mean
label p (the policy-gradient losses: the mean preference or reward).
docs/methods.md derives every loss and names the paper section it comes from.
"""

import numbers

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]

KL_ESTIMATORS = ("reward_to_go", "per_token")
LABEL_MODES = ("bernoulli", "argmax")


def _check_tau(tau: float) -> float:
  if (
      isinstance(tau, bool)
      or not isinstance(tau, numbers.Real)
      or not 0.0 < float(tau) < float("inf")
  ):
    raise ValueError(
        f"tau={tau!r} must be a finite Python float > 0 (the regularisation "
        "strength; docs/methods.md); pass e.g. tau=1.0."
    )
  return float(tau)


def _as_float(x: jax.typing.ArrayLike) -> jax.Array:
  """Upcasts to at least float32 (bf16 -> f32; f64 stays f64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_same_shape(rank: int, **arrays: jax.typing.ArrayLike) -> None:
  shapes = {name: jnp.shape(a) for name, a in arrays.items()}
  for name, shape in shapes.items():
    if len(shape) != rank:
      raise ValueError(
          f"{name} must have rank {rank}, got shape {shape}. Pass one value "
          "per example" + (" and token" if rank == 2 else "") + "."
      )
  if len(set(shapes.values())) != 1:
    raise ValueError(f"Shapes must match, got {shapes}.")


def _check_pair_inputs(
    policy_logps_y_B, policy_logps_yp_B, ref_logps_y_B, ref_logps_yp_B, pref_B
) -> tuple[jax.Array, ...]:
  _check_same_shape(
      1,
      policy_logps_y_B=policy_logps_y_B,
      policy_logps_yp_B=policy_logps_yp_B,
      ref_logps_y_B=ref_logps_y_B,
      ref_logps_yp_B=ref_logps_yp_B,
      pref_B=pref_B,
  )
  return tuple(
      _as_float(a)
      for a in (
          policy_logps_y_B,
          policy_logps_yp_B,
          ref_logps_y_B,
          ref_logps_yp_B,
          pref_B,
      )
  )


def _pair_metrics(loss_B, h_B, pref_B, logps: tuple[jax.Array, ...]) -> Metrics:
  """Metrics shared by the contrastive losses (batch means)."""
  policy_y_B, policy_yp_B, ref_y_B, ref_yp_B = logps
  # Expected accuracy under the soft label: y wins with probability p; a tie
  # (h == 0, e.g. at pi = pi_ref) counts one half. Swap-invariant.
  correct_B = (
      pref_B * (h_B > 0) + (1.0 - pref_B) * (h_B < 0) + 0.5 * (h_B == 0)
  )
  return {
      "loss": jnp.mean(loss_B),
      # The preferred response's margin under the label: p h + (1 - p) (-h).
      "rewards/margin": jnp.mean((2.0 * pref_B - 1.0) * h_B),
      "rewards/accuracy": jnp.mean(correct_B),
      "signal/mean": jnp.mean(pref_B),
      "logps/policy_y": jnp.mean(policy_y_B),
      "logps/policy_yp": jnp.mean(policy_yp_B),
      "logps/ref_y": jnp.mean(ref_y_B),
      "logps/ref_yp": jnp.mean(ref_yp_B),
  }


def _log_ratio_margin(logps: tuple[jax.Array, ...]) -> jax.Array:
  policy_y_B, policy_yp_B, ref_y_B, ref_yp_B = logps
  return (policy_y_B - ref_y_B) - (policy_yp_B - ref_yp_B)


def ipo_loss(
    policy_logps_y_B: jax.typing.ArrayLike,
    policy_logps_yp_B: jax.typing.ArrayLike,
    ref_logps_y_B: jax.typing.ArrayLike,
    ref_logps_yp_B: jax.typing.ArrayLike,
    pref_B: jax.typing.ArrayLike,
    *,
    tau: float,
) -> tuple[jax.Array, Metrics]:
  """Soft-label IPO: a regression of h onto (p - 1/2) / tau.

    loss = (h - (p - 1/2) / tau)^2

  This is `p (h - 1/(2 tau))^2 + (1-p) (-h - 1/(2 tau))^2`, both orderings of
  the pair weighted by the preference, minus a constant of (p, tau)
  (arXiv 2403.08635 §4, Eq. 11; docs/methods.md). With p = 1 it is offline
  IPO's Eq. 17 of arXiv 2310.12036, `(h - 1/(2 tau))^2`, for a
  (chosen, rejected) pair. Online IPO samples y, y' from the policy; IPO-MD
  (arXiv 2403.08635 §5) uses this loss unchanged, only its sampler draws both responses from
  the geometric mixture of policy and reference, and h stays the policy's.

  Args:
    policy_logps_y_B: [batch] log pi_theta(y|x), the sequence log-probs.
    policy_logps_yp_B: [batch] log pi_theta(y'|x).
    ref_logps_y_B: [batch] log pi_ref(y|x).
    ref_logps_yp_B: [batch] log pi_ref(y'|x).
    pref_B: [batch] p(y > y'|x) in [0, 1]; 1.0 for an offline chosen/rejected
      pair.
    tau: regularisation strength (> 0).

  Returns:
    (loss_B [batch], metrics), with the extra metric `ipo/target`, the mean
    regression target (p - 1/2)/tau.
  """
  tau = _check_tau(tau)
  *logps, pref_B = _check_pair_inputs(
      policy_logps_y_B, policy_logps_yp_B, ref_logps_y_B, ref_logps_yp_B, pref_B
  )
  h_B = _log_ratio_margin(logps)
  target_B = (pref_B - 0.5) / tau
  loss_B = jnp.square(h_B - target_B)
  metrics = _pair_metrics(loss_B, h_B, pref_B, logps)
  metrics["ipo/target"] = jnp.mean(target_B)
  return loss_B, metrics


def dpo_loss(
    policy_logps_y_B: jax.typing.ArrayLike,
    policy_logps_yp_B: jax.typing.ArrayLike,
    ref_logps_y_B: jax.typing.ArrayLike,
    ref_logps_yp_B: jax.typing.ArrayLike,
    pref_B: jax.typing.ArrayLike,
    *,
    tau: float,
) -> tuple[jax.Array, Metrics]:
  """Soft-label (online) DPO: a logistic loss on tau * h.

    loss = -p log sigma(tau h) - (1 - p) log sigma(-tau h)

  (DPO is arXiv 2305.18290 §4; its online soft-label form is a baseline of
  arXiv 2403.08635 §6; docs/methods.md.) tau multiplies h inside the
  sigmoid. With p = 1 this is offline DPO, -log sigma(tau h).

  Args:
    policy_logps_y_B: [batch] log pi_theta(y|x).
    policy_logps_yp_B: [batch] log pi_theta(y'|x).
    ref_logps_y_B: [batch] log pi_ref(y|x).
    ref_logps_yp_B: [batch] log pi_ref(y'|x).
    pref_B: [batch] p(y > y'|x) in [0, 1].
    tau: inverse temperature of the logistic model (> 0).

  Returns:
    (loss_B [batch], metrics), with the extra metric `dpo/implied_pref`, the
    mean sigma(tau h) that the policy implies for p.
  """
  tau = _check_tau(tau)
  *logps, pref_B = _check_pair_inputs(
      policy_logps_y_B, policy_logps_yp_B, ref_logps_y_B, ref_logps_yp_B, pref_B
  )
  h_B = _log_ratio_margin(logps)
  loss_B = -pref_B * jax.nn.log_sigmoid(tau * h_B) - (
      1.0 - pref_B
  ) * jax.nn.log_sigmoid(-tau * h_B)
  metrics = _pair_metrics(loss_B, h_B, pref_B, logps)
  metrics["dpo/implied_pref"] = jnp.mean(jax.nn.sigmoid(tau * h_B))
  return loss_B, metrics


def slic_loss(
    policy_logps_y_B: jax.typing.ArrayLike,
    policy_logps_yp_B: jax.typing.ArrayLike,
    ref_logps_y_B: jax.typing.ArrayLike,
    ref_logps_yp_B: jax.typing.ArrayLike,
    pref_B: jax.typing.ArrayLike,
    *,
    tau: float,
) -> tuple[jax.Array, Metrics]:
  """Soft-label (online) SLiC: a hinge on tau * h with margin 1.

    loss = p max(0, 1 - tau h) + (1 - p) max(0, 1 + tau h)

  (docs/methods.md.) The exact SLiC form used in arXiv 2403.08635 was not
  found. This is the default form: a hinge on the log-ratio difference, as in
  TRL's `loss_type="hinge"`, i.e. a margin of 1/tau nats. The SLiC-HF variant
  of arXiv 2305.10425 (no reference ratio, plus a cross-entropy term) is a
  different objective: `slic_hf_loss`.

  Args:
    policy_logps_y_B: [batch] log pi_theta(y|x).
    policy_logps_yp_B: [batch] log pi_theta(y'|x).
    ref_logps_y_B: [batch] log pi_ref(y|x).
    ref_logps_yp_B: [batch] log pi_ref(y'|x).
    pref_B: [batch] p(y > y'|x) in [0, 1].
    tau: inverse margin (> 0).

  Returns:
    (loss_B [batch], metrics), with the extra metric `slic/active`, the mean
    preference-weighted fraction of hinges that are active (non-zero).
  """
  tau = _check_tau(tau)
  *logps, pref_B = _check_pair_inputs(
      policy_logps_y_B, policy_logps_yp_B, ref_logps_y_B, ref_logps_yp_B, pref_B
  )
  h_B = _log_ratio_margin(logps)
  hinge_y_B = jax.nn.relu(1.0 - tau * h_B)
  hinge_yp_B = jax.nn.relu(1.0 + tau * h_B)
  loss_B = pref_B * hinge_y_B + (1.0 - pref_B) * hinge_yp_B
  metrics = _pair_metrics(loss_B, h_B, pref_B, logps)
  metrics["slic/active"] = jnp.mean(
      pref_B * (hinge_y_B > 0) + (1.0 - pref_B) * (hinge_yp_B > 0)
  )
  return loss_B, metrics


def slic_hf_loss(
    policy_logps_y_B: jax.typing.ArrayLike,
    policy_logps_yp_B: jax.typing.ArrayLike,
    ref_logps_y_B: jax.typing.ArrayLike,
    ref_logps_yp_B: jax.typing.ArrayLike,
    pref_B: jax.typing.ArrayLike,
    *,
    tau: float,
    regularizer: float = 1.0,
) -> tuple[jax.Array, Metrics]:
  """SLiC-HF's form (arXiv 2305.10425, its rank-calibration loss with the
  cross-entropy regulariser): no reference ratio, plus a likelihood term.

    d    = log pi(y) - log pi(y')
    loss = p max(0, 1 - tau d) + (1 - p) max(0, 1 + tau d)
           - regularizer (p log pi(y) + (1 - p) log pi(y'))

  The alternative to `slic_loss` for the open "SLiC form" choice (which form
  arXiv 2403.08635 used was not found). SLiC-HF regularises towards the SFT
  target; a pair task has none, so the preferred response (the chosen one,
  or each response weighted by its label) stands in for it. The reference
  log-probs are accepted for the shared signature and not used; a margin of
  1/tau nats as in `slic_loss`.

  Args:
    policy_logps_y_B: [batch] log pi_theta(y|x).
    policy_logps_yp_B: [batch] log pi_theta(y'|x).
    ref_logps_y_B: [batch] unused (same signature as the other pair losses).
    ref_logps_yp_B: [batch] unused.
    pref_B: [batch] p(y > y'|x) in [0, 1].
    tau: inverse margin (> 0).
    regularizer: weight lambda >= 0 of the likelihood term.

  Returns:
    (loss_B [batch], metrics); `rewards/margin` and `rewards/accuracy` are
    still those of the log-ratio h, comparable with the other losses.
  """
  tau = _check_tau(tau)
  if (isinstance(regularizer, bool) or not isinstance(regularizer,
                                                      numbers.Real)
      or not 0.0 <= float(regularizer) < float("inf")):
    raise ValueError(
        f"regularizer={regularizer!r} must be a finite float >= 0 (the "
        "weight of the likelihood term; 0 drops it).")
  *logps, pref_B = _check_pair_inputs(
      policy_logps_y_B, policy_logps_yp_B, ref_logps_y_B, ref_logps_yp_B, pref_B
  )
  policy_y_B, policy_yp_B = logps[0], logps[1]
  d_B = policy_y_B - policy_yp_B
  nll_B = -(pref_B * policy_y_B + (1.0 - pref_B) * policy_yp_B)
  loss_B = (pref_B * jax.nn.relu(1.0 - tau * d_B)
            + (1.0 - pref_B) * jax.nn.relu(1.0 + tau * d_B)
            + float(regularizer) * nll_B)
  metrics = _pair_metrics(loss_B, _log_ratio_margin(logps), pref_B, logps)
  metrics["slic/nll_preferred"] = jnp.mean(nll_B)
  return loss_B, metrics


def _check_token_inputs(
    policy_token_logps_BxL, ref_token_logps_BxL, mask_BxL, signal_B, signal_name
) -> tuple[jax.Array, ...]:
  _check_same_shape(
      2,
      policy_token_logps_BxL=policy_token_logps_BxL,
      ref_token_logps_BxL=ref_token_logps_BxL,
      mask_BxL=mask_BxL,
  )
  batch = jnp.shape(mask_BxL)[0]
  if jnp.shape(signal_B) != (batch,):
    raise ValueError(
        f"{signal_name} must have shape [batch]=({batch},), one value per "
        f"sequence; got {jnp.shape(signal_B)}."
    )
  return tuple(
      _as_float(a)
      for a in (policy_token_logps_BxL, ref_token_logps_BxL, mask_BxL, signal_B)
  )


def _kl_weights(
    policy_BxL: jax.Array, ref_BxL: jax.Array, mask_BxL: jax.Array, kl_estimator
) -> jax.Array:
  """Per-token multipliers of the score-function KL gradient, under SG."""
  log_ratio_BxL = mask_BxL * (policy_BxL - ref_BxL)
  if kl_estimator == "reward_to_go":
    # sum_{k >= n} of the per-token log-ratios: unbiased for the gradient of
    # the sequence-level KL(pi || pi_ref) (arXiv 2312.00886 §7.2).
    weights_BxL = jnp.flip(jnp.cumsum(jnp.flip(log_ratio_BxL, 1), axis=1), 1)
  elif kl_estimator == "per_token":
    # TRL's NashMDTrainer: each token sees only its own log-ratio, the
    # gradient of the per-prefix KLs with the prefixes held fixed (biased
    # for the sequence-level KL; docs/methods.md).
    weights_BxL = log_ratio_BxL
  else:
    raise ValueError(
        f"kl_estimator={kl_estimator!r} is not one of {KL_ESTIMATORS}; "
        "'reward_to_go' is the paper's estimator, 'per_token' is TRL's."
    )
  return jax.lax.stop_gradient(weights_BxL)


def _pg_surrogate(
    policy_BxL, ref_BxL, mask_BxL, signal_B, *, tau, kl_estimator
) -> tuple[jax.Array, Metrics]:
  """REINFORCE surrogate whose gradient is minus the regularised PG ascent."""
  kl_weights_BxL = _kl_weights(policy_BxL, ref_BxL, mask_BxL, kl_estimator)
  masked_policy_BxL = mask_BxL * policy_BxL
  advantage_B = jax.lax.stop_gradient(signal_B)
  policy_B = jnp.sum(masked_policy_BxL, axis=1)
  ref_B = jnp.sum(mask_BxL * ref_BxL, axis=1)
  loss_B = -advantage_B * policy_B + tau * jnp.sum(
      masked_policy_BxL * kl_weights_BxL, axis=1
  )
  kl_B = policy_B - ref_B
  metrics = {
      "loss": jnp.mean(loss_B),
      "logps/policy_y": jnp.mean(policy_B),
      "logps/ref_y": jnp.mean(ref_B),
      "kl/sampled": jnp.mean(kl_B),
      "pg/regularised_return": jnp.mean(advantage_B - tau * kl_B),
  }
  return loss_B, metrics


def nash_md_pg_loss(
    policy_token_logps_BxL: jax.typing.ArrayLike,
    ref_token_logps_BxL: jax.typing.ArrayLike,
    mask_BxL: jax.typing.ArrayLike,
    pref_B: jax.typing.ArrayLike,
    *,
    tau: float,
    kl_estimator: str = "reward_to_go",
) -> tuple[jax.Array, Metrics]:
  """Nash-MD-PG surrogate loss (arXiv 2312.00886 §7, App. F; docs/methods.md).

  y is sampled from the policy, y' from the geometric mixture (beta = 0 is
  self-play), and p = P(y > y'|x). Only y receives a gradient. With
  reward-to-go KL weights the loss is

    loss = -SG(p - 1/2) sum_n log pi(y_n)
           + tau sum_n log pi(y_n) SG(sum_{k>=n} log[pi(y_k) / pi_ref(y_k)])

  whose gradient is minus the ascent estimate
  grad log pi(y) (p - 1/2 - tau log[pi(y)/pi_ref(y)]). The constant 1/2 is a
  baseline (p(y > y) = 1/2). `kl_estimator="per_token"` replaces the
  reward-to-go sum by the token's own log-ratio, as TRL's NashMDTrainer does;
  that estimator is biased for the sequence-level KL gradient.

  Args:
    policy_token_logps_BxL: [batch, length] log pi_theta(y_n | x, y_<n).
    ref_token_logps_BxL: [batch, length] log pi_ref(y_n | x, y_<n).
    mask_BxL: [batch, length] 1.0 on response tokens, 0.0 on padding.
    pref_B: [batch] P(y > y'|x) in [0, 1].
    tau: KL coefficient (> 0).
    kl_estimator: "reward_to_go" (default) or "per_token".

  Returns:
    (loss_B [batch], metrics). The loss value is a surrogate; only its
    gradient is meaningful. `kl/sampled` is the mean sequence log-ratio
    log pi(y)/pi_ref(y) of the samples (an estimate of KL(pi || pi_ref) when
    y ~ pi); `signal/mean` the mean p.
  """
  tau = _check_tau(tau)
  policy_BxL, ref_BxL, mask_BxL, pref_B = _check_token_inputs(
      policy_token_logps_BxL, ref_token_logps_BxL, mask_BxL, pref_B, "pref_B"
  )
  loss_B, metrics = _pg_surrogate(
      policy_BxL, ref_BxL, mask_BxL, pref_B - 0.5, tau=tau,
      kl_estimator=kl_estimator,
  )
  metrics["signal/mean"] = jnp.mean(pref_B)
  return loss_B, metrics


def rlhf_pg_loss(
    policy_token_logps_BxL: jax.typing.ArrayLike,
    ref_token_logps_BxL: jax.typing.ArrayLike,
    mask_BxL: jax.typing.ArrayLike,
    reward_B: jax.typing.ArrayLike,
    *,
    tau: float,
    kl_estimator: str = "reward_to_go",
    baseline_B: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, Metrics]:
  """KL-regularised REINFORCE surrogate for the RLHF baseline.

    loss = -SG(r - b) sum_n log pi(y_n)
           + tau sum_n log pi(y_n) SG(sum_{k>=n} log[pi(y_k) / pi_ref(y_k)])

  The gradient is minus grad log pi(y) (r(x, y) - b - tau log[pi(y)/
  pi_ref(y)]), the ascent direction of the regularised objective
  E[r] - tau KL(pi || pi_ref) of arXiv 2403.08635's RL baseline (§6; the
  method of arXiv 2312.00886 App. G.3). A baseline b that does not depend on
  y (e.g. the reward of another sample of the same prompt) leaves the
  expected gradient unchanged and lowers its variance. The papers give
  neither the per-token KL handling nor the baseline: reward-to-go (the
  default) matches Nash-MD-PG, "per_token" is TRL's choice; the baseline is
  the caller's (`ipo_md.trainer.policy_gradient.RLHF` chooses it).

  Args:
    policy_token_logps_BxL: [batch, length] log pi_theta(y_n | x, y_<n).
    ref_token_logps_BxL: [batch, length] log pi_ref(y_n | x, y_<n).
    mask_BxL: [batch, length] 1.0 on response tokens, 0.0 on padding.
    reward_B: [batch] scalar reward r(x, y) of the sampled response.
    tau: KL coefficient (> 0).
    kl_estimator: "reward_to_go" (default) or "per_token".
    baseline_B: [batch] baseline b subtracted from the reward (None: 0).

  Returns:
    (loss_B [batch], metrics), with `signal/mean` (the mean reward) and
    `pg/advantage` (the mean r - b).
  """
  tau = _check_tau(tau)
  policy_BxL, ref_BxL, mask_BxL, reward_B = _check_token_inputs(
      policy_token_logps_BxL, ref_token_logps_BxL, mask_BxL, reward_B,
      "reward_B",
  )
  advantage_B = reward_B
  if baseline_B is not None:
    if jnp.shape(baseline_B) != jnp.shape(reward_B):
      raise ValueError(
          f"baseline_B has shape {jnp.shape(baseline_B)}, reward_B "
          f"{jnp.shape(reward_B)}; pass one baseline per sequence."
      )
    advantage_B = reward_B - _as_float(baseline_B)
  loss_B, metrics = _pg_surrogate(
      policy_BxL, ref_BxL, mask_BxL, advantage_B, tau=tau,
      kl_estimator=kl_estimator,
  )
  metrics["signal/mean"] = jnp.mean(reward_B)
  metrics["pg/advantage"] = jnp.mean(advantage_B)
  return loss_B, metrics


def sft_loss(
    token_logps_BxL: jax.typing.ArrayLike, mask_BxL: jax.typing.ArrayLike
) -> tuple[jax.Array, Metrics]:
  """Supervised fine-tuning: the summed negative log-likelihood per sequence.

    loss_b = -sum_n mask_n log pi(y_n | x, y_<n)

  Args:
    token_logps_BxL: [batch, length] log-probs of the target tokens.
    mask_BxL: [batch, length] 1.0 on target tokens, 0.0 on padding.

  Returns:
    (loss_B [batch], metrics) with `loss` (mean per-sequence NLL),
    `nll_per_token` (total NLL / total target tokens) and `num_tokens`.
  """
  _check_same_shape(2, token_logps_BxL=token_logps_BxL, mask_BxL=mask_BxL)
  logps_BxL, mask_BxL = _as_float(token_logps_BxL), _as_float(mask_BxL)
  loss_B = -jnp.sum(mask_BxL * logps_BxL, axis=1)
  num_tokens = jnp.sum(mask_BxL)
  metrics = {
      "loss": jnp.mean(loss_B),
      "nll_per_token": jnp.sum(loss_B) / jnp.maximum(num_tokens, 1.0),
      "num_tokens": num_tokens,
  }
  return loss_B, metrics


def hard_labels(
    pref_B: jax.typing.ArrayLike, *, mode: str, rng: jax.Array | None = None
) -> jax.Array:
  """Turns soft preferences into hard labels (the "label mode" option).

  Soft labels are the default everywhere and give the Nash equilibrium as the
  fixed point. "bernoulli" draws I ~ Bernoulli(p): the same expected gradient,
  more variance. "argmax" uses 1[p > 1/2] (1/2 on an exact tie); it changes
  the regression target to (1[p > 1/2] - 1/2)/tau, so the fixed point is no
  longer the Nash equilibrium of the game (docs/methods.md, "Labels").

  Args:
    pref_B: [batch] p(y > y'|x) in [0, 1].
    mode: "bernoulli" (needs `rng`) or "argmax".
    rng: a PRNG key, used by "bernoulli" only.

  Returns:
    [batch] labels in {0, 1} ({0, 1/2, 1} for "argmax"), in the float dtype
    of `pref_B` (at least float32).
  """
  _check_same_shape(1, pref_B=pref_B)
  pref_B = _as_float(pref_B)
  if mode == "bernoulli":
    if rng is None:
      raise ValueError("hard_labels(mode='bernoulli') needs an rng key.")
    return jax.random.bernoulli(rng, pref_B).astype(pref_B.dtype)
  if mode == "argmax":
    return jnp.where(
        pref_B > 0.5, 1.0, jnp.where(pref_B < 0.5, 0.0, 0.5)
    ).astype(pref_B.dtype)
  raise ValueError(f"mode={mode!r} is not one of {LABEL_MODES}.")


def preference_model_loss(
    logit_B: jax.typing.ArrayLike, label_B: jax.typing.ArrayLike
) -> tuple[jax.Array, Metrics]:
  """Cross-entropy of a pairwise preference model on (soft) human labels.

    loss = -q log sigma(s) - (1 - q) log sigma(-s)

  where s is the model's logit of p(y > y'|x) and q the label (1.0 for a
  (chosen, rejected) pair; a probability where the data gives soft labels).
  No Bradley-Terry assumption: the model reads both responses
  (arXiv 2312.00886 App. G.1).

  Args:
    logit_B: [batch] logits of p(y > y').
    label_B: [batch] labels q in [0, 1].

  Returns:
    (loss_B [batch], metrics) with `loss`, `pm/accuracy` (the label-weighted
    fraction the model gets right: q 1[s > 0] + (1 - q) 1[s < 0], ties 1/2)
    and `pm/mean_p` (mean sigma(s)).
  """
  _check_same_shape(1, logit_B=logit_B, label_B=label_B)
  s_B, q_B = _as_float(logit_B), _as_float(label_B)
  loss_B = -q_B * jax.nn.log_sigmoid(s_B) - (1 - q_B) * jax.nn.log_sigmoid(
      -s_B)
  correct_B = q_B * (s_B > 0) + (1 - q_B) * (s_B < 0) + 0.5 * (s_B == 0)
  return loss_B, {
      "loss": jnp.mean(loss_B),
      "pm/accuracy": jnp.mean(correct_B),
      "pm/mean_p": jnp.mean(jax.nn.sigmoid(s_B)),
  }


def bradley_terry_loss(
    reward_y_B: jax.typing.ArrayLike,
    reward_yp_B: jax.typing.ArrayLike,
    label_B: jax.typing.ArrayLike,
    *,
    margin: float = 0.0,
) -> tuple[jax.Array, Metrics]:
  """Bradley-Terry loss of a reward model, with an optional margin.

    d = r(y) - r(y')
    loss = -q log sigma(d - margin) - (1 - q) log sigma(-d - margin)

  With q = 1 (y the human-chosen response) this is the usual reward-model
  loss -log sigma(r_chosen - r_rejected - margin) (Stiennon et al. 2020; the
  margin as in Llama 2's reward model); soft labels q weight both orderings.

  Args:
    reward_y_B: [batch] r(x, y).
    reward_yp_B: [batch] r(x, y').
    label_B: [batch] q = p(y > y') in [0, 1].
    margin: >= 0, how much the preferred reward must exceed the other.

  Returns:
    (loss_B [batch], metrics) with `loss`, `rm/accuracy` (label-weighted,
    ties 1/2) and `rm/margin` (mean d).
  """
  _check_same_shape(1, reward_y_B=reward_y_B, reward_yp_B=reward_yp_B,
                    label_B=label_B)
  if (isinstance(margin, bool) or not isinstance(margin, numbers.Real)
      or not 0.0 <= float(margin) < float("inf")):
    raise ValueError(
        f"margin={margin!r} must be a finite float >= 0 (0 = the plain "
        "Bradley-Terry loss).")
  r_y, r_yp, q_B = (_as_float(a) for a in (reward_y_B, reward_yp_B, label_B))
  d_B = r_y - r_yp
  loss_B = -q_B * jax.nn.log_sigmoid(d_B - margin) - (
      1 - q_B) * jax.nn.log_sigmoid(-d_B - margin)
  correct_B = q_B * (d_B > 0) + (1 - q_B) * (d_B < 0) + 0.5 * (d_B == 0)
  return loss_B, {
      "loss": jnp.mean(loss_B),
      "rm/accuracy": jnp.mean(correct_B),
      "rm/margin": jnp.mean(d_B),
  }
