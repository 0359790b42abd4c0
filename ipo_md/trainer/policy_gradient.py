"""The non-contrastive baselines: Nash-MD-PG and the RLHF policy gradient.

Both are REINFORCE with a KL-regularised return: only the policy's own sample
y receives a gradient, through log pi(y|x), weighted by a signal minus a
baseline minus tau times the log-ratio to the reference (reward-to-go over
the tokens by default). They differ in the signal:

* `NashMDPG` (arXiv 2312.00886 §7 and App. F, the Nash-MD-PG baseline of
  arXiv 2403.08635 §6): y from the policy, y' from the geometric mixture
  pi^(1-beta) pi_ref^beta, both from one sampler call with one mixture weight
  per row; the signal is P(y > y'|x) from a pairwise preference and the
  baseline is 1/2 = P(y > y). beta = 0 is self-play.
* `RLHF` (arXiv 2403.08635 §6; arXiv 2312.00886 App. G.3): samples from the
  policy, the scalar reward r(x, y) of a Bradley-Terry reward model (or any
  RewardSignal), and by default the reward of the prompt's other sample as
  the baseline.

The losses are `losses.nash_md_pg_loss` and `losses.rlhf_pg_loss`; the
sampling, labelling and metrics are the shared functions of `objectives`.
docs/methods.md describes both, with every option.
"""

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from ipo_md import losses
from ipo_md import rollouts
from ipo_md.decoding import sampling
from ipo_md.model import scoring
from ipo_md.preference import base as preference_base
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives

BASELINES = ("leave_one_out", "batch_mean", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreReward:
  """A RewardSignal from an object with a `score(inputs, y)` method, e.g.
  the gold `oracle.FactsOracle` of the embedded task (its s(y)); it has no
  parameters (role None).

  Attributes:
    scorer: the object whose `score` is the reward.
    scale: the reward is scale * score.
  """

  scorer: Any
  scale: float = 1.0

  def __post_init__(self):
    if not callable(getattr(self.scorer, "score", None)):
      raise ValueError(
          f"ScoreReward.scorer={self.scorer!r} has no score(inputs, y) "
          "method; pass e.g. @oracle.FactsOracle().")

  def __call__(self, params, inputs_BxLi, y_BxT) -> jax.Array:
    del params
    return self.scale * self.scorer.score(inputs_BxLi, y_BxT).astype(
        jnp.float32)


def resolve_reward(owner: str, models: models_lib.Models, reward: Any):
  """A RewardSignal from a config value: 'reward' (the run's learned reward
  model, read frozen) or a RewardSignal object (e.g. ScoreReward)."""
  if reward == models_lib.REWARD:
    if models.reward is None:
      raise ValueError(
          f"{owner} uses the reward model (reward='reward'), but the run "
          "declares no models['reward']; add one (trained by a "
          "RewardModelTraining stage or from a checkpoint), or bind "
          f"{owner}.reward to a RewardSignal such as "
          "@policy_gradient.ScoreReward().")
    return models.reward
  if isinstance(reward, str) or reward is None or not callable(reward):
    raise ValueError(
        f"{owner}.reward={reward!r} must be 'reward' (the run's Bradley-Terry "
        "reward model) or a RewardSignal object r(params, inputs, y); a "
        "pairwise preference model is not a reward.")
  return reward


def _check_int(owner: str, name: str, value, minimum: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ValueError(f"{owner}.{name}={value!r} must be an int >= {minimum}.")
  return int(value)


def _score_policy(objective, params, inputs_BxS, tokens_RBxT, rng):
  """Teacher-forced per-token log-probs of the sampled rows (the gradient
  path), [R * B, T], zero on padding."""
  net = objective.models.policy
  return scoring.score_targets(net, params, inputs_BxS, tokens_RBxT,
                               eos_id=objective.sampling.eos_id,
                               rngs=objectives.dropout_rngs(net, rng)).token


@dataclasses.dataclass(frozen=True, kw_only=True)
class NashMDPG:
  """Nash-MD-PG(beta): y ~ pi, y' ~ pi_beta, REINFORCE on y with baseline 1/2.

    grad = -E[grad log pi(y|x) (P(y > y'|x) - 1/2 - tau log[pi(y)/pi_ref(y)])]

  (arXiv 2312.00886 §7 / App. F Eq. 13 as reported; docs/methods.md). The
  opponent y' is drawn from the token-wise mixture with weight beta on the
  reference; the policy rows and the mixture rows come from one sampler call
  (`rollouts.sample_policy_and_mixture`, one mixture weight per row), and
  beta = 0 (self-play) samples every row from the policy alone.

  Attributes:
    models: the run's models.
    sampling: SamplingConfig (temperature after mixing).
    tau: KL coefficient (> 0; the paper's Nash-MD-PG uses 0.008).
    beta: the opponent's mixture weight on the reference, in [0, 1] (0 =
      self-play; the paper's 0.125 by default).
    preference: 'preference' (the learned pairwise model; the default),
      'reward' (the reward model's Bradley-Terry preference, as TRL's
      NashMDTrainer) or a PreferenceSignal object.
    kl_estimator: "reward_to_go" (each token's score times the log-ratios
      of it and the later tokens: unbiased for the sequence-level KL
      gradient, arXiv 2312.00886 §7.2; the default) or "per_token" (TRL's:
      each token times its own log-ratio only).
    symmetrize_preference: use 0.5 (P(y,y') + 1 - P(y',y)) (the default).
    samples_per_prompt: rows per prompt, half from the policy and half
      from the mixture (pair i is policy row i and mixture row i); an even
      number >= 2 (2 by default: one pair per prompt).
  """

  models: models_lib.Models
  sampling: sampling.SamplingConfig
  tau: float
  beta: float = 0.125
  preference: Any = models_lib.PREFERENCE
  kl_estimator: str = "reward_to_go"
  symmetrize_preference: bool = True
  samples_per_prompt: int = 2
  batch_kind = objectives.PROMPTS_KIND

  def __post_init__(self):
    owner = type(self).__name__
    objectives.check_tau(owner, self.tau)
    objectives.check_beta(owner, self.beta)
    objectives.check_choice(owner, "kl_estimator", self.kl_estimator,
                            losses.KL_ESTIMATORS)
    n = _check_int(owner, "samples_per_prompt", self.samples_per_prompt, 1)
    if n < 2 or n % 2:
      raise ValueError(
          f"{owner}.samples_per_prompt={n}: Nash-MD-PG needs an even number "
          ">= 2 of samples per prompt (y from the policy and y' from the "
          "mixture, in pairs); set samples_per_prompt=2.")
    objectives.resolve_signal(self.models, self.preference)

  @property
  def rows_per_example(self) -> int:
    return self.samples_per_prompt

  @property
  def signal(self):
    return objectives.resolve_signal(self.models, self.preference)

  @property
  def reads(self) -> tuple[str, ...]:
    role = preference_base.role(self.signal)
    return (models_lib.REFERENCE,) + ((role,) if role else ())

  def prepare(self, params, frozen, batch, rng):
    return self.label(params, frozen, batch,
                      self.sample(params, frozen, batch, rng), rng)

  def sample(self, params, frozen, batch, rng) -> objectives.Rollout:
    m = self.samples_per_prompt // 2
    return objectives.rollout(self.models, params, frozen, batch["inputs"],
                              rng, self.sampling, beta=self.beta,
                              policy_repeats=m, mixture_repeats=m)

  def label(self, params, frozen, batch, rows: objectives.Rollout, rng):
    del params, rng
    inputs = batch["inputs"]
    m = self.samples_per_prompt // 2
    n = m * inputs.shape[0]
    y, yp = rows.tokens[:n], rows.tokens[n:]
    signal = self.signal
    pref = rollouts.judge(signal, preference_base.params_for(signal, frozen),
                          rollouts.tile_prompts(inputs, m), y, yp,
                          symmetrize=self.symmetrize_preference)
    log_ratio = rows.log_ratio()
    prepared = dict(inputs=inputs, y=y, pref=pref, mask_y=rows.mask[:n],
                    ref_token_y=rows.ref.token[:n])
    metrics = objectives.sample_metrics(
        log_ratio_B=log_ratio[:n], signal_B=pref, tokens_BxT=y,
        mask_BxT=rows.mask[:n], eos_id=self.sampling.eos_id)
    metrics[objectives.MARGIN_METRIC] = objectives.label_weighted_margin(
        log_ratio[:n] - log_ratio[n:], pref)
    metrics["nash/opponent_kl"] = jnp.mean(log_ratio[n:])
    return jax.lax.stop_gradient(prepared), metrics

  def loss(self, params, frozen, prepared, rng):
    del frozen
    token = _score_policy(self, params, prepared["inputs"], prepared["y"],
                          rng)
    loss_B, metrics = losses.nash_md_pg_loss(
        token, prepared["ref_token_y"], prepared["mask_y"], prepared["pref"],
        tau=self.tau, kl_estimator=self.kl_estimator)
    # kl/sampled and signal/mean come from prepare (the same values).
    del metrics[objectives.KL_METRIC], metrics[objectives.SIGNAL_METRIC]
    return jnp.mean(loss_B), metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLHF:
  """The RLHF policy gradient: REINFORCE with the KL-regularised reward.

    grad = -E[grad log pi(y|x) (r(x, y) - b - tau log[pi(y)/pi_ref(y)])]

  with y ~ pi and r a frozen reward (arXiv 2403.08635 §6; arXiv 2312.00886
  App. G.3: a regularised policy gradient, not PPO; docs/methods.md). The
  papers give neither the baseline b nor the per-token KL handling; the
  defaults are the leave-one-out baseline and the reward-to-go estimator.

  Attributes:
    models: the run's models.
    sampling: SamplingConfig.
    tau: KL coefficient (> 0; the paper's RL baseline uses 0.05).
    reward: 'reward' (the run's learned Bradley-Terry reward model, read
      frozen; the default) or a RewardSignal object, e.g. ScoreReward over
      the oracle of the embedded task.
    baseline: "leave_one_out" (the mean reward of the prompt's other
      samples: with 2 samples per prompt, the other one's; the default),
      "batch_mean" (the mean reward of every other row of the batch) or
      "none". None of them depends on the row's own sample, so the expected
      gradient is unchanged.
    kl_estimator: "reward_to_go" (the default) or "per_token" (TRL's).
    samples_per_prompt: completions per prompt (2 by default; the
      leave-one-out baseline needs >= 2).
  """

  models: models_lib.Models
  sampling: sampling.SamplingConfig
  tau: float
  reward: Any = models_lib.REWARD
  baseline: str = "leave_one_out"
  kl_estimator: str = "reward_to_go"
  samples_per_prompt: int = 2
  batch_kind = objectives.PROMPTS_KIND

  def __post_init__(self):
    owner = type(self).__name__
    objectives.check_tau(owner, self.tau)
    objectives.check_choice(owner, "baseline", self.baseline, BASELINES)
    objectives.check_choice(owner, "kl_estimator", self.kl_estimator,
                            losses.KL_ESTIMATORS)
    n = _check_int(owner, "samples_per_prompt", self.samples_per_prompt, 1)
    if self.baseline == "leave_one_out" and n < 2:
      raise ValueError(
          f"{owner}.baseline='leave_one_out' needs samples_per_prompt >= 2 "
          f"(got {n}): it is the mean reward of the prompt's other samples. "
          "Set samples_per_prompt=2, or baseline='batch_mean' or 'none'.")
    resolve_reward(owner, self.models, self.reward)

  @property
  def rows_per_example(self) -> int:
    return self.samples_per_prompt

  @property
  def signal(self):
    return resolve_reward(type(self).__name__, self.models, self.reward)

  @property
  def reads(self) -> tuple[str, ...]:
    role = preference_base.role(self.signal)
    return (models_lib.REFERENCE,) + ((role,) if role else ())

  def _baseline(self, reward_B: jax.Array, batch: int) -> jax.Array:
    n = reward_B.shape[0]
    if self.baseline == "leave_one_out":
      k = self.samples_per_prompt
      per_prompt_KxB = reward_B.reshape(k, batch)
      others = jnp.sum(per_prompt_KxB, axis=0, keepdims=True) - per_prompt_KxB
      return (others / (k - 1)).reshape(n)
    if self.baseline == "batch_mean":
      return (jnp.sum(reward_B) - reward_B) / max(n - 1, 1)
    return jnp.zeros_like(reward_B)

  def prepare(self, params, frozen, batch, rng):
    return self.label(params, frozen, batch,
                      self.sample(params, frozen, batch, rng), rng)

  def sample(self, params, frozen, batch, rng) -> objectives.Rollout:
    return objectives.rollout(self.models, params, frozen, batch["inputs"],
                              rng, self.sampling, beta=0.0,
                              policy_repeats=self.samples_per_prompt,
                              mixture_repeats=0)

  def label(self, params, frozen, batch, rows: objectives.Rollout, rng):
    del params, rng
    inputs = batch["inputs"]
    b, k = inputs.shape[0], self.samples_per_prompt
    signal = self.signal
    reward = rollouts.reward(signal, preference_base.params_for(signal,
                                                                frozen),
                             inputs, rows.tokens)
    log_ratio = rows.log_ratio()
    prepared = dict(inputs=inputs, y=rows.tokens, mask=rows.mask,
                    ref_token=rows.ref.token, reward=reward,
                    baseline=self._baseline(reward, b))
    metrics = objectives.sample_metrics(
        log_ratio_B=log_ratio, signal_B=reward, tokens_BxT=rows.tokens,
        mask_BxT=rows.mask, eos_id=self.sampling.eos_id)
    if k >= 2:
      # The first two samples of each prompt, the higher reward preferred.
      r0, r1 = reward[:b], reward[b:2 * b]
      won = jnp.where(r0 > r1, 1.0, jnp.where(r0 < r1, 0.0, 0.5))
      metrics[objectives.MARGIN_METRIC] = objectives.label_weighted_margin(
          log_ratio[:b] - log_ratio[b:2 * b], won)
    return jax.lax.stop_gradient(prepared), metrics

  def loss(self, params, frozen, prepared, rng):
    del frozen
    token = _score_policy(self, params, prepared["inputs"], prepared["y"],
                          rng)
    loss_B, metrics = losses.rlhf_pg_loss(
        token, prepared["ref_token"], prepared["mask"], prepared["reward"],
        tau=self.tau, kl_estimator=self.kl_estimator,
        baseline_B=prepared["baseline"])
    del metrics[objectives.KL_METRIC], metrics[objectives.SIGNAL_METRIC]
    return jnp.mean(loss_B), metrics
