"""The token-wise geometric mixture of a policy and a reference.

At every step the mixture samples from

  log_softmax((1 - beta) * log pi_theta(.|x, y_<n) + beta * log pi_ref(.|x, y_<n)),

which equals log_softmax((1 - beta) * logits_theta + beta * logits_ref): the
per-position normalisers cancel (ALGORITHMS.md §3). beta is the weight on the
*reference* (TRL's `mixture_coef`, the paper's beta): 0 is the policy, 1 the
reference. It is the token-wise approximation used by the papers, not the
sequence-level mixture, whose normaliser is intractable.
"""

import jax

from ipo_md.decoding import sampling


def geometric_mixture(policy: sampling.TokensToLogits,
                      reference: sampling.TokensToLogits,
                      beta: float) -> sampling.TokensToLogits:
  """A TokensToLogits over the cache pair (policy_cache, reference_cache).

  Its aux holds the policy's and the reference's log-probs ("policy", "ref"),
  so the sampler records both for every sampled token. Callers that want beta
  = 0 without running the reference at all should sample from `policy`
  directly; `beta` must be a Python float in [0, 1] (it is fixed at trace
  time).
  """
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"mixture beta={beta} must be in [0, 1] (weight on the "
                     "reference).")

  def tokens_to_logits(tokens_Bx1, cache):
    policy_cache, ref_cache = cache
    logits_p, policy_cache, _ = policy(tokens_Bx1, policy_cache)
    logits_r, ref_cache, _ = reference(tokens_Bx1, ref_cache)
    logp_p = jax.nn.log_softmax(logits_p, axis=-1)
    logp_r = jax.nn.log_softmax(logits_r, axis=-1)
    mixed = (1.0 - beta) * logp_p + beta * logp_r
    return mixed, (policy_cache, ref_cache), {"policy": logp_p, "ref": logp_r}

  return tokens_to_logits


def with_logps(fn: sampling.TokensToLogits, name: str) -> sampling.TokensToLogits:
  """Adds fn's own log-probs to its aux under `name`."""

  def tokens_to_logits(tokens_Bx1, cache):
    logits, cache, aux = fn(tokens_Bx1, cache)
    return logits, cache, {**aux, name: jax.nn.log_softmax(logits, axis=-1)}

  return tokens_to_logits
