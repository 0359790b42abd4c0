"""Training objectives: how a batch becomes a loss, behind one protocol.

An objective is built from the run's models (`models.Models`) and its own
hyper-parameters, and has two pure phases:

* `prepare(params, frozen, batch, rng)`: everything without a gradient:
  sampling completions (under stop-gradient), labelling them with a
  preference signal, reference log-probs;
* `loss(params, frozen, prepared, rng)`: what is differentiated: the
  teacher-forced log-probs (or a learned model's read-out) and a loss of
  `ipo_md.losses`.

`params` is the trained model's tree; `frozen` is a `types.Frozen` with the
frozen models the stage reads. Each objective also declares the batch kind it
consumes (`batch_kind`), the frozen roles it reads (`reads`) and how many
sampled rows one example becomes (`rows_per_example`), so the whole run is
checked against its data and models before any stage trains.
"""

import dataclasses
from typing import Any, Callable, Protocol

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


class Objective(Protocol):
  """What the train step and the whole-run validation need of an objective."""

  batch_kind: str          # "sft" | "pairs" | "prompts"
  reads: tuple[str, ...]   # frozen roles used, e.g. ("reference",)
  rows_per_example: int    # sampled rows per example (throughput metric)

  def prepare(self, params: types.PyTree, frozen: types.Frozen, batch: dict,
              rng: jax.Array) -> tuple[dict, dict]:
    ...

  def loss(self, params: types.PyTree, frozen: types.Frozen, prepared: dict,
           rng: jax.Array) -> tuple[jax.Array, dict]:
    ...


def _dropout_rngs(net: network.Transformer, rng):
  return {"dropout": rng} if net.config.dropout_rate > 0 else None


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
                                   rngs=_dropout_rngs(net, rng))
    loss_B, metrics = losses.sft_loss(scores.token, scores.mask)
    tokens = jnp.maximum(jnp.sum(scores.mask), 1.0)
    return jnp.sum(loss_B) / tokens, metrics


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


def _check_hyper(cls_name: str, beta, label_mode: str, reduce: str):
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (
      0.0 <= beta <= 1.0):
    raise ValueError(
        f"{cls_name}.beta={beta!r} must be a float in [0, 1] (the mixture "
        "weight on the reference; 0 = sample from the policy alone).")
  if label_mode not in LABEL_MODES:
    raise ValueError(
        f"{cls_name}.label_mode={label_mode!r}; choose one of {LABEL_MODES}.")
  if reduce not in logprobs.REDUCTIONS:
    raise ValueError(
        f"{cls_name}.reduce={reduce!r}; choose one of {logprobs.REDUCTIONS}.")


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnlinePairwise:
  """Online contrastive methods: online IPO (beta=0), IPO-MD (beta>0), and
  online DPO / SLiC with their losses (arXiv 2403.08635 §4-5; docs/methods.md).

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
    beta: mixture weight on the reference, in [0, 1].
    label_mode: "soft" (p weights both orderings; the paper's choice),
      "bernoulli" (a 0/1 label drawn from p) or "argmax" (changes the fixed
      point).
    symmetrize_preference: use 0.5 (p(y,y') + 1 - p(y',y)).
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
    resolve_signal(self.models, self.preference)

  @property
  def signal(self):
    return resolve_signal(self.models, self.preference)

  @property
  def reads(self) -> tuple[str, ...]:
    role = preference_base.role(self.signal)
    return (models_lib.REFERENCE,) + ((role,) if role else ())

  def prepare(self, params, frozen, batch, rng):
    inputs = batch["inputs"]
    b = inputs.shape[0]
    eos = self.sampling.eos_id
    sample_rng, label_rng = jax.random.split(rng)
    samples = rollouts.sample_mixture(
        self.models.policy, params, self.models.reference, frozen.reference,
        inputs, sample_rng, self.sampling, beta=float(self.beta), repeats=2)
    y, yp = rollouts.split_pairs(samples, b)
    mask = logprobs.target_mask(samples.tokens, eos_id=eos)
    ref = reference_logps(samples, mask, self.models.reference,
                          frozen.reference, inputs, samples.tokens,
                          reduce=self.reduce, eos_id=eos)
    signal = self.signal
    pref = rollouts.judge(signal, preference_base.params_for(signal, frozen),
                          inputs, y, yp, symmetrize=self.symmetrize_preference)
    prepared = dict(inputs=inputs, y=y, yp=yp,
                    label=label_pairs(pref, self.label_mode, label_rng),
                    ref_y=ref.sequence[:b], ref_yp=ref.sequence[b:])
    metrics = {"preference/mean": jnp.mean(pref),
               "preference/abs_margin": jnp.mean(jnp.abs(pref - 0.5)),
               **rollouts.sample_statistics(samples.tokens, mask, eos)}
    return jax.lax.stop_gradient(prepared), metrics

  def loss(self, params, frozen, prepared, rng):
    del frozen
    b = prepared["inputs"].shape[0]
    both = jnp.concatenate([prepared["y"], prepared["yp"]], axis=0)
    net = self.models.policy
    policy = scoring.score_targets(net, params, prepared["inputs"], both,
                                   reduce=self.reduce,
                                   eos_id=self.sampling.eos_id,
                                   rngs=_dropout_rngs(net, rng))
    loss_B, metrics = self.loss_fn(policy.sequence[:b], policy.sequence[b:],
                                   prepared["ref_y"], prepared["ref_yp"],
                                   prepared["label"])
    kl_B = 0.5 * ((policy.sequence[:b] - prepared["ref_y"])
                  + (policy.sequence[b:] - prepared["ref_yp"]))
    metrics["kl/sample_log_ratio"] = jnp.mean(jax.lax.stop_gradient(kl_B))
    return jnp.mean(loss_B), metrics


def _pair_inputs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array,
                                       jax.Array]:
  label = batch.get("label")
  if label is None:  # (chosen, rejected) with no soft label: chosen wins.
    label = jnp.ones((batch["inputs"].shape[0],), jnp.float32)
  return batch["inputs"], batch["chosen"], batch["rejected"], label


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceModelTraining:
  """Trains the pairwise preference model on labelled pairs with
  cross-entropy (soft labels where the data gives them).

  Attributes:
    models: the run's models (its `preference` is the model trained).
    both_orders: also train on (rejected, chosen) with label 1 - q, so the
      model sees each response in both positions (the default).
  """

  models: models_lib.Models
  both_orders: bool = True
  batch_kind = PAIRS_KIND
  reads = ()
  rows_per_example = 1

  def __post_init__(self):
    if self.models.preference is None:
      raise ValueError(
          "PreferenceModelTraining trains models['preference'], which the "
          "run does not declare; add models['preference'] = ModelSpec("
          "config=..., head=@learned.PairwiseHead()).")

  def prepare(self, params, frozen, batch, rng):
    del params, frozen, rng
    return batch, {}

  def loss(self, params, frozen, batch, rng):
    del frozen, rng
    x, a, b, q = _pair_inputs(batch)
    pm = self.models.preference
    if self.both_orders:
      n = x.shape[0]
      logit = pm.logit(params, jnp.concatenate([x, x]),
                       jnp.concatenate([a, b]), jnp.concatenate([b, a]))
      loss_B, metrics = losses.preference_model_loss(
          logit, jnp.concatenate([q, 1.0 - q]))
      p_fwd, p_bwd = jax.nn.sigmoid(logit[:n]), jax.nn.sigmoid(logit[n:])
      metrics["pm/asymmetry"] = jnp.mean(jnp.abs(p_fwd + p_bwd - 1.0))
    else:
      loss_B, metrics = losses.preference_model_loss(pm.logit(params, x, a, b),
                                                     q)
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
    del frozen, rng
    x, a, b, q = _pair_inputs(batch)
    n = x.shape[0]
    r = self.models.reward(params, jnp.concatenate([x, x]),
                           jnp.concatenate([a, b]))
    loss_B, metrics = losses.bradley_terry_loss(r[:n], r[n:], q,
                                                margin=self.margin)
    metrics["rm/reward_mean"] = jnp.mean(r)
    return jnp.mean(loss_B), metrics
