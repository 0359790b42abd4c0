"""Rollouts: completions sampled from a policy or its geometric mixture with
the reference, and pairs of them judged by a preference signal.

Every online objective, the evaluation and the benchmarks sample and judge in
the same way; these functions are that one way, pure and traceable under jit.
Samples are always drawn under stop-gradient (nothing flows through them).

Rows of several completions per prompt are ordered [all prompts] * repeats:
row r * B + i is completion r of prompt i, so `tile_prompts` gives the prompt
of every row and the first B rows are y, the next B rows y', and so on.
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
  return _sample_rows(fn, cache, rng, inputs_BxS.shape[0], repeats, cfg)


def _sample_rows(fn, cache, rng, batch: int, repeats: int,
                 cfg: sampling.SamplingConfig) -> sampling.Samples:
  """Samples the network's prompt-major rows (`scoring.prompt_major`), each
  with the random numbers of its row in the framework's order, and returns
  them in the framework's order, under stop-gradient."""
  n = repeats * batch
  order = scoring.prompt_major(jnp.arange(n), repeats)
  out = sampling.sample(fn, cache, rng, batch_size=n, cfg=cfg,
                        draw_order=None if repeats == 1 else order)
  out = jax.tree_util.tree_map(
      lambda x: scoring.framework_major(x, repeats), out)
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
  n = repeats * inputs_BxS.shape[0]
  if not isinstance(beta, (int, float)) and jnp.shape(beta) == (n,):
    beta = scoring.prompt_major(jnp.asarray(beta), repeats)  # Row weights.
  fn = mixture.geometric_mixture(
      scoring.tokens_to_logits_fn(policy_net, policy_params),
      scoring.tokens_to_logits_fn(ref_net, ref_params), beta)
  return _sample_rows(fn, (policy_cache, ref_cache), rng,
                      inputs_BxS.shape[0], repeats, cfg)


def row_betas(beta: float, batch: int, *, policy_repeats: int,
              mixture_repeats: int) -> jax.Array:
  """[(policy_repeats + mixture_repeats) * batch] mixture weights: 0 on the
  first policy_repeats * batch rows (the policy itself), `beta` on the rest
  (Nash-MD-PG's y and y', drawn by one sampler call of `sample_mixture`)."""
  return jnp.concatenate([
      jnp.zeros((policy_repeats * batch,), jnp.float32),
      jnp.full((mixture_repeats * batch,), beta, jnp.float32)])


def sample_policy_and_mixture(policy_net: network.Transformer, policy_params,
                              ref_net: network.Transformer, ref_params,
                              inputs_BxS: jax.Array, rng: jax.Array,
                              cfg: sampling.SamplingConfig, *, beta: float,
                              policy_repeats: int = 1,
                              mixture_repeats: int = 1) -> sampling.Samples:
  """`policy_repeats` completions per prompt from the policy, then
  `mixture_repeats` from the geometric mixture with weight `beta` on the
  reference, in one sampler call (one weight per row).

  beta = 0 (self-play) samples every row from the policy alone, so the
  reference does not run and `aux_logps` has no "ref" entry.
  """
  repeats = policy_repeats + mixture_repeats
  if float(beta) == 0.0:
    return sample(policy_net, policy_params, inputs_BxS, rng, cfg,
                  repeats=repeats)
  betas = row_betas(beta, inputs_BxS.shape[0], policy_repeats=policy_repeats,
                    mixture_repeats=mixture_repeats)
  return sample_mixture(policy_net, policy_params, ref_net, ref_params,
                        inputs_BxS, rng, cfg, beta=betas, repeats=repeats)


def tile_prompts(inputs_BxS: jax.Array, repeats: int) -> jax.Array:
  """[repeats * B, S]: the prompt of every row of `repeats` completions."""
  return jnp.concatenate([inputs_BxS] * repeats, axis=0)


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


def reward(signal, params, inputs_BxS: jax.Array,
           y_RBxT: jax.Array) -> jax.Array:
  """r(x, y) of every row from a RewardSignal, [R * B] float32 under
  stop-gradient (rows of R completions per prompt, see the module doc)."""
  repeats = y_RBxT.shape[0] // inputs_BxS.shape[0]
  if repeats * inputs_BxS.shape[0] != y_RBxT.shape[0]:
    raise ValueError(
        f"{y_RBxT.shape[0]} completions are not a multiple of the "
        f"{inputs_BxS.shape[0]} prompts.")
  if not preference_base.shares_prompts(signal):
    inputs_BxS = tile_prompts(inputs_BxS, repeats)
  r = signal(params, inputs_BxS, y_RBxT)
  return jax.lax.stop_gradient(r.astype(jnp.float32))


def sequence_log_ratio(policy_token_BxT: jax.Array, ref_token_BxT: jax.Array,
                       mask_BxT: jax.Array) -> jax.Array:
  """log pi(y|x) - log pi_ref(y|x) per row, summed over the response tokens
  whatever the objective's reduction: with y ~ pi its mean estimates
  KL(pi || pi_ref) (the shared `kl/sampled` metric). [B] float32."""
  return jnp.sum(mask_BxT * (policy_token_BxT - ref_token_BxT), axis=1)


def sample_statistics(tokens_BxT: jax.Array, mask_BxT: jax.Array,
                      eos_id: int) -> dict[str, jax.Array]:
  """Length and EOS rate of sampled rows (shared metric names)."""
  return {
      "samples/length": jnp.mean(jnp.sum(mask_BxT, axis=1)),
      "samples/eos_rate": jnp.mean(jnp.any(tokens_BxT == eos_id, axis=1)),
  }
