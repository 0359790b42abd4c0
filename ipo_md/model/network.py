"""The T5 encoder-decoder network (Raffel et al. 2020, arXiv 1910.10683).

`Transformer.encode` runs the encoder; `Transformer.decode` runs the decoder
either teacher-forced on whole target sequences or, with `decode=True`, one
token per call against a KV cache (see `layers.MultiHeadAttention`). Parameter
names follow T5X (`encoder/layers_0/attention/query/kernel`, ...), which keeps
the conversion to and from Hugging Face and T5X checkpoints a table.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ipo_md import axes
from ipo_md.model import config as config_lib
from ipo_md.model import layers
from ipo_md.model import matmul


def _common(cfg: config_lib.T5Config):
  return dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)


def _mask_bias(mask_BxLxS: jax.Array) -> jax.Array:
  """0 where attention is allowed, -1e10 elsewhere; [B, 1, L, S]."""
  return jnp.where(mask_BxLxS, 0.0, layers._NEG_INF)[:, None]  # pylint: disable=protected-access


class EncoderLayer(nn.Module):
  config: config_lib.T5Config

  @nn.compact
  def __call__(self, x_BxLxE, bias_BxHxLxS, deterministic=True):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, name="pre_attention_layer_norm",
                       **_common(cfg))(x_BxLxE)
    h = layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.emb_dim, dropout_rate=cfg.dropout_rate,
        name="attention", **_common(cfg))(h, h, bias_BxHxLxS,
                                          deterministic=deterministic)
    x = x_BxLxE + drop(h, deterministic=deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm",
                       **_common(cfg))(x)
    h = layers.MlpBlock(cfg.mlp_dim, cfg.emb_dim, cfg.mlp_activations,
                        cfg.dropout_rate, name="mlp", **_common(cfg))(
                            h, deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    return layers.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


class DecoderLayer(nn.Module):
  config: config_lib.T5Config

  @nn.compact
  def __call__(self, x_BxLxE, encoded_BxSxE, self_bias, cross_bias,
               decode=False, deterministic=True):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, name=name,
                                       **_common(cfg))
    attention = lambda name, is_cross: layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.emb_dim, is_cross=is_cross,
        dropout_rate=cfg.dropout_rate, name=name, **_common(cfg))
    h = norm("pre_self_attention_layer_norm")(x_BxLxE)
    h = attention("self_attention", False)(
        h, h, self_bias, decode=decode, deterministic=deterministic)
    x = x_BxLxE + drop(h, deterministic=deterministic)
    h = norm("pre_cross_attention_layer_norm")(x)
    h = attention("encoder_decoder_attention", True)(
        h, encoded_BxSxE, cross_bias, decode=decode,
        deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    h = norm("pre_mlp_layer_norm")(x)
    h = layers.MlpBlock(cfg.mlp_dim, cfg.emb_dim, cfg.mlp_activations,
                        cfg.dropout_rate, name="mlp", **_common(cfg))(
                            h, deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    return layers.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


_REMAT_POLICIES = {
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": None,  # Nothing saved inside the layer.
}
assert set(_REMAT_POLICIES) | {"none"} == set(config_lib.REMAT_POLICIES)


def _maybe_remat(cls, cfg, static_argnums):
  """The layer class, rematerialised as T5Config.remat asks."""
  if cfg.remat == "none":
    return cls
  return nn.remat(cls, static_argnums=static_argnums,
                  policy=_REMAT_POLICIES[cfg.remat])


class Encoder(nn.Module):
  config: config_lib.T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, inputs_BxL, *, deterministic=True):
    cfg = self.config
    mask_BxL = inputs_BxL > 0
    pos = jnp.arange(inputs_BxL.shape[1])
    bias = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.num_heads, bidirectional=True,
        name="relpos_bias", **_common(cfg))(pos, pos)
    bias = bias + _mask_bias(mask_BxL[:, None, :] & mask_BxL[:, :, None])
    x = self.shared_embedding(inputs_BxL)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    layer_cls = _maybe_remat(EncoderLayer, cfg, static_argnums=(3,))
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, name="encoder_norm",
                       **_common(cfg))(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: config_lib.T5Config
  shared_embedding: nn.Module

  def _self_bias(self, length: int, decode: bool):
    """Relative-position bias plus the causal mask, [1, H, L, S].

    In decode mode the sizing call (tokens of the maximum length) stores the
    whole [1, H, S_max, S_max] table in the cache, and each step slices the
    row of its position: no bucketing (a log per key) at every step.
    """
    cfg = self.config
    relpos = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=False, name="relpos_bias", **_common(cfg))
    if decode and self.has_variable("cache", "self_bias"):
      position = self.variable("cache", "position",
                               lambda: jnp.array(0, jnp.int32))
      i = position.value
      position.value = i + 1
      return jax.lax.dynamic_slice_in_dim(
          self.get_variable("cache", "self_bias"), i, 1, axis=2)
    pos = jnp.arange(length)
    causal_LxS = pos[None, :] <= pos[:, None]
    bias = relpos(pos, pos) + _mask_bias(causal_LxS[None])
    if decode:  # Sizing call: `length` is the cache length.
      self.put_variable("cache", "self_bias", bias)
      self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
    return bias

  @nn.compact
  def __call__(self, encoded_BxSxE, encoder_mask_BxS, tokens_BxL, *,
               decode=False, deterministic=True, hidden_only=False):
    cfg = self.config
    self_bias = self._self_bias(tokens_BxL.shape[1], decode)
    cross_bias = _mask_bias(encoder_mask_BxS[:, None, :])
    x = self.shared_embedding(tokens_BxL)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    layer_cls = _maybe_remat(DecoderLayer, cfg, static_argnums=(5, 6))
    for i in range(cfg.num_decoder_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(
          x, encoded_BxSxE, self_bias, cross_bias, decode, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, name="decoder_norm",
                       **_common(cfg))(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      x = x * cfg.emb_dim ** -0.5
    if hidden_only:  # The output layer's input (see output_kernel).
      return layers.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x)
    else:
      logits = layers.Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB),
                            name="logits_dense", out_dtype=jnp.float32,
                            **_common(cfg))(x)
    return layers.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))


class Transformer(nn.Module):
  """T5 encoder-decoder. `__call__` = teacher-forced logits [B, L, V]."""

  config: config_lib.T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       **_common(cfg))
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, inputs_BxS, *, deterministic=True):
    """Encoder output [B, S, E]; padding (id 0) is masked out."""
    return self.encoder(inputs_BxS, deterministic=deterministic)

  def decode(self, encoded_BxSxE, inputs_BxS, decoder_input_tokens_BxL, *,
             decode=False, deterministic=True, hidden_only=False):
    """Decoder logits [B, L, V] (float32).

    With `hidden_only=True`, the output layer's input [B, L, E] instead
    (logits = hidden @ output_kernel(config, params)).

    `encoded_BxSxE` and `inputs_BxS` may have b rows with B a multiple of b:
    decoder row i * R + r then reads prompt i (R = B / b completions per
    prompt share the encoder output and its cross-attention keys/values;
    rows prompt-major, see `layers.dot_product_attention`).
    With `decode=True` the first call sizes the cache (pass tokens of the
    maximum decode length) and stores the cross-attention keys and values;
    each later call takes one token [B, 1] and `encoded_BxSxE=None`.
    """
    return self.decoder(encoded_BxSxE, inputs_BxS > 0,
                        decoder_input_tokens_BxL, decode=decode,
                        deterministic=deterministic, hidden_only=hidden_only)

  def __call__(self, inputs_BxS, decoder_input_tokens_BxL, *,
               deterministic=True):
    encoded = self.encode(inputs_BxS, deterministic=deterministic)
    return self.decode(encoded, inputs_BxS, decoder_input_tokens_BxL,
                       deterministic=deterministic)


def output_kernel(cfg: config_lib.T5Config, params) -> jax.Array:
  """The output layer [E, V] in the parameters' dtype: logits_dense, or the
  transposed embedding when tied (the decoder has already scaled its input),
  materialised outside float32 so that a dot with it stays on XLA:CPU's
  fast path (`matmul.layout`). Callers cast it to the compute dtype.
  """
  if cfg.logits_via_embedding:
    return matmul.layout(params["token_embedder"]["embedding"], (1, 0),
                         cfg.jnp_dtype)
  return params["decoder"]["logits_dense"]["kernel"]


def output_columns(cfg: config_lib.T5Config, params, ids) -> jax.Array:
  """Columns `ids` of the output layer, [E, len(ids)], in the parameters'
  dtype (without transposing a tied embedding whole)."""
  ids = list(ids)
  if cfg.logits_via_embedding:
    return params["token_embedder"]["embedding"][ids].T
  return params["decoder"]["logits_dense"]["kernel"][:, ids]
