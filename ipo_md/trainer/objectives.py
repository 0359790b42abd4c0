"""Training objectives: how a batch becomes a loss, behind one protocol.

An objective is built from the run's models (`models.Models`) and its own
hyper-parameters, and has two pure phases:

* `prepare(params, frozen, batch, rng)`: everything without a gradient:
  sampling completions (under stop-gradient), labelling them with a
  preference or reward signal, reference log-probs;
* `loss(params, frozen, prepared, rng)`: what is differentiated: the
  teacher-forced log-probs (or a learned model's read-out) and a loss of
  `ipo_md.losses`.

`params` is the trained model's tree; `frozen` is a `types.Frozen` with the
frozen models the stage reads. Each objective also declares the batch kind it
consumes (`batch_kind`), the frozen roles it reads (`reads`) and how many
sampled rows one example becomes (`rows_per_example`), so the whole run is
checked against its data and models before any stage trains.

This module holds the protocol, SFT, the online contrastive methods
(`OnlinePairwise`: online IPO, IPO-MD, online DPO, online SLiC), the
preference- and reward-model objectives, and the functions every objective
shares: `rollout` (sampling plus the reference's log-probs), `resolve_signal`,
`label_pairs`, `reference_logps` and `sample_metrics`. The policy-gradient
methods live in `policy_gradient`, the offline ones in `offline`. Every
method and its options are described in docs/methods.md.

Metric names every policy objective logs (docs/methods.md, "Metrics"):
`loss`, `kl/sampled`, `signal/mean`, `rewards/margin`, `samples/length`,
`samples/eos_rate`.
"""

import dataclasses
import numbers
from typing import Any, Callable, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from ipo_md import logprobs
from ipo_md import losses
from ipo_md import rollouts
from ipo_md import types
from ipo_md.decoding import sampling
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import base as preference_base
from ipo_md.trainer import models as models_lib

LABEL_MODES = ("soft", "bernoulli", "argmax")
SFT_KIND, PAIRS_KIND, PROMPTS_KIND = "sft", "pairs", "prompts"
# (policy_y, policy_yp, ref_y, ref_yp, pref) -> (loss_B, metrics)
PairLoss = Callable[..., tuple[jax.Array, dict]]

# The metric names shared by every policy objective (docs/methods.md).
KL_METRIC = "kl/sampled"
SIGNAL_METRIC = "signal/mean"
MARGIN_METRIC = "rewards/margin"


class Objective(Protocol):
  """What the train step and the whole-run validation need of an objective.

  An objective that samples may also split `prepare` into `sample(params,
  frozen, batch, rng) -> samples` (the completions and what the policy and
  reference say of them) and `label(params, frozen, batch, samples, rng) ->
  (prepared, metrics)` (the preference or reward signal), with `prepare`
  equal to their composition; the Trainer then compiles them as separate
  phases and the console shows each one's time (`step.has_phases`).
  """

  batch_kind: str          # "sft" | "pairs" | "prompts"
  reads: tuple[str, ...]   # frozen roles used, e.g. ("reference",)
  rows_per_example: int    # sampled rows per example (throughput metric)

  def prepare(self, params: types.PyTree, frozen: types.Frozen, batch: dict,
              rng: jax.Array) -> tuple[dict, dict]:
    ...

  def loss(self, params: types.PyTree, frozen: types.Frozen, prepared: dict,
           rng: jax.Array) -> tuple[jax.Array, dict]:
    ...


def dropout_rngs(net: network.Transformer, rng):
  """The `rngs` of a training forward pass (None when dropout is off)."""
  return {"dropout": rng} if net.config.dropout_rate > 0 else None


_dropout_rngs = dropout_rngs  # The name the first objectives used.


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFT:
  """Supervised fine-tuning on (inputs, targets): token-averaged NLL."""

  models: models_lib.Models
  eos_id: int = 1
  batch_kind = SFT_KIND
  reads = ()
  rows_per_example = 1

  def prepare(self, params, frozen, batch, rng):
    del params, frozen, rng
    return batch, {}

  def loss(self, params, frozen, batch, rng):
    del frozen
    net = self.models.policy
    scores = scoring.score_targets(net, params, batch["inputs"],
                                   batch["targets"], eos_id=self.eos_id,
                                   rngs=dropout_rngs(net, rng))
    loss_B, metrics = losses.sft_loss(scores.token, scores.mask)
    tokens = jnp.maximum(jnp.sum(scores.mask), 1.0)
    return jnp.sum(loss_B) / tokens, metrics


# --- Checks shared by the objectives (raised when a stage is planned). -----


def check_beta(owner: str, beta) -> float:
  """beta, the mixture weight on the reference, as a float in [0, 1]."""
  if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (
      0.0 <= float(beta) <= 1.0):
    raise ValueError(
        f"{owner}.beta={beta!r} must be a float in [0, 1] (the mixture "
        "weight on the reference; 0 = sample from the policy alone).")
  return float(beta)


def check_choice(owner: str, name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{owner}.{name}={value!r}; choose one of {choices}.")


def check_tau(owner: str, tau) -> float:
  if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not (
      0.0 < float(tau) < float("inf")):
    raise ValueError(
        f"{owner}.tau={tau!r} must be a finite float > 0 (the KL "
        "regularisation strength), e.g. tau=0.05.")
  return float(tau)


def check_pair_loss(owner: str, loss_fn) -> None:
  """Calls the pair loss once on a one-pair batch, so that a bad bound
  hyper-parameter (tau <= 0, a wrong keyword) is reported when the stage is
  planned rather than when its step first traces."""
  if not callable(loss_fn):
    raise ValueError(
        f"{owner}.loss_fn={loss_fn!r} must be a pair loss of ipo_md.losses "
        "with its tau bound, e.g. @losses.ipo_loss with losses.ipo_loss.tau "
        "= 1.0.")
  one = jnp.zeros((1,), jnp.float32)
  try:
    loss_fn(one, one, one, one, one + 0.5)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{owner}.loss_fn: {e}") from None


def _check_hyper(cls_name: str, beta, label_mode: str, reduce: str):
  check_beta(cls_name, beta)
  check_choice(cls_name, "label_mode", label_mode, LABEL_MODES)
  check_choice(cls_name, "reduce", reduce, logprobs.REDUCTIONS)


# --- Functions shared by the objectives. -----------------------------------


def resolve_signal(models: models_lib.Models, preference: Any):
  """A PreferenceSignal from a config value: a signal object (e.g. the
  oracle), or the name of a learned model of the run ('preference', or
  'reward' for its Bradley-Terry preference)."""
  if isinstance(preference, str):
    return models.signal(preference)
  if preference is None or not callable(preference):
    raise ValueError(
        f"preference={preference!r} must be 'preference' (the run's learned "
        "preference model), 'reward', or a PreferenceSignal such as "
        "@oracle.FactsOracle().")
  return preference


def label_pairs(pref_B: jax.Array, label_mode: str, rng) -> jax.Array:
  """The label the pair loss sees: p itself ("soft") or a hard label."""
  if label_mode == "soft":
    return pref_B
  return losses.hard_labels(pref_B, mode=label_mode, rng=rng)


def reference_logps(samples, mask_BxT, ref_net, ref_params, inputs_BxS,
                    tokens_BxT, *, reduce: str, eos_id: int):
  """The reference's sequence log-probs of sampled rows: from the sampler's
  own reference pass when it ran one, else teacher-forced."""
  if rollouts.REF_LOGPS in samples.aux_logps:
    return logprobs.sequence_logprobs(samples.aux_logps[rollouts.REF_LOGPS],
                                      mask_BxT, reduce=reduce)
  return jax.lax.stop_gradient(scoring.score_targets(
      ref_net, ref_params, inputs_BxS, tokens_BxT, reduce=reduce,
      eos_id=eos_id))


@flax.struct.dataclass
class Rollout:
  """Sampled rows with what every objective reads of them (under SG).

  Attributes:
    tokens: [R * B, T] completions, rows ordered [all prompts] * R.
    mask: [R * B, T] 1.0 on response tokens (EOS included).
    policy_token: [R * B, T] the policy's log-prob of each sampled token (the
      sampler's own pass), 0 on padding.
    ref: the reference's log-probs of the rows (`reduce`d `sequence`, masked
      per-token `token`).
  """

  tokens: jax.Array
  mask: jax.Array
  policy_token: jax.Array
  ref: types.SequenceLogProbs

  def log_ratio(self) -> jax.Array:
    """[R * B] log pi(y|x) - log pi_ref(y|x), summed over tokens."""
    return rollouts.sequence_log_ratio(self.policy_token, self.ref.token,
                                       self.mask)


def rollout(models: models_lib.Models, params, frozen: types.Frozen,
            inputs_BxS: jax.Array, rng: jax.Array,
            cfg: sampling.SamplingConfig, *, beta: float,
            policy_repeats: int, mixture_repeats: int,
            reduce: str = "sum") -> Rollout:
  """`policy_repeats` completions per prompt from the policy and then
  `mixture_repeats` from the geometric mixture pi^(1-beta) pi_ref^beta, in
  one sampler call, with the reference's log-probs of every row (from the
  sampler's reference pass when it ran, else teacher-forced)."""
  repeats = policy_repeats + mixture_repeats
  if policy_repeats == 0 or float(beta) == 0.0:
    samples = rollouts.sample_mixture(
        models.policy, params, models.reference, frozen.reference, inputs_BxS,
        rng, cfg, beta=float(beta) if policy_repeats == 0 else 0.0,
        repeats=repeats)
  else:
    samples = rollouts.sample_policy_and_mixture(
        models.policy, params, models.reference, frozen.reference, inputs_BxS,
        rng, cfg, beta=float(beta), policy_repeats=policy_repeats,
        mixture_repeats=mixture_repeats)
  mask = logprobs.target_mask(samples.tokens, eos_id=cfg.eos_id)
  ref = reference_logps(samples, mask, models.reference, frozen.reference,
                        inputs_BxS, samples.tokens, reduce=reduce,
                        eos_id=cfg.eos_id)
  policy_token = mask * samples.aux_logps[rollouts.POLICY_LOGPS]
  return jax.lax.stop_gradient(Rollout(tokens=samples.tokens, mask=mask,
                                       policy_token=policy_token, ref=ref))


def sample_metrics(*, log_ratio_B: jax.Array, signal_B: jax.Array,
                   tokens_BxT: jax.Array, mask_BxT: jax.Array,
                   eos_id: int) -> dict[str, jax.Array]:
  """The metrics every policy objective logs about its samples: `kl/sampled`
  (mean sequence log-ratio), `signal/mean` (mean preference or reward),
  `samples/length` and `samples/eos_rate`."""
  return {KL_METRIC: jnp.mean(log_ratio_B),
          SIGNAL_METRIC: jnp.mean(signal_B),
          **rollouts.sample_statistics(tokens_BxT, mask_BxT, eos_id)}


def label_weighted_margin(h_B: jax.Array, pref_B: jax.Array) -> jax.Array:
  """(2p - 1) h: the preferred response's log-ratio margin expected under
  the label p (the `rewards/margin` of `ipo_md.losses`)."""
  return jnp.mean((2.0 * pref_B - 1.0) * h_B)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnlinePairwise:
  """Online contrastive methods: online IPO (beta=0), IPO-MD (beta>0), and
  online DPO / SLiC with their losses (arXiv 2403.08635 §4-5 and its
  Algorithms 2-3; docs/methods.md).

  Two completions per prompt are sampled from the token-wise geometric
  mixture of the policy and the reference with weight `beta` on the
  reference (beta=0 never runs the reference in the sampler), labelled with
  p(y > y'|x) by the preference signal, and the pair loss is applied to the
  log-ratio difference h of the *policy* against the reference (the
  mixture's own log-probs never enter the loss).

  Attributes:
    models: the run's models.
    loss_fn: a pair loss of `ipo_md.losses` with its tau bound, e.g.
      functools.partial(losses.ipo_loss, tau=1.0).
    sampling: SamplingConfig (temperature after mixing; 1.0 by default).
    preference: 'preference' (the run's learned preference model, read
      frozen; the default), 'reward' (the reward model's Bradley-Terry
      preference) or a PreferenceSignal object such as the oracle.
    beta: mixture weight on the reference, in [0, 1] (0: online IPO; the
      paper's IPO-MD uses 0.125).
    label_mode: "soft" (p weights both orderings; the paper's choice),
      "bernoulli" (a 0/1 label drawn from p) or "argmax" (changes the fixed
      point).
    symmetrize_preference: use 0.5 (p(y,y') + 1 - p(y',y)) (the default;
      the papers do not say whether they did).
    reduce: "sum" (the papers' log pi(y|x)) or "mean" per token (TRL's IPO).
  """

  models: models_lib.Models
  loss_fn: PairLoss
  sampling: sampling.SamplingConfig
  preference: Any = models_lib.PREFERENCE
  beta: float = 0.0
  label_mode: str = "soft"
  symmetrize_preference: bool = True
  reduce: str = "sum"
  batch_kind = PROMPTS_KIND
  rows_per_example = 2

  def __post_init__(self):
    _check_hyper(type(self).__name__, self.beta, self.label_mode, self.reduce)
    check_pair_loss(type(self).__name__, self.loss_fn)
    resolve_signal(self.models, self.preference)

  @property
  def signal(self):
    return resolve_signal(self.models, self.preference)

  @property
  def reads(self) -> tuple[str, ...]:
    role = preference_base.role(self.signal)
    return (models_lib.REFERENCE,) + ((role,) if role else ())

  def prepare(self, params, frozen, batch, rng):
    return self.label(params, frozen, batch,
                      self.sample(params, frozen, batch, rng), rng)

  def sample(self, params, frozen, batch, rng) -> Rollout:
    sample_rng, _ = jax.random.split(rng)
    return rollout(self.models, params, frozen, batch["inputs"], sample_rng,
                   self.sampling, beta=self.beta, policy_repeats=0,
                   mixture_repeats=2, reduce=self.reduce)

  def label(self, params, frozen, batch, rows: Rollout, rng):
    del params
    inputs = batch["inputs"]
    b = inputs.shape[0]
    _, label_rng = jax.random.split(rng)
    y, yp = rows.tokens[:b], rows.tokens[b:]
    signal = self.signal
    pref = rollouts.judge(signal, preference_base.params_for(signal, frozen),
                          inputs, y, yp, symmetrize=self.symmetrize_preference)
    prepared = dict(inputs=inputs, y=y, yp=yp, pref=pref,
                    label=label_pairs(pref, self.label_mode, label_rng),
                    ref_y=rows.ref.sequence[:b], ref_yp=rows.ref.sequence[b:])
    metrics = sample_metrics(log_ratio_B=rows.log_ratio(), signal_B=pref,
                             tokens_BxT=rows.tokens, mask_BxT=rows.mask,
                             eos_id=self.sampling.eos_id)
    metrics["preference/abs_margin"] = jnp.mean(jnp.abs(pref - 0.5))
    return jax.lax.stop_gradient(prepared), metrics

  def loss(self, params, frozen, prepared, rng):
    del frozen
    b = prepared["inputs"].shape[0]
    both = jnp.concatenate([prepared["y"], prepared["yp"]], axis=0)
    net = self.models.policy
    policy = scoring.score_targets(net, params, prepared["inputs"], both,
                                   reduce=self.reduce,
                                   eos_id=self.sampling.eos_id,
                                   rngs=dropout_rngs(net, rng))
    loss_B, metrics = self.loss_fn(policy.sequence[:b], policy.sequence[b:],
                                   prepared["ref_y"], prepared["ref_yp"],
                                   prepared["label"])
    # signal/mean stays the signal's p (from prepare), not a hard label's.
    metrics[SIGNAL_METRIC] = jnp.mean(prepared["pref"])
    return jnp.mean(loss_B), metrics


def _pair_inputs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array,
                                       jax.Array]:
  label = batch.get("label")
  if label is None:  # (chosen, rejected) with no soft label: chosen wins.
    label = jnp.ones((batch["inputs"].shape[0],), jnp.float32)
  return batch["inputs"], batch["chosen"], batch["rejected"], label


pair_inputs = _pair_inputs

PM_ORDERS = ("both", "random", "given")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceModelTraining:
  """Trains the pairwise preference model on labelled pairs with
  cross-entropy (soft labels where the data gives them).

  Attributes:
    models: the run's models (its `preference` is the model trained).
    orders: which orders of each pair (a, b) with label q it trains on:
      "both" (the default): (a, b) with q and (b, a) with 1 - q, so each
      response is seen in both positions; "random": one of the two, drawn
      per pair and step with probability 1/2 (half the rows per pair, so a
      batch of the same cost holds twice the pairs); "given": (a, b) only,
      in the data's order.
  """

  models: models_lib.Models
  orders: str = "both"
  batch_kind = PAIRS_KIND
  reads = ()
  rows_per_example = 1

  def __post_init__(self):
    if self.models.preference is None:
      raise ValueError(
          "PreferenceModelTraining trains models['preference'], which the "
          "run does not declare; add models['preference'] = ModelSpec("
          "config=..., head=@learned.PairwiseHead()).")
    if self.orders not in PM_ORDERS:
      raise ValueError(
          f"PreferenceModelTraining.orders={self.orders!r}; choose one of "
          f"{PM_ORDERS}.")

  def prepare(self, params, frozen, batch, rng):
    del params, frozen, rng
    return batch, {}

  def loss(self, params, frozen, batch, rng):
    del frozen
    x, a, b, q = _pair_inputs(batch)
    pm = self.models.preference
    # Dropout (when the config has it) draws from its own stream, so the
    # "random" orders are the same with or without it.
    rngs = dropout_rngs(pm.network, jax.random.fold_in(rng, 1))
    if self.orders == "both":
      n = x.shape[0]
      # Each prompt once for its two orders (encoded once, decoder layout).
      logit = pm.logit(params, x, jnp.concatenate([a, b]),
                       jnp.concatenate([b, a]), rngs=rngs)
      loss_B, metrics = losses.preference_model_loss(
          logit, jnp.concatenate([q, 1.0 - q]))
      p_fwd, p_bwd = jax.nn.sigmoid(logit[:n]), jax.nn.sigmoid(logit[n:])
      metrics["pm/asymmetry"] = jnp.mean(jnp.abs(p_fwd + p_bwd - 1.0))
      return jnp.mean(loss_B), metrics
    if self.orders == "random":
      swap_B = jax.random.bernoulli(rng, 0.5, q.shape)
      a, b = (jnp.where(swap_B[:, None], b, a),
              jnp.where(swap_B[:, None], a, b))
      q = jnp.where(swap_B, 1.0 - q, q)
    loss_B, metrics = losses.preference_model_loss(
        pm.logit(params, x, a, b, rngs=rngs), q)
    return jnp.mean(loss_B), metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardModelTraining:
  """Trains the Bradley-Terry reward model on labelled pairs.

  Attributes:
    models: the run's models (its `reward` is the model trained).
    margin: the Bradley-Terry margin (0 = the plain loss).
  """

  models: models_lib.Models
  margin: float = 0.0
  batch_kind = PAIRS_KIND
  reads = ()
  rows_per_example = 1

  def __post_init__(self):
    if self.models.reward is None:
      raise ValueError(
          "RewardModelTraining trains models['reward'], which the run does "
          "not declare; add models['reward'] = ModelSpec(config=..., "
          "head=@learned.RewardHead()).")

  def prepare(self, params, frozen, batch, rng):
    del params, frozen, rng
    return batch, {}

  def loss(self, params, frozen, batch, rng):
    del frozen
    x, a, b, q = _pair_inputs(batch)
    n = x.shape[0]
    rm = self.models.reward
    r = rm(params, x, jnp.concatenate([a, b]),
           rngs=dropout_rngs(rm.network, rng))
    loss_B, metrics = losses.bradley_terry_loss(r[:n], r[n:], q,
                                                margin=self.margin)
    metrics["rm/reward_mean"] = jnp.mean(r)
    return jnp.mean(loss_B), metrics
