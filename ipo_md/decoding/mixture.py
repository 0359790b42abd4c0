"""The token-wise geometric mixture of a policy and a reference.

At every step the mixture samples from

  log_softmax((1 - beta) * log pi_theta(.|x, y_<n) + beta * log pi_ref(.|x, y_<n)),

which equals log_softmax((1 - beta) * logits_theta + beta * logits_ref): the
per-position normalisers cancel (docs/methods.md). beta is the weight on the
*reference* (TRL's `mixture_coef`, the paper's beta): 0 is the policy, 1 the
reference. It is the token-wise approximation used by the papers, not the
sequence-level mixture, whose normaliser is intractable.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ipo_md.decoding import sampling


def check_beta(beta: float | jax.typing.ArrayLike) -> jax.Array | None:
  """Raises ValueError unless `beta` is a float in [0, 1] or a float array
  [batch] (values checked when concrete). Returns the array, or None for a
  float."""
  if isinstance(beta, (int, float)):
    if not 0.0 <= beta <= 1.0:
      raise ValueError(f"mixture beta={beta} must be in [0, 1] (weight on "
                       "the reference).")
    return None
  beta_B = jnp.asarray(beta)
  if beta_B.ndim != 1 or not jnp.issubdtype(beta_B.dtype, jnp.floating):
    raise ValueError(
        f"mixture beta must be a float or a float array [batch]; got "
        f"{beta_B.dtype}{list(beta_B.shape)}.")
  try:
    concrete = np.asarray(beta_B)
  except jax.errors.TracerArrayConversionError:
    concrete = None  # Traced: the caller's jit boundary checks it.
  if concrete is not None and not np.all((concrete >= 0.0)
                                         & (concrete <= 1.0)):
    raise ValueError(f"mixture beta={concrete} must be in [0, 1] (weight "
                     "on the reference) in every row.")
  return beta_B


def geometric_mixture(policy: sampling.TokensToLogits,
                      reference: sampling.TokensToLogits,
                      beta: float | jax.typing.ArrayLike
                      ) -> sampling.TokensToLogits:
  """A TokensToLogits over the cache pair (policy_cache, reference_cache).

  Its aux holds the policy's and the reference's log-probs ("policy", "ref"),
  so the sampler records both for every sampled token. Callers that want beta
  = 0 for every row without running the reference at all should sample from
  `policy` directly.

  Args:
    policy / reference: the two models' TokensToLogits.
    beta: the weight on the reference, in [0, 1]: a Python float (one
      mixture for every row, fixed at trace time) or a float array [batch]
      (one weight per row: e.g. rows with beta = 0 sample the policy and
      rows with beta > 0 the mixture, in one sampler call, as Nash-MD-PG
      needs for y and y'). Array values are checked when they are concrete
      (not traced).

  Returns:
    A TokensToLogits whose logits are the mixture's log-probs [batch, V].
  """
  beta_B = check_beta(beta)

  def tokens_to_logits(tokens_Bx1, cache):
    policy_cache, ref_cache = cache
    logits_p, policy_cache, _ = policy(tokens_Bx1, policy_cache)
    logits_r, ref_cache, _ = reference(tokens_Bx1, ref_cache)
    logp_p = jax.nn.log_softmax(logits_p, axis=-1)
    logp_r = jax.nn.log_softmax(logits_r, axis=-1)
    if beta_B is None:
      mixed = (1.0 - beta) * logp_p + beta * logp_r
    else:
      if beta_B.shape[0] != logp_p.shape[0]:
        raise ValueError(
            f"mixture beta has {beta_B.shape[0]} rows but the batch has "
            f"{logp_p.shape[0]}; pass one weight per row.")
      w_Bx1 = beta_B.astype(jnp.float32)[:, None]
      # Rows with weight 0 are the policy's log-probs exactly.
      mixed = jnp.where(w_Bx1 == 0.0, logp_p,
                        (1.0 - w_Bx1) * logp_p + w_Bx1 * logp_r)
    return mixed, (policy_cache, ref_cache), {"policy": logp_p, "ref": logp_r}

  return tokens_to_logits


def with_logps(fn: sampling.TokensToLogits, name: str) -> sampling.TokensToLogits:
  """Adds fn's own log-probs to its aux under `name`."""

  def tokens_to_logits(tokens_Bx1, cache):
    logits, cache, aux = fn(tokens_Bx1, cache)
    return logits, cache, {**aux, name: jax.nn.log_softmax(logits, axis=-1)}

  return tokens_to_logits
