"""Training objectives: how a batch becomes a loss.

An objective has two phases, both pure:

* `prepare(params, frozen, batch, rng)`: everything without a gradient:
  sampling completions (under stop-gradient, ALGORITHMS.md §1), labelling
  them with the preference signal, and the reference log-probs.
* `loss(params, frozen, prepared, rng)`: teacher-forced policy log-probs and
  the loss of `ipo_md.losses`, differentiated by the train step.

`frozen` is a dict of parameter trees that are never trained: "ref" (the
reference policy) and "preference" (the preference model, or None).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ipo_md import logprobs
from ipo_md import losses
from ipo_md.decoding import mixture
from ipo_md.decoding import sampling
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import base as preference_base

LABEL_MODES = ("soft", "bernoulli", "argmax")
# (policy_y, policy_yp, ref_y, ref_yp, pref, ) -> (loss_B, metrics)
PairLoss = Callable[..., tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFT:
  """Supervised fine-tuning on (inputs, targets): token-averaged NLL."""

  model: network.Transformer
  eos_id: int = 1

  def prepare(self, params, frozen, batch, rng):
    del params, frozen, rng
    return batch, {}

  def loss(self, params, frozen, batch, rng):
    del frozen
    scores = scoring.score_targets(self.model, params, batch["inputs"],
                                   batch["targets"], eos_id=self.eos_id,
                                   rngs=_dropout_rngs(self.model, rng))
    loss_B, metrics = losses.sft_loss(scores.token, scores.mask)
    tokens = jnp.maximum(jnp.sum(scores.mask), 1.0)
    return jnp.sum(loss_B) / tokens, metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnlinePairwise:
  """Online contrastive methods: online IPO (beta=0), IPO-MD (beta>0), and
  online DPO / SLiC with their losses (ALGORITHMS.md §2.2-2.6).

  Two completions per prompt are sampled from the token-wise geometric
  mixture of the policy and the reference with weight `beta` on the
  reference (beta=0 never runs the reference in the sampler), labelled with
  p(y > y'|x) by `preference`, and the pair loss is applied to the log-ratio
  difference h of the *policy* against the reference (the mixture's own
  log-probs never enter the loss).

  Attributes:
    model: the policy's (and reference's) network.
    loss_fn: a pair loss of `ipo_md.losses` with its tau bound, e.g.
      functools.partial(losses.ipo_loss, tau=1.0).
    preference: a PreferenceSignal.
    sampling: SamplingConfig (temperature after mixing; 1.0 by default).
    beta: mixture weight on the reference, in [0, 1].
    label_mode: "soft" (p weights both orderings; the paper's choice),
      "bernoulli" (a 0/1 label drawn from p) or "argmax" (changes the fixed
      point; ALGORITHMS.md §6.5).
    symmetrize_preference: use 0.5 (p(y,y') + 1 - p(y',y)).
    reduce: "sum" (the papers' log pi(y|x)) or "mean" per token (TRL's IPO).
  """

  model: network.Transformer
  loss_fn: PairLoss
  preference: Any
  sampling: sampling.SamplingConfig
  beta: float = 0.0
  label_mode: str = "soft"
  symmetrize_preference: bool = True
  reduce: str = "sum"

  def __post_init__(self):
    if not 0.0 <= self.beta <= 1.0:
      raise ValueError(
          f"OnlinePairwise.beta={self.beta} must be in [0, 1] (the mixture "
          "weight on the reference; 0 = online IPO).")
    if self.label_mode not in LABEL_MODES:
      raise ValueError(
          f"label_mode={self.label_mode!r}; choose one of {LABEL_MODES}.")
    if self.reduce not in logprobs.REDUCTIONS:
      raise ValueError(
          f"reduce={self.reduce!r}; choose one of {logprobs.REDUCTIONS}.")

  def sample_pairs(self, params, ref_params, inputs_BxS, rng):
    """Two completions per prompt; returns (y, y', aux log-probs [2B, T])."""
    b = inputs_BxS.shape[0]
    t = self.sampling.max_decode_length
    policy_fn = scoring.tokens_to_logits_fn(self.model, params)
    policy_cache = scoring.init_decode_cache(self.model, params, inputs_BxS, t,
                                             repeats=2)
    if self.beta == 0.0:
      fn, cache = mixture.with_logps(policy_fn, "policy"), policy_cache
    else:
      ref_cache = scoring.init_decode_cache(self.model, ref_params, inputs_BxS,
                                            t, repeats=2)
      fn = mixture.geometric_mixture(
          policy_fn, scoring.tokens_to_logits_fn(self.model, ref_params),
          self.beta)
      cache = (policy_cache, ref_cache)
    out = sampling.sample(fn, cache, rng, batch_size=2 * b, cfg=self.sampling)
    return out.tokens[:b], out.tokens[b:], out.aux_logps

  def prepare(self, params, frozen, batch, rng):
    inputs = batch["inputs"]
    b = inputs.shape[0]
    sample_rng, label_rng = jax.random.split(rng)
    y, yp, aux = self.sample_pairs(params, frozen["ref"], inputs, sample_rng)
    both = jnp.concatenate([y, yp], axis=0)
    mask = logprobs.target_mask(both, eos_id=self.sampling.eos_id)
    if "ref" in aux:  # The mixture already ran the reference on these tokens.
      ref = logprobs.sequence_logprobs(aux["ref"], mask, reduce=self.reduce)
    else:
      ref = scoring.score_targets(self.model, frozen["ref"], inputs, both,
                                  reduce=self.reduce,
                                  eos_id=self.sampling.eos_id)
    pref = self._preference(frozen.get("preference"), inputs, y, yp)
    label = self._label(pref, label_rng)
    prepared = dict(inputs=inputs, y=y, yp=yp, label=label,
                    ref_y=ref.sequence[:b], ref_yp=ref.sequence[b:])
    lengths = jnp.sum(mask, axis=1)
    metrics = {"preference/mean": jnp.mean(pref),
               "preference/abs_margin": jnp.mean(jnp.abs(pref - 0.5)),
               "samples/length": jnp.mean(lengths),
               "samples/eos_rate": jnp.mean(jnp.any(
                   both == self.sampling.eos_id, axis=1))}
    return jax.lax.stop_gradient(prepared), metrics

  def _preference(self, pref_params, inputs, y, yp):
    if self.symmetrize_preference:
      return preference_base.symmetrized(self.preference, pref_params, inputs,
                                         y, yp)
    return self.preference(pref_params, inputs, y, yp)

  def _label(self, pref, rng):
    if self.label_mode == "soft":
      return pref
    return losses.hard_labels(pref, mode=self.label_mode, rng=rng)

  def loss(self, params, frozen, prepared, rng):
    del frozen
    b = prepared["inputs"].shape[0]
    both = jnp.concatenate([prepared["y"], prepared["yp"]], axis=0)
    policy = scoring.score_targets(self.model, params, prepared["inputs"],
                                   both, reduce=self.reduce,
                                   eos_id=self.sampling.eos_id,
                                   rngs=_dropout_rngs(self.model, rng))
    loss_B, metrics = self.loss_fn(policy.sequence[:b], policy.sequence[b:],
                                   prepared["ref_y"], prepared["ref_yp"],
                                   prepared["label"])
    return jnp.mean(loss_B), metrics


def _dropout_rngs(model: network.Transformer, rng):
  return {"dropout": rng} if model.config.dropout_rate > 0 else None
