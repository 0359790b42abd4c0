"""Offline contrastive methods: IPO, DPO and SLiC on a fixed set of pairs.

The pairs come from a `pairs` task (human comparisons such as TL;DR's, or the
embedded task's synthetic comparisons): a prompt, the chosen and the rejected
response and a float `label` = p(chosen > rejected) (1.0 when the data has
only hard labels). Nothing is sampled for the loss: the reference's
log-probs of both responses are computed once per batch in `prepare` (under
stop-gradient) and the pair loss of `ipo_md.losses` is applied to the policy's
log-ratio margin h(chosen, rejected). Offline IPO is arXiv 2310.12036 §5
(Eq. 17, Algorithm 1); offline DPO is arXiv 2305.18290; arXiv 2403.08635
App. B.1 compares them with their online versions. docs/methods.md has the
details and the options.
"""

import dataclasses

import jax
import jax.numpy as jnp

from ipo_md import logprobs
from ipo_md.decoding import sampling as sampling_lib
from ipo_md.model import scoring
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives


@dataclasses.dataclass(frozen=True, kw_only=True)
class OfflinePairwise:
  """Offline IPO / DPO / SLiC (the pair loss decides which).

  Attributes:
    models: the run's models.
    loss_fn: a pair loss of `ipo_md.losses` with its tau bound
      (losses.ipo_loss: offline IPO, (h - (p - 1/2)/tau)^2, which for p = 1
      is Eq. 17 of arXiv 2310.12036; losses.dpo_loss; losses.slic_loss or
      losses.slic_hf_loss).
    label_mode: "soft" (the data's label as given: hard 1.0 labels stay
      hard, soft labels weight both orderings; the default), "bernoulli" (a
      0/1 label drawn from it each step) or "argmax".
    reduce: "sum" (the papers' log pi(y|x); the default) or "mean" per token
      (TRL's DPOTrainer for IPO).
    eos_id: end-of-sequence id of the responses.
    sampling: None (the default), or a SamplingConfig: then one completion
      per prompt is sampled from the policy (under stop-gradient, outside
      the loss) so that the run logs the same sample metrics as the online
      methods (`kl/sampled`, `samples/length`, `samples/eos_rate`), at the
      cost of a sampler call per step.
  """

  models: models_lib.Models
  loss_fn: objectives.PairLoss
  label_mode: str = "soft"
  reduce: str = "sum"
  eos_id: int = 1
  sampling: sampling_lib.SamplingConfig | None = None
  batch_kind = objectives.PAIRS_KIND
  reads = (models_lib.REFERENCE,)
  rows_per_example = 1

  def __post_init__(self):
    owner = type(self).__name__
    objectives.check_choice(owner, "label_mode", self.label_mode,
                            objectives.LABEL_MODES)
    objectives.check_choice(owner, "reduce", self.reduce, logprobs.REDUCTIONS)
    objectives.check_pair_loss(owner, self.loss_fn)
    if self.models.policy is None:
      raise ValueError(f"{owner} trains the policy, which the run does not "
                       "declare; set train.model_config.")
    if self.sampling is not None and not isinstance(
        self.sampling, sampling_lib.SamplingConfig):
      raise ValueError(f"{owner}.sampling={self.sampling!r} must be None or "
                       "a SamplingConfig.")

  def _monitor(self, params, frozen, inputs, rng, label_B) -> dict:
    """The shared sample metrics of one policy sample per prompt."""
    rows = objectives.rollout(self.models, params, frozen, inputs, rng,
                              self.sampling, beta=0.0, policy_repeats=1,
                              mixture_repeats=0)
    return objectives.sample_metrics(
        log_ratio_B=rows.log_ratio(), signal_B=label_B,
        tokens_BxT=rows.tokens, mask_BxT=rows.mask,
        eos_id=self.sampling.eos_id)

  def prepare(self, params, frozen, batch, rng):
    x, chosen, rejected, label = objectives.pair_inputs(batch)
    b = x.shape[0]
    label_rng, sample_rng = jax.random.split(rng)
    ref = scoring.score_targets(self.models.reference, frozen.reference, x,
                                jnp.concatenate([chosen, rejected], axis=0),
                                reduce=self.reduce, eos_id=self.eos_id)
    label = label.astype(jnp.float32)
    prepared = dict(inputs=x, chosen=chosen, rejected=rejected,
                    label=objectives.label_pairs(label, self.label_mode,
                                                 label_rng),
                    ref_chosen=ref.sequence[:b], ref_rejected=ref.sequence[b:])
    if self.sampling is not None:
      metrics = self._monitor(params, frozen, x, sample_rng, label)
    else:
      metrics = {objectives.SIGNAL_METRIC: jnp.mean(label)}
    return jax.lax.stop_gradient(prepared), metrics

  def loss(self, params, frozen, prepared, rng):
    del frozen
    b = prepared["inputs"].shape[0]
    both = jnp.concatenate([prepared["chosen"], prepared["rejected"]], axis=0)
    net = self.models.policy
    policy = scoring.score_targets(net, params, prepared["inputs"], both,
                                   reduce=self.reduce, eos_id=self.eos_id,
                                   rngs=objectives.dropout_rngs(net, rng))
    loss_B, metrics = self.loss_fn(policy.sequence[:b], policy.sequence[b:],
                                   prepared["ref_chosen"],
                                   prepared["ref_rejected"], prepared["label"])
    del metrics[objectives.SIGNAL_METRIC]  # The data's label, from prepare.
    return jnp.mean(loss_B), metrics

