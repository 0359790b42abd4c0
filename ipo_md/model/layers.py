"""T5 building blocks in Flax linen, with logical axis names on every parameter
and activation (ipo_md.axes). The layers never name mesh axes.

Shapes use nanodo-style suffixes: B batch, L query length, S key length,
E emb_dim, H heads, D head_dim, F mlp_dim, V vocabulary.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipo_md import axes
from ipo_md.model import config as config_lib
from ipo_md.model import matmul

_NEG_INF = -1e10


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Sharding constraint in logical names (a no-op outside a mesh context,
  and inside `jax.shard_map`, where each device holds its own block)."""
  if jax.sharding.get_abstract_mesh().manual_axes:
    return x
  return nn.with_logical_constraint(x, names)


def _param(module, name, init, shape, names, dtype):
  return module.param(name, nn.with_logical_partitioning(init, names), shape,
                      dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; float32 math."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
    x = x_BxLxE.astype(jnp.float32)
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],),
                   (axes.EMBED,), self.param_dtype)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    # Explicit broadcast of the [E] scale: tests run with
    # jax_numpy_rank_promotion='raise'.
    scale = jnp.expand_dims(scale.astype(jnp.float32),
                            tuple(range(x.ndim - 1)))
    y = x * jax.lax.rsqrt(var + self.epsilon) * scale
    return y.astype(self.dtype)


class Dense(nn.Module):
  """A bias-free projection of the last axis with logical kernel axes.

  Inputs and kernel are cast to `dtype`; the product is accumulated in
  float32 and returned in `out_dtype` (default `dtype`): the output logits
  stay float32 from bfloat16 operands. The kernel's gradient is returned in
  its own (float32) dtype, accumulated in float32 (`ipo_md.model.matmul`).

  The leading dimensions are flattened into one before the matmul. With
  [B, L, E] inputs the weight gradient contracts two dimensions (B and L),
  and XLA:CPU canonicalises that dot by transposing the output gradient,
  fused into its elementwise producer (GELU backward, softmax backward):
  a strided pass that cost the T5-small update about a fifth of its time.
  A [B * L, E] matmul's gradients are plain matmuls.
  """

  features: int
  kernel_axes: tuple[str, str]
  init_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  out_dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = _dense_kernel(self, x.shape[-1])
    return _matmul_2d(x, kernel, self.dtype, self.out_dtype or self.dtype)


def _dense_kernel(module, fan_in: int) -> jax.Array:
  """The [fan_in, features] kernel param of a Dense (or DenseKernel)."""
  init = nn.initializers.normal(stddev=module.init_scale / math.sqrt(fan_in))
  return _param(module, "kernel", init, (fan_in, module.features),
                module.kernel_axes, module.param_dtype)


class DenseKernel(nn.Module):
  """A Dense's kernel param itself, [fan_in, features] (same name, init and
  logical axes as Dense's), for computations that apply it otherwise."""

  features: int
  kernel_axes: tuple[str, str]
  init_scale: float = 1.0
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, fan_in: int) -> jax.Array:
    return _dense_kernel(self, fan_in)


def _matmul_2d(x_NxK: jax.Array, w_KxM: jax.Array, dtype, out_dtype):
  """x [..., K] @ w [K, M] as one [prod(...), K] matmul (see Dense), with
  operands in `dtype` and every dot of its gradient on XLA:CPU's fast path
  (ipo_md.model.matmul)."""
  lead = x_NxK.shape[:-1]
  y = matmul.matmul(x_NxK.reshape(-1, x_NxK.shape[-1]), w_KxM, dtype,
                    out_dtype)
  return y.reshape(lead + (w_KxM.shape[-1],))


def relative_position_bucket(relative_position: np.ndarray | jax.Array, *,
                             bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's bucketing of key_position - query_position (Raffel et al. 2020).

  Half the buckets (all of them when unidirectional) hold exact distances up to
  num_buckets/2 (resp. /4); the rest grow logarithmically up to max_distance.
  """
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """Learned per-head bias of each relative-position bucket: [1, H, L, S]."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_pos_L: jax.Array, key_pos_S: jax.Array) -> jax.Array:
    table_HxK = _param(self, "rel_embedding", nn.initializers.normal(1.0),
                       (self.num_heads, self.num_buckets),
                       (axes.HEADS, axes.RELPOS_BUCKETS), self.param_dtype)
    buckets_LxS = relative_position_bucket(
        key_pos_S[None, :] - query_pos_L[:, None],
        bidirectional=self.bidirectional, num_buckets=self.num_buckets,
        max_distance=self.max_distance)
    bias_HxLxS = jnp.take(table_HxK.astype(jnp.float32), buckets_LxS, axis=1)
    return bias_HxLxS[None]


# Float32 attention over at least this many keys normalises its weights
# after the product with the values (see dot_product_attention).
NORMALISE_AFTER_KEYS = 128


# XLA:CPU computes the attention of a layer in one fused program, at about
# half its rate per product once there are more than CPU_FAST_KEYS keys, unless
# the program's float32 logits stay within about CPU_BLOCK_BYTES; there the
# attention goes through the batch in blocks (see dot_product_attention).
CPU_FAST_KEYS = 256
CPU_BLOCK_BYTES = 8 * 2 ** 20


def attention_blocks(b: int, logits_bytes_per_row: int, keys: int) -> int:
  """How many blocks dot_product_attention splits `b` key rows into: 1 off the
  CPU, over at most CPU_FAST_KEYS keys, or when all the float32 logits fit in
  CPU_BLOCK_BYTES; otherwise b / the largest divisor of b whose rows' logits
  fit (at least one row per block)."""
  if (jax.default_backend() != "cpu" or keys <= CPU_FAST_KEYS
      or b * logits_bytes_per_row <= CPU_BLOCK_BYTES):
    return 1
  fit = max(1, CPU_BLOCK_BYTES // logits_bytes_per_row)
  rows = max(n for n in range(1, min(fit, b) + 1) if b % n == 0)
  return b // rows


def dot_product_attention(q_BxLxHxD, k_bxHxDxS, v_bxHxSxD, bias,
                          dropout_rng=None, dropout_rate=0.0,
                          dtype=None) -> jax.Array:
  """Unscaled (T5) attention; softmax in float32. Returns [B, L, H, D].

  Keys are stored [batch, heads, head_dim, length] and values [batch, heads,
  length, head_dim]: the operand layouts of XLA's batched matmul
  ([batch..., contracted, columns] on the right), so neither is transposed.
  During decoding they are the KV cache, where a transpose would copy the
  whole cache at every step; with keys [b, H, S, D] instead, XLA:CPU's
  batched matmul was 10x slower at T5-small decoding shapes.

  The weights are normalised before or after the product with the values:
  softmax(logits) @ v, or (exp(logits - max) @ v) / sum(exp(logits - max))
  with the unnormalised weights in (0, 1] rounded to the compute dtype and
  the product and sums in float32. The two are the same attention up to
  rounding. After is faster on XLA:CPU, which otherwise fuses the softmax
  into the product at a high cost: forward 1.4-2.9x faster at 32-385 keys
  (bf16 and float32); under autodiff in float32 it is slower below about
  128 keys and up to 1.4x faster at 256. So float32 with fewer than
  NORMALISE_AFTER_KEYS keys (the built-in task's models, whose numbers stay
  those of earlier releases bit for bit) normalises first; every other case
  normalises after.

  The keys and values may have fewer rows than the queries: with B = b * R,
  query row i * R + r attends to key/value row i (R completions of each of b
  prompts share one copy of the encoder's keys and values). The R queries of
  a prompt then become R * L rows of one matmul against its keys. The rows
  are prompt-major so that a batch split into equal blocks (data parallelism)
  keeps every query row on the device of its key row (`scoring.prompt_major`
  converts from the framework's order).

  On the CPU, over more than CPU_FAST_KEYS keys and with no dropout, the b
  key rows go through in blocks (`attention_blocks`: a loop, each block's
  float32 logits within CPU_BLOCK_BYTES). Each block is the same computation
  on its own rows, so the result is the same bit for bit. XLA:CPU's fused
  attention ran 1.7-2.3x faster that way (forward; float32 at 8-32 rows of
  257-512 keys, bf16 at 32 rows of 385 keys: a preference model reading
  prompt, two completions and EOS), and at 256 keys or fewer it is no faster.

  The keys and values may be held in float32 while the attention computes in
  a narrower `dtype` (the CPU's bf16 decoding cache, see MultiHeadAttention):
  the values they hold are then values of `dtype`, the products run in
  float32 on them, and the weights are rounded to `dtype` before the product
  with the values, as the products in `dtype` would.

  Args:
    q_BxLxHxD: queries [B, L, H, D].
    k_bxHxDxS: keys [b, H, D, S], B a multiple of b.
    v_bxHxSxD: values [b, H, S, D].
    bias: additive logits bias [B', H', L', S] with B' in (1, b, B), H' in
      (1, H) and L' in (1, L).
    dropout_rng / dropout_rate: attention dropout (off when rng is None).
    dtype: the compute dtype (default: the keys' dtype).

  Returns:
    [B, L, H, D] in `dtype`.
  """
  big_b, l, h, d = q_BxLxHxD.shape
  b, _, _, s = k_bxHxDxS.shape
  r = big_b // b
  if r * b != big_b:
    raise ValueError(f"queries batch {big_b} is not a multiple of the keys' "
                     f"batch {b}.")
  dropout = dropout_rng is not None and dropout_rate > 0
  blocks = 1 if dropout else attention_blocks(b, r * h * l * s * 4, s)
  dtype = jnp.dtype(dtype or k_bxHxDxS.dtype)
  if blocks > 1:
    return _blocked_attention(q_BxLxHxD, k_bxHxDxS, v_bxHxSxD, bias, blocks,
                              dtype)
  return _attention(q_BxLxHxD, k_bxHxDxS, v_bxHxSxD, bias, dropout_rng,
                    dropout_rate, dtype)


def _blocked_attention(q_BxLxHxD, k_bxHxDxS, v_bxHxSxD, bias, n: int, dtype):
  """dot_product_attention over n blocks of the b key rows, in a loop."""
  big_b, l, h, d = q_BxLxHxD.shape
  b = k_bxHxDxS.shape[0]
  r, m = big_b // b, b // n

  def split_queries(x):
    """[b * R, ...] -> [n, m * R, ...]: block j holds the R queries of each
    of key rows j * m ... j * m + m - 1, in the same order."""
    return x.reshape((n, m * r) + x.shape[1:])

  def split_keys(x):
    return x.reshape((n, m) + x.shape[1:])

  per_block = (split_queries(q_BxLxHxD), split_keys(k_bxHxDxS),
               split_keys(v_bxHxSxD))
  if bias.shape[0] == 1:  # One bias for every row: passed whole.
    y = jax.lax.map(lambda x: _attention(*x, bias, None, 0.0, dtype),
                    per_block)
  else:
    split = split_queries if bias.shape[0] == big_b else split_keys
    y = jax.lax.map(lambda x: _attention(*x, None, 0.0, dtype),
                    per_block + (split(bias),))
  # [n, m * R, L, H, D] -> [b * R, L, H, D].
  return y.reshape(big_b, l, h, d)


def _attention(q_BxLxHxD, k_bxHxDxS, v_bxHxSxD, bias, dropout_rng,
               dropout_rate, dtype) -> jax.Array:
  """dot_product_attention in one program; the products in the keys' dtype
  (`held`), everything else rounded as in `dtype`."""
  big_b, l, h, d = q_BxLxHxD.shape
  b, _, _, s = k_bxHxDxS.shape
  r = big_b // b
  held = k_bxHxDxS.dtype
  # [b * R, L, H, D] -> [b, H, R, L, D]: the R * L rows of one matmul.
  q = matmul.layout(q_BxLxHxD.reshape(b, r, l, h, d).astype(dtype),
                    (0, 3, 1, 2, 4), held)
  logits = matmul.batched_matmul(q.reshape(b, h, r * l, d), k_bxHxDxS, held,
                                 jnp.float32)
  logits = logits.reshape(b, h, r, l, s) + _grouped_bias(bias, r, b)
  softmax_first = dtype == jnp.float32 and s < NORMALISE_AFTER_KEYS
  if softmax_first:
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    weights = jnp.exp(logits - jax.lax.stop_gradient(
        jnp.max(logits, axis=-1, keepdims=True)))
    norm = jnp.sum(weights, axis=-1, keepdims=True)
  if dropout_rng is not None and dropout_rate > 0:
    keep = jax.random.bernoulli(dropout_rng, 1 - dropout_rate, weights.shape)
    weights = weights * keep / (1 - dropout_rate)
  if held != dtype:  # Rounded as the product in `dtype` would round them.
    weights = weights.astype(dtype)
  y = matmul.batched_matmul(weights.reshape(b, h, r * l, s), v_bxHxSxD, held,
                            dtype if softmax_first else jnp.float32)
  if not softmax_first:
    y = (y.reshape(b, h, r, l, d) / norm).astype(dtype)
  # [b, H, R, L, D] -> [b * R, L, H, D].
  y = jnp.transpose(y.reshape(b, h, r, l, d), (0, 2, 3, 1, 4))
  return y.reshape(big_b, l, h, d)


def _grouped_bias(bias, r: int, b: int) -> jax.Array:
  """[B' , H', L', S] bias -> broadcastable to [b, H, R, L, S]."""
  if bias.shape[0] == r * b and r > 1:
    return jnp.swapaxes(bias.reshape((b, r) + bias.shape[1:]), 1, 2)
  return bias[:, :, None]


def decode_cache_dtype(dtype) -> jnp.dtype:
  """The dtype of the self-attention decoding cache of a `dtype` model:
  float32 for a narrower dtype on the CPU (see MultiHeadAttention), else
  `dtype`."""
  dtype = jnp.dtype(dtype)
  if jax.default_backend() == "cpu" and dtype.itemsize < 4:
    return jnp.dtype(jnp.float32)
  return dtype


class MultiHeadAttention(nn.Module):
  """T5 attention. In decode mode it keeps a cache in the "cache" collection.

  Self-attention (`is_cross=False`) caches keys [B, H, D, S_max] and values
  [B, H, S_max, D] of the tokens decoded so far, written in place one
  position per step. On the CPU a bfloat16 model holds this cache in float32
  (`decode_cache_dtype`; the values stay bf16 values): XLA:CPU computes the
  one-query products over it in float32, and with a bf16 cache it converted
  and copied the whole cache of every layer at every step. Cross-attention
  caches the keys and values of the encoder output once, at the
  cache-initialising call, and reuses them at every step without touching
  the encoder output again; the encoder output may have fewer rows than the
  decoder (see `dot_product_attention`), so several completions of a prompt
  share one copy.
  """

  num_heads: int
  head_dim: int
  out_features: int
  is_cross: bool = False
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _dense(self, name):
    inner = self.num_heads * self.head_dim
    if name == "out":
      return Dense(self.out_features, (axes.JOINED_KV, axes.EMBED),
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    # T5 folds 1/sqrt(head_dim) into the query initialisation.
    scale = self.head_dim ** -0.5 if name == "query" else 1.0
    return Dense(inner, (axes.EMBED, axes.JOINED_KV), init_scale=scale,
                 dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def _heads(self, x_BxLxI):
    """[B, L, H * D] -> [B, L, H, D]."""
    b, l, _ = x_BxLxI.shape
    x = x_BxLxI.reshape(b, l, self.num_heads, self.head_dim)
    return constrain(x, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))

  def _keys(self, x_BxSxI):
    """[B, S, H * D] -> keys [B, H, D, S] (see dot_product_attention)."""
    b, s, _ = x_BxSxI.shape
    x = x_BxSxI.reshape(b, s, self.num_heads, self.head_dim)
    x = matmul.layout(x, (0, 2, 3, 1), self.dtype)
    return constrain(x, (axes.BATCH, axes.HEADS, axes.KV, axes.KV_LENGTH))

  def _values(self, x_BxSxI):
    """[B, S, H * D] -> values [B, H, S, D]."""
    b, s, _ = x_BxSxI.shape
    x = x_BxSxI.reshape(b, s, self.num_heads, self.head_dim)
    x = matmul.layout(x, (0, 2, 1, 3), self.dtype)
    return constrain(x, (axes.BATCH, axes.HEADS, axes.KV_LENGTH, axes.KV))

  def _key_value(self, key, value, x_kv, decode: bool):
    if not decode:
      return self._keys(key(x_kv)), self._values(value(x_kv))
    if self.is_cross:
      if not self.has_variable("cache", "cross_key"):
        self.put_variable("cache", "cross_key", self._keys(key(x_kv)))
        self.put_variable("cache", "cross_value", self._values(value(x_kv)))
      return (self.get_variable("cache", "cross_key"),
              self.get_variable("cache", "cross_value"))
    return self._self_cache(key, value, x_kv)

  def _self_cache(self, key, value, x_Bx1xE):
    k, v = self._keys(key(x_Bx1xE)), self._values(value(x_Bx1xE))
    initialised = self.has_variable("cache", "cached_key")
    held = decode_cache_dtype(self.dtype)
    k, v = k.astype(held), v.astype(held)
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, held)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, held)
    index = self.variable("cache", "cache_index",
                          lambda: jnp.array(0, jnp.int32))
    if not initialised:
      return k, v  # Sizing call: the buffers now hold S_max zero slots.
    if v.shape[2] != 1:
      raise ValueError(
          f"Cached decoding takes one token per step; got {v.shape[2]}."
      )
    # In place: one key column and one value row per step.
    i = index.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, 0, 0, i))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, 0, i, 0))
    index.value = i + 1
    return ck.value, cv.value

  def _kernel_EHD(self, name, fan_in):
    """The key or value projection's kernel as [E, H, D]."""
    kernel = DenseKernel(self.num_heads * self.head_dim,
                         (axes.EMBED, axes.JOINED_KV),
                         param_dtype=self.param_dtype, name=name)(fan_in)
    return kernel.reshape(fan_in, self.num_heads, self.head_dim)

  def _single_query(self, q_Bx1xHxD, x_kv_bxSxE, bias, rng):
    """Cross-attention of one query per row without the keys and values.

    q.k_s = (W_k q).x_s and sum_s w_s v_s = W_v^T (sum_s w_s x_s), with x_s
    the encoder output at s: the query moves into the encoder's space
    ([B, H, E]), attends over x itself (heads folded into the query rows,
    one "head" of width E), and the result [B, H, E] goes through W_v. The
    same attention up to rounding, at O(B H S E) instead of O(b S E H D)
    for the projections of every encoder position: a preference or reward
    model read at the decoder's first step (the "encoder" layout) scores
    through 8 (T5-small) to 24 (T5-XL) such layers.
    """
    e = x_kv_bxSxE.shape[-1]
    w_k, w_v = self._kernel_EHD("key", e), self._kernel_EHD("value", e)
    dot = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    q_BxHxE = dot("bhd,ehd->bhe", q_Bx1xHxD[:, 0].astype(self.dtype),
                  w_k.astype(self.dtype))
    x = x_kv_bxSxE.astype(self.dtype)
    keys_bx1xExS = matmul.layout(x, (0, 2, 1), self.dtype)[:, None]
    u_BxHx1xE = dot_product_attention(
        q_BxHxE[:, :, None].astype(self.dtype), keys_bx1xExS, x[:, None],
        bias, rng, self.dropout_rate, self.dtype)
    y_BxHxD = dot("bhe,ehd->bhd", u_BxHx1xE[:, :, 0], w_v.astype(self.dtype))
    return y_BxHxD.astype(self.dtype)[:, None]

  @nn.compact
  def __call__(self, x_q_BxLxE, x_kv_BxSxE, bias, *, decode=False,
               deterministic=True) -> jax.Array:
    q = self._heads(self._dense("query")(x_q_BxLxE))
    rng = None
    if not deterministic and self.dropout_rate > 0:
      rng = self.make_rng("dropout")
    if self.is_cross and not decode and q.shape[1] == 1:
      y = self._single_query(q, x_kv_BxSxE, bias, rng)
    else:
      k, v = self._key_value(self._dense("key"), self._dense("value"),
                             x_kv_BxSxE, decode)
      y = dot_product_attention(q, k, v, bias, rng, self.dropout_rate,
                                self.dtype)
    b, l = y.shape[:2]
    return self._dense("out")(y.reshape(b, l, self.num_heads * self.head_dim))


class MlpBlock(nn.Module):
  """T5 MLP; with two activations it is gated (v1.1: gelu(x W0) * (x W1))."""

  mlp_dim: int
  emb_dim: int
  activations: tuple[str, ...] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxE, *, deterministic=True) -> jax.Array:
    dense = functools.partial(Dense, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    h = None
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      z = dense(self.mlp_dim, (axes.EMBED, axes.MLP), name=name)(x_BxLxE)
      z = _ACTIVATION_FNS[act](z)
      h = z if h is None else h * z
    h = constrain(h, (axes.BATCH, axes.LENGTH, axes.MLP))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense(self.emb_dim, (axes.MLP, axes.EMBED), name="wo")(h)


_ACTIVATION_FNS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "linear": lambda x: x,
    "silu": jax.nn.silu,
}
assert set(_ACTIVATION_FNS) == set(config_lib.ACTIVATIONS)


class Embed(nn.Module):
  """Token embedding [V, E]; `attend` gives logits against it (tied output)."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(1.0),
                            (self.num_embeddings, self.features),
                            (axes.VOCAB, axes.EMBED), self.param_dtype)

  def __call__(self, ids_BxL: jax.Array) -> jax.Array:
    # Rows first, then the cast: casting the whole table costs a pass over
    # it (64 MiB at T5's vocabulary) every step.
    x = jnp.take(self.embedding, ids_BxL, axis=0).astype(self.dtype)
    return constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))

  def attend(self, x_BxLxE: jax.Array) -> jax.Array:
    """Float32 logits against the embedding (operands in `dtype`)."""
    return _matmul_2d(x_BxLxE, matmul.layout(self.embedding, (1, 0),
                                             self.dtype),
                      self.dtype, jnp.float32)
