"""Side-by-side evaluation of the policy against the reference.

`eval/win_rate_vs_ref` is the mean judged p(policy > reference) over held-out
prompts, one sample of each per prompt, judged in both orders
(0.5 * (p(y_pi, y_ref) + 1 - p(y_ref, y_pi))) so a position-biased judge
cannot favour either side (docs/methods.md, "Evaluation protocol").
"""

import jax
import jax.numpy as jnp

from ipo_md.decoding import mixture
from ipo_md.decoding import sampling
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import base as preference_base


def _sample(model, params, inputs, rng, cfg):
  cache = scoring.init_decode_cache(model, params, inputs,
                                    cfg.max_decode_length)
  fn = mixture.with_logps(scoring.tokens_to_logits_fn(model, params), "self")
  return sampling.sample(fn, cache, rng, batch_size=inputs.shape[0],
                         cfg=cfg).tokens


def _describe(preference, prefix, inputs, y):
  components = getattr(preference, "components", None)
  if components is None:
    return {}
  return {f"{prefix}/{k}": jnp.mean(v) for k, v in
          components(inputs, y).items()}


def evaluate(params, frozen, inputs_BxS, rng, *, model: network.Transformer,
             preference, cfg: sampling.SamplingConfig) -> dict:
  """Metrics of one held-out batch; pure (jit it). With no reference in
  `frozen`, only the policy's own sample statistics are reported."""
  rng_pi, rng_ref = jax.random.split(rng)
  y_pi = _sample(model, params, inputs_BxS, rng_pi, cfg)
  metrics = _describe(preference, "eval/policy", inputs_BxS, y_pi)
  if frozen.get("ref") is not None:
    y_ref = _sample(model, frozen["ref"], inputs_BxS, rng_ref, cfg)
    p = preference_base.symmetrized(preference, frozen.get("preference"),
                                    inputs_BxS, y_pi, y_ref)
    metrics["eval/win_rate_vs_ref"] = jnp.mean(p)
    metrics.update(_describe(preference, "eval/ref", inputs_BxS, y_ref))
  return metrics
