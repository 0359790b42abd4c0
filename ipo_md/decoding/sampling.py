"""Ancestral sampling with a KV cache, against a tokens-to-logits callable.

Decoding knows nothing of T5: it calls `tokens_to_logits(tokens_Bx1, cache)`
which returns next-token logits, the updated cache and an `aux` dict of
[B, V] log-prob tables (for example the policy's and the reference's, when the
callable is a geometric mixture). The sampler records, for every sampled
token, its log-prob under each aux table, so the train step can reuse the
reference forward pass of the sampler (docs/methods.md).

The loop is a `lax.while_loop` that stops as soon as every row has emitted
EOS; positions after a row's EOS hold `pad_id`.
"""

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

# (tokens [B, 1], cache) -> (logits [B, V], cache, aux {name: [B, V]}).
TokensToLogits = Callable[[jax.Array, Any], tuple[jax.Array, Any, dict]]
_NEG_INF = -1e10


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """How to sample. Temperature is applied after mixing (docs/methods.md).

  Attributes:
    max_decode_length: number of decoding steps T (EOS included).
    temperature: > 0; 1.0 samples the model's distribution (the default; the
      paper's value is not found).
    top_k: keep the k most likely tokens (0 = all).
    top_p: nucleus sampling mass in (0, 1] (1.0 = all).
    eos_id / pad_id / start_id: special ids (T5: 1 / 0 / 0).
    min_decode_length: EOS cannot be drawn before this many tokens (as
      transformers' `min_new_tokens`; the models' log-probs that the sampler
      records are not changed). 0 (default): no minimum. The benchmarks set
      it to max_decode_length so that every row decodes in full.
  """

  max_decode_length: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int = 1
  pad_id: int = 0
  start_id: int = 0
  min_decode_length: int = 0

  def __post_init__(self):
    if self.max_decode_length <= 0:
      raise ValueError(
          f"max_decode_length={self.max_decode_length} must be > 0.")
    if not 0 <= self.min_decode_length <= self.max_decode_length:
      raise ValueError(
          f"min_decode_length={self.min_decode_length} must be in [0, "
          f"max_decode_length={self.max_decode_length}].")
    if self.temperature <= 0:
      raise ValueError(
          f"temperature={self.temperature} must be > 0; for greedy decoding "
          "use top_k=1.")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = no cut).")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1].")


@flax.struct.dataclass
class Samples:
  """tokens [B, T] (pad after EOS); aux_logps {name: [B, T]}, 0 after EOS."""

  tokens: jax.Array
  aux_logps: dict[str, jax.Array]


def filter_logits(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p; the pad token is never sampled."""
  logits = logits_BxV.astype(jnp.float32) / cfg.temperature
  logits = logits.at[:, cfg.pad_id].set(_NEG_INF)
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, _NEG_INF, logits)
  if cfg.top_p < 1.0:
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep a token when the mass strictly before it is < top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(mass_before < cfg.top_p, sorted_desc, jnp.inf),
                     axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, _NEG_INF, logits)
  return logits


_BLOCK = 128  # Vocabulary block of `categorical`'s two-level search.


def _first_above(cdf_NxK: jax.Array, p_NxK: jax.Array,
                 target_N: jax.Array) -> jax.Array:
  """Per row, the first index of positive p whose CDF exceeds the target.

  Falls back to the last index of positive p when rounding leaves the
  target at or above the row's total. Min/max over indices rather than
  argmax: XLA's CPU argmax (a (value, index) reduction) is an order of
  magnitude slower.
  """
  k = p_NxK.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, p_NxK.shape, 1)
  positive = p_NxK > 0
  first = jnp.min(jnp.where(positive & (cdf_NxK > target_N[:, None]), iota,
                            k), axis=-1)
  last = jnp.max(jnp.where(positive, iota, 0), axis=-1)
  return jnp.minimum(first, last)


def _cumsum(x_NxK: jax.Array) -> jax.Array:
  """Inclusive cumulative sum of each row, as a matmul with a triangle.

  XLA's CPU cumsum is a reduce-window, quadratic in K; K <= 256 here, so
  the matmul is small, and HIGHEST precision keeps it float32 on
  accelerators too.
  """
  k = x_NxK.shape[-1]
  upper_KxK = jnp.triu(jnp.ones((k, k), jnp.float32))
  return jnp.dot(x_NxK, upper_KxK, precision=jax.lax.Precision.HIGHEST)


def categorical(rng: jax.Array, logits_BxV: jax.Array,
                draw_order: jax.Array | None = None,
                num_draws: int | None = None) -> jax.Array:
  """One token per row from softmax(logits): exact inverse-CDF sampling.

  `jax.random.categorical` (Gumbel-max) draws a random number, takes two
  logs and an argmax for every vocabulary entry: about 45 ms per step for
  32 rows of T5's 32k vocabulary on a CPU core, more than the model.
  Inverse-CDF sampling needs one uniform number per row; a two-level search
  (sums of blocks of 128 probabilities, then a cumulative sum inside the one
  block that holds the draw) keeps the rest to one pass over the logits.
  A token of probability 0 (e.g. filtered to -1e10) is never returned.

  Args:
    rng: a PRNG key.
    logits_BxV: float32 logits [B, V].
    draw_order: optional int [B]: row k takes uniform number draw_order[k]
      of the `num_draws` (default B) drawn from `rng` (rows in another order,
      or a device's block of a larger batch, draw the same tokens).
    num_draws: how many uniform numbers to draw (with `draw_order`).

  Returns:
    int32 tokens [B].
  """
  b, v = logits_BxV.shape
  nb = -(-v // _BLOCK)
  logits = logits_BxV.astype(jnp.float32)
  p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  p_BxNxK = jnp.pad(p, ((0, 0), (0, nb * _BLOCK - v))).reshape(b, nb, _BLOCK)
  mass_BxN = jnp.sum(p_BxNxK, axis=-1)
  cdf_BxN = _cumsum(mass_BxN)
  u_B = jax.random.uniform(rng, (num_draws or b,))
  if draw_order is not None:
    u_B = u_B[draw_order]
  target_B = u_B * cdf_BxN[:, -1]
  block_B = _first_above(cdf_BxN, mass_BxN, target_B)
  # The mass before the block, then the target's place inside it.
  iota_BxN = jax.lax.broadcasted_iota(jnp.int32, (b, nb), 1)
  before_B = jnp.sum(jnp.where(iota_BxN < block_B[:, None], mass_BxN, 0.0),
                     axis=-1)
  p_BxK = jnp.take_along_axis(p_BxNxK, block_B[:, None, None], axis=1)[:, 0]
  within_B = _first_above(_cumsum(p_BxK), p_BxK, target_B - before_B)
  return (block_B * _BLOCK + within_B).astype(jnp.int32)


def sample(tokens_to_logits: TokensToLogits, cache: Any, rng: jax.Array, *,
           batch_size: int, cfg: SamplingConfig,
           draw_order: jax.Array | None = None,
           num_draws: int | None = None) -> Samples:
  """Samples [batch_size, cfg.max_decode_length] tokens (see module doc).

  `draw_order` ([batch_size] ints, optional): row k takes the random number
  of row draw_order[k] of a batch of `num_draws` rows (default batch_size)
  at every step (`categorical`), so a batch whose rows are a permutation of
  another's, or one device's block of it, draws the same tokens for the
  same rows.
  """
  t_max = cfg.max_decode_length
  _, _, aux0 = jax.eval_shape(
      tokens_to_logits, jnp.zeros((batch_size, 1), jnp.int32), cache)
  init = dict(
      i=jnp.array(0, jnp.int32),
      prev=jnp.full((batch_size, 1), cfg.start_id, jnp.int32),
      tokens=jnp.full((batch_size, t_max), cfg.pad_id, jnp.int32),
      aux={k: jnp.zeros((batch_size, t_max), jnp.float32) for k in aux0},
      done=jnp.zeros((batch_size,), bool),
      cache=cache,
  )

  def cond(s):
    return (s["i"] < t_max) & ~jnp.all(s["done"])

  def body(s):
    logits, cache, aux = tokens_to_logits(s["prev"], s["cache"])
    if cfg.min_decode_length:
      logits = logits.at[:, cfg.eos_id].set(jnp.where(
          s["i"] < cfg.min_decode_length, _NEG_INF, logits[:, cfg.eos_id]))
    step_rng = jax.random.fold_in(rng, s["i"])
    token = categorical(step_rng, filter_logits(logits, cfg), draw_order,
                        num_draws)
    token = jnp.where(s["done"], cfg.pad_id, token).astype(jnp.int32)
    record = {
        k: jnp.where(s["done"], 0.0,
                     jnp.take_along_axis(v, token[:, None], axis=1)[:, 0])
        for k, v in aux.items()
    }
    i = s["i"]
    return dict(
        i=i + 1,
        prev=token[:, None],
        tokens=s["tokens"].at[:, i].set(token),
        aux={k: s["aux"][k].at[:, i].set(record[k]) for k in record},
        done=s["done"] | (token == cfg.eos_id),
        cache=cache,
    )

  final = jax.lax.while_loop(cond, body, init)
  return Samples(tokens=final["tokens"], aux_logps=final["aux"])
