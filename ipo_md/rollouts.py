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

from ipo_md import partitioning
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

  def build(params, inputs, row_beta):
    del row_beta
    cache = scoring.init_decode_cache(net, params, inputs,
                                      cfg.max_decode_length, repeats=repeats)
    fn = mixture.with_logps(scoring.tokens_to_logits_fn(net, params),
                            POLICY_LOGPS)
    return fn, cache

  return _sample_rows(build, params, inputs_BxS, rng, cfg, repeats)


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
  # Checked here, on the whole batch: a device's rows are traced inside
  # shard_map, where the mixture cannot read their values.
  mixture.check_beta(beta)
  n = repeats * inputs_BxS.shape[0]
  row_beta = None
  if not isinstance(beta, (int, float)):
    row_beta = jnp.asarray(beta)
    if row_beta.shape != (n,):
      raise ValueError(
          f"mixture beta has {row_beta.shape[0]} rows but the batch has {n} "
          f"({repeats} completions of {inputs_BxS.shape[0]} prompts).")

  def build(params, inputs, row_beta):
    policy_params, ref_params = params
    t = cfg.max_decode_length
    cache = (scoring.init_decode_cache(policy_net, policy_params, inputs, t,
                                       repeats=repeats),
             scoring.init_decode_cache(ref_net, ref_params, inputs, t,
                                       repeats=repeats))
    fn = mixture.geometric_mixture(
        scoring.tokens_to_logits_fn(policy_net, policy_params),
        scoring.tokens_to_logits_fn(ref_net, ref_params),
        beta if row_beta is None else row_beta)
    return fn, cache

  return _sample_rows(build, (policy_params, ref_params), inputs_BxS, rng,
                      cfg, repeats, row_beta)


def _data_parallel_mesh(batch: int):
  """The mesh being traced under (`partitioning.activation_sharding`) when
  it splits only the batch (every other axis of size 1) into blocks of whole
  prompts; else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  shape = dict(mesh.shape)
  data = shape.pop(partitioning.DATA, 1)
  if data <= 1 or batch % data or any(size > 1 for size in shape.values()):
    return None
  return mesh


def _sample_rows(build, params, inputs_BxS: jax.Array, rng: jax.Array,
                 cfg: sampling.SamplingConfig, repeats: int,
                 row_beta: jax.Array | None = None) -> sampling.Samples:
  """Samples `repeats` completions of every prompt in the network's
  prompt-major rows (`scoring.prompt_major`), each with the random numbers
  of its row in the framework's order, and returns them in the framework's
  order, under stop-gradient.

  `build(params, inputs, row_beta)` returns the sampler's tokens-to-logits
  function and cache for some prompts (row_beta: their rows' mixture weights
  or None). On a mesh that only splits the batch, each device samples its
  own prompts (`jax.shard_map`): the decoding loop then exchanges nothing
  between devices, and each device stops when its own rows have ended,
  instead of the devices agreeing at every step whether all rows have. The
  samples are the same either way: every device draws the random numbers of
  the whole batch at each step and takes its rows' (a few floats per row).
  """
  b = inputs_BxS.shape[0]
  n = repeats * b
  order = scoring.prompt_major(jnp.arange(n, dtype=jnp.int32), repeats)
  if row_beta is not None:
    row_beta = scoring.prompt_major(row_beta, repeats)

  mesh = _data_parallel_mesh(b)
  in_order = mesh is None and repeats == 1  # Row k draws number k.

  def draw(params, rng, inputs, order, *row_beta):
    fn, cache = build(params, inputs, row_beta[0] if row_beta else None)
    return sampling.sample(fn, cache, rng, batch_size=order.shape[0],
                           cfg=cfg, draw_order=None if in_order else order,
                           num_draws=n)

  args = (params, rng, inputs_BxS, order) + (
      () if row_beta is None else (row_beta,))
  if mesh is None:
    out = draw(*args)
  else:
    rows = jax.sharding.PartitionSpec(partitioning.DATA)
    whole = jax.sharding.PartitionSpec()
    out = jax.shard_map(draw, mesh=mesh,
                        in_specs=(whole, whole) + (rows,) * (len(args) - 2),
                        out_specs=rows, check_vma=False)(*args)
  out = jax.tree_util.tree_map(
      lambda x: scoring.framework_major(x, repeats), out)
  return jax.tree_util.tree_map(jax.lax.stop_gradient, out)


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
