"""Rollouts: completions sampled from a policy or its geometric mixture with
the reference, and pairs of them judged by a preference signal.

Every online objective, the evaluation and the benchmarks sample and judge in
the same way; these functions are that one way, pure and traceable under jit.
Samples are always drawn under stop-gradient (nothing flows through them).
"""

from typing import Any

import jax
import jax.numpy as jnp

from ipo_md.decoding import mixture
from ipo_md.decoding import sampling
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import base as preference_base

POLICY_LOGPS = "policy"
REF_LOGPS = "ref"


def sample(net: network.Transformer, params, inputs_BxS: jax.Array,
           rng: jax.Array, cfg: sampling.SamplingConfig, *,
           repeats: int = 1) -> sampling.Samples:
  """`repeats` completions per prompt from the policy alone.

  Rows are ordered [all prompts] * repeats; `aux_logps["policy"]` holds each
  sampled token's log-prob under the policy (0 after EOS).
  """
  t = cfg.max_decode_length
  cache = scoring.init_decode_cache(net, params, inputs_BxS, t,
                                    repeats=repeats)
  fn = mixture.with_logps(scoring.tokens_to_logits_fn(net, params),
                          POLICY_LOGPS)
  out = sampling.sample(fn, cache, rng,
                        batch_size=repeats * inputs_BxS.shape[0], cfg=cfg)
  return jax.tree_util.tree_map(jax.lax.stop_gradient, out)


def sample_mixture(policy_net: network.Transformer, policy_params,
                   ref_net: network.Transformer, ref_params,
                   inputs_BxS: jax.Array, rng: jax.Array,
                   cfg: sampling.SamplingConfig, *, beta: Any,
                   repeats: int = 2) -> sampling.Samples:
  """`repeats` completions per prompt from the token-wise geometric mixture
  pi^(1-beta) pi_ref^beta (beta: weight on the reference).

  `beta` is a Python float, or a [repeats * batch] array (one weight per
  row, e.g. Nash-MD-PG's y from the policy and y' from the mixture in one
  call). A float beta of 0 never runs the reference. When the reference runs,
  `aux_logps` holds each token's log-prob under the policy ("policy") and the
  reference ("ref"), so no second reference pass is needed for log-ratios.
  """
  if isinstance(beta, (int, float)) and float(beta) == 0.0:
    return sample(policy_net, policy_params, inputs_BxS, rng, cfg,
                  repeats=repeats)
  t = cfg.max_decode_length
  policy_cache = scoring.init_decode_cache(policy_net, policy_params,
                                           inputs_BxS, t, repeats=repeats)
  ref_cache = scoring.init_decode_cache(ref_net, ref_params, inputs_BxS, t,
                                        repeats=repeats)
  fn = mixture.geometric_mixture(
      scoring.tokens_to_logits_fn(policy_net, policy_params),
      scoring.tokens_to_logits_fn(ref_net, ref_params), beta)
  out = sampling.sample(fn, (policy_cache, ref_cache), rng,
                        batch_size=repeats * inputs_BxS.shape[0], cfg=cfg)
  return jax.tree_util.tree_map(jax.lax.stop_gradient, out)


def split_pairs(samples: sampling.Samples, batch: int):
  """(y [B, T], y' [B, T]) from samples with two rows per prompt."""
  return samples.tokens[:batch], samples.tokens[batch:]


def judge(signal, params, inputs_BxS: jax.Array, y_BxT: jax.Array,
          yp_BxT: jax.Array, *, symmetrize: bool = True) -> jax.Array:
  """p(y > y' | x) from a PreferenceSignal, [B] float32 under stop-gradient.

  With `symmetrize`, 0.5 (p(y, y') + 1 - p(y', y)): exactly antisymmetric,
  which the theory of online IPO assumes (a learned model is not
  antisymmetric by construction).
  """
  if symmetrize:
    p = preference_base.symmetrized(signal, params, inputs_BxS, y_BxT, yp_BxT)
  else:
    p = signal(params, inputs_BxS, y_BxT, yp_BxT)
  return jax.lax.stop_gradient(p.astype(jnp.float32))


def sample_statistics(tokens_BxT: jax.Array, mask_BxT: jax.Array,
                      eos_id: int) -> dict[str, jax.Array]:
  """Length and EOS rate of sampled rows (shared metric names)."""
  return {
      "samples/length": jnp.mean(jnp.sum(mask_BxT, axis=1)),
      "samples/eos_rate": jnp.mean(jnp.any(tokens_BxT == eos_id, axis=1)),
  }
