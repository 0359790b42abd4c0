"""Evaluations a stage runs while it trains, passed in rather than built in.

A stage's `evaluation` is built like its objective, from the run's models,
and the Trainer calls it every `eval_every` steps with the trained params and
the stage's frozen models. Two kinds:

* `PolicyEvaluation`: side-by-side against the reference on held-out prompts,
  under one or several judges (the gold oracle of the embedded task plays the
  role of the paper's PaLM 2 judge; the learned preference model is the
  signal the policy was trained against). Logging both judges' win rates on
  the same samples makes over-optimisation visible: the learned judge's win
  rate rising while the gold one stalls or falls.
* `PreferenceEvaluation`: a preference or reward model on held-out labelled
  pairs: accuracy, log-loss, expected calibration error, agreement with the
  gold preference where the data has one, and a reliability plot.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ipo_md import logprobs
from ipo_md import partitioning
from ipo_md import rollouts
from ipo_md import types
from ipo_md.data import pipeline as data_pipeline
from ipo_md.decoding import sampling
from ipo_md.preference import base as preference_base
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives


class Evaluation:
  """Protocol (duck-typed): `reads` (frozen roles used), `build(mesh, seed)
  -> fn(params, frozen) -> {name: float}` and `finish(directory)`."""


def _place(mesh, array: np.ndarray) -> jax.Array:
  # Every host holds the whole evaluation set: place it as the global array.
  return jax.make_array_from_process_local_data(
      partitioning.batch_sharding(mesh), array, array.shape)


def _components(signal, prefix, inputs, y) -> dict:
  components = getattr(signal, "components", None)
  if components is None:
    return {}
  return {f"{prefix}/{k}": jnp.mean(v) for k, v in
          components(inputs, y).items() if k in ("covered", "invented")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyEvaluation:
  """Win rates of the policy against the reference on held-out prompts.

  One sample of the policy and one of the reference per prompt (the same
  prompts and RNG at every evaluation); each judge compares them in both
  orders: `eval/win_rate_vs_ref/<judge>` = mean 0.5 (p(y_pi, y_ref) + 1 -
  p(y_ref, y_pi)). Judges with `components` (the oracle) also report
  `eval/policy/covered`, `eval/policy/invented` and the reference's.

  Attributes:
    models: the run's models.
    data: the held-out prompts (kind "prompts"; batch_size prompts are used).
    sampling: how both policies sample.
    judges: name -> a PreferenceSignal, or 'preference' / 'reward' for the
      run's learned models (read frozen).
    against_reference: False for a stage with no reference (SFT): only the
      policy's sample statistics (length, and the oracle's counts).
  """

  models: models_lib.Models
  data: data_pipeline.DataConfig
  sampling: sampling.SamplingConfig
  judges: Mapping[str, Any]
  against_reference: bool = True

  def __post_init__(self):
    if not self.judges:
      raise ValueError("PolicyEvaluation.judges is empty; name at least one, "
                       "e.g. {'gold': @oracle.FactsOracle()}.")
    if self.data.kind != objectives.PROMPTS_KIND:
      raise ValueError(
          f"PolicyEvaluation.data.kind={self.data.kind!r}; it samples "
          "responses to prompts: use a 'prompts' task.")
    object.__setattr__(self, "judges", dict(self.judges))
    self.signals()  # Unknown learned models fail here, not mid-run.

  def signals(self) -> dict:
    return {name: objectives.resolve_signal(self.models, j)
            for name, j in self.judges.items()}

  @property
  def reads(self) -> tuple[str, ...]:
    if not self.against_reference:
      return ()
    roles = {preference_base.role(s) for s in self.signals().values()}
    return (models_lib.REFERENCE,) + tuple(sorted(r for r in roles if r))

  def metrics(self, params, frozen: types.Frozen, inputs_BxS, rng) -> dict:
    """Pure (jit it)."""
    rng_pi, rng_ref = jax.random.split(rng)
    y_pi = rollouts.sample(self.models.policy, params, inputs_BxS, rng_pi,
                           self.sampling).tokens
    mask = logprobs.target_mask(y_pi, eos_id=self.sampling.eos_id)
    out = {"eval/policy/length": jnp.mean(jnp.sum(mask, axis=1))}
    if not self.against_reference:
      for signal in self.signals().values():
        out.update(_components(signal, "eval/policy", inputs_BxS, y_pi))
      return out
    y_ref = rollouts.sample(self.models.reference, frozen.reference,
                            inputs_BxS, rng_ref, self.sampling).tokens
    described = False
    for name, signal in self.signals().items():
      p = rollouts.judge(signal, preference_base.params_for(signal, frozen),
                         inputs_BxS, y_pi, y_ref)
      out[f"eval/win_rate_vs_ref/{name}"] = jnp.mean(p)
      if not described and hasattr(signal, "components"):
        out.update(_components(signal, "eval/policy", inputs_BxS, y_pi))
        out.update(_components(signal, "eval/ref", inputs_BxS, y_ref))
        described = True
    return out

  def build(self, mesh, seed: int):
    partitioning.check_batch_size(self.data.batch_size, mesh,
                                  "evaluation DataConfig.batch_size")
    inputs = _place(mesh, data_pipeline.load_batch(
        self.data, self.data.batch_size)["inputs"])
    fn = jax.jit(self.metrics)
    rng = jax.random.PRNGKey(seed + 12345)
    return lambda params, frozen: {
        k: float(v) for k, v in jax.device_get(
            fn(params, frozen, inputs, rng)).items()}

  def finish(self, directory) -> None:
    del directory


def preference_metrics(p_N, q_N, gold_N=None, num_bins: int = 10
                       ) -> tuple[dict[str, float], dict]:
  """A preference model's p(first > second) against labels q (see
  PreferenceEvaluation).

  Accuracy weighs each pair by its label (q on "first wins", 1 - q on
  "second wins") and counts p = 1/2 as half right; log-loss is the
  cross-entropy of p against q (p clipped to [1e-7, 1 - 1e-7]). The ECE uses
  the pairs with every other order swapped (p -> 1 - p, q -> 1 - q): the data
  lists the chosen response first, so unswapped outcomes would all be "first
  wins". With the gold preference: `gold_agreement` is the fraction of pairs
  where (p > 1/2) equals (gold > 1/2) (a gold tie counts as agreeing when
  p <= 1/2), and `gold_accuracy` and `gold_log_loss` are the gold's own
  accuracy and log-loss on the labels, the floors a model of these labels
  can reach. `expected_accuracy` is the accuracy expected when each label is
  drawn from the gold preference, as the synthetic annotators draw theirs
  (flip rate 0): gold on "first wins", 1 - gold otherwise, 1/2 at p = 1/2.
  It is `accuracy` without the labels' sampling noise (on 1,024 pairs that
  noise is about 1.2 points); `gold_expected_accuracy`, the mean of
  max(gold, 1 - gold), is its ceiling.

  Returns:
    (metrics keyed "eval/...", the ECE's per-bin arrays for the plot).
  """
  p = np.asarray(p_N, np.float64)
  q = np.asarray(q_N, np.float64)

  def accuracy(x, labels=q):
    return float(np.mean(labels * (x > 0.5) + (1 - labels) * (x < 0.5)
                         + 0.5 * (x == 0.5)))

  def log_loss(x):
    x = np.clip(x, 1e-7, 1 - 1e-7)
    return float(np.mean(-q * np.log(x) - (1 - q) * np.log(1 - x)))

  out = {"eval/accuracy": accuracy(p), "eval/log_loss": log_loss(p)}
  flip = np.arange(p.shape[0]) % 2 == 1
  out["eval/ece"], bins = expected_calibration_error(
      np.where(flip, 1 - p, p), np.where(flip, 1 - q, q), num_bins)
  if gold_N is not None:
    gold = np.asarray(gold_N, np.float64)
    out["eval/gold_agreement"] = float(np.mean((p > 0.5) == (gold > 0.5)))
    out["eval/gold_accuracy"] = accuracy(gold)
    out["eval/gold_log_loss"] = log_loss(gold)
    # Against labels drawn from the gold: the gold as a soft label.
    out["eval/expected_accuracy"] = accuracy(p, gold)
    out["eval/gold_expected_accuracy"] = accuracy(gold, gold)
  return out, bins


def expected_calibration_error(p_N: np.ndarray, y_N: np.ndarray,
                               num_bins: int = 10) -> tuple[float, dict]:
  """ECE of predicted probabilities against (soft) outcomes in equal-width
  bins: sum_b (n_b / N) |mean(y in b) - mean(p in b)|.

  Returns:
    (ece, {"count", "mean_p", "mean_y"}: per-bin arrays, for the plot).
  """
  p_N, y_N = np.asarray(p_N, np.float64), np.asarray(y_N, np.float64)
  bins = np.minimum((p_N * num_bins).astype(int), num_bins - 1)
  count = np.bincount(bins, minlength=num_bins).astype(np.float64)
  sum_p = np.bincount(bins, weights=p_N, minlength=num_bins)
  sum_y = np.bincount(bins, weights=y_N, minlength=num_bins)
  safe = np.maximum(count, 1.0)
  mean_p, mean_y = sum_p / safe, sum_y / safe
  ece = float(np.sum(count / max(len(p_N), 1) * np.abs(mean_y - mean_p)))
  return ece, {"count": count, "mean_p": mean_p, "mean_y": mean_y}


@dataclasses.dataclass(kw_only=True)
class PreferenceEvaluation:
  """A learned preference (or reward) model on held-out labelled pairs.

  The model's symmetrised p(chosen > rejected) (as the policy stages use it)
  against the data's labels q: `eval/accuracy` (label-weighted), `eval/
  log_loss`, `eval/ece` (10 equal-width bins, with the order of every other
  pair swapped so that outcomes are not all "first wins"); with the gold preference of
  the data (the `gold_pref` feature, or a `gold` signal) also
  `eval/gold_agreement` (fraction where model and gold prefer the same
  response), `eval/gold_accuracy` and `eval/gold_log_loss` (the gold's own
  accuracy and log-loss on the noisy labels: the ceiling and the floor; see
  `preference_metrics`). `finish` writes `reliability.png`.

  Attributes:
    models: the run's models.
    data: held-out pairs (kind "pairs"); all `data.batch_size`-sized chunks
      of the first `num_examples` pairs are scored.
    num_examples: pairs evaluated.
    model: 'preference' or 'reward' (scored as its Bradley-Terry preference).
    gold: optional PreferenceSignal used when the data has no `gold_pref`.
    num_bins: calibration bins.
  """

  models: models_lib.Models
  data: data_pipeline.DataConfig
  num_examples: int = 1024
  model: str = models_lib.PREFERENCE
  gold: Any = None
  num_bins: int = 10
  reads = ()

  def __post_init__(self):
    if self.data.kind != objectives.PAIRS_KIND:
      raise ValueError(
          f"PreferenceEvaluation.data.kind={self.data.kind!r}; it scores "
          "labelled pairs: use a 'pairs' task.")
    if self.num_examples < self.data.batch_size:
      raise ValueError(
          f"PreferenceEvaluation.num_examples={self.num_examples} is below "
          f"its batch_size={self.data.batch_size}.")
    self.signal = self.models.signal(self.model)
    self._last = None

  def _scores(self, params, batch):
    x, a, b = batch["inputs"], batch["chosen"], batch["rejected"]
    p = rollouts.judge(self.signal, params, x, a, b)
    out = {"p": p}
    if self.gold is not None:
      out["gold"] = rollouts.judge(self.gold, None, x, a, b)
    return out

  def build(self, mesh, seed: int):
    del seed
    partitioning.check_batch_size(self.data.batch_size, mesh,
                                  "evaluation DataConfig.batch_size")
    n = self.num_examples - self.num_examples % self.data.batch_size
    arrays = data_pipeline.load_batch(self.data, n)
    fn = jax.jit(self._scores)
    bs = self.data.batch_size

    def evaluate(params, frozen):
      del frozen
      chunks = []
      for start in range(0, n, bs):
        batch = {k: _place(mesh, arrays[k][start:start + bs])
                 for k in ("inputs", "chosen", "rejected")}
        chunks.append(jax.device_get(fn(params, batch)))
      scores = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
      return self._summarise(scores, arrays)

    return evaluate

  def _summarise(self, scores, arrays) -> dict:
    n = scores["p"].shape[0]
    gold = scores.get("gold")
    if gold is None and "gold_pref" in arrays:
      gold = arrays["gold_pref"][:n]
    out, self._last = preference_metrics(
        scores["p"], arrays.get("label", np.ones(n))[:n], gold,
        self.num_bins)
    return out

  def finish(self, directory) -> None:
    """Writes the last evaluation's reliability diagram."""
    if self._last is None:
      return
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    bins = self._last
    used = bins["count"] > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    ax.plot(bins["mean_p"][used], bins["mean_y"][used], marker="o",
            label=f"{self.model} model")
    ax.set_xlabel("predicted p(chosen > rejected)")
    ax.set_ylabel("observed label frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    with open(f"{directory}/reliability.png", "wb") as f:
      fig.savefig(f, format="png", dpi=110)
    plt.close(fig)

