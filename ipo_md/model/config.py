"""T5 architecture hyper-parameters and the named sizes of T5 v1.1."""

import dataclasses

import jax.numpy as jnp

# The T5 SentencePiece vocabulary (32,000 pieces + 100 extra ids), padded to a
# multiple of 128 as the public T5 v1.1 checkpoints are.
T5_VOCAB_SIZE = 32128
ACTIVATIONS = ("gelu", "relu", "linear", "silu")
DTYPES = ("float32", "bfloat16", "float16")
# Rematerialisation of each encoder/decoder layer in the backward pass, from
# most memory to least: "none" keeps every activation; "dots_saveable" keeps
# every matmul output (recomputes norms, activations, softmax);
# "minimal" keeps only the weight matmuls (projections and MLP), recomputing
# the attention logits and weights as well; "full" keeps only each layer's
# input and recomputes the whole layer.
REMAT_POLICIES = ("none", "dots_saveable", "minimal", "full")


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
  """Hyper-parameters of a T5 encoder-decoder.

  The defaults are T5 v1.1: gated-GELU MLP (`mlp_activations=("gelu",
  "linear")`), an output layer separate from the embedding, no biases, RMS
  layer norm, bucketed relative position biases shared by the layers of a
  stack. T5 1.0 is `mlp_activations=("relu",)` with `logits_via_embedding=True`
  (the output layer is the embedding, and the decoder output is scaled by
  emb_dim ** -0.5 before it).

  Attributes:
    vocab_size: number of token ids (embedding rows).
    emb_dim: model width d_model.
    num_heads: attention heads.
    head_dim: width of one head (d_kv); heads * head_dim need not be emb_dim.
    mlp_dim: hidden width of the MLP (d_ff).
    num_encoder_layers / num_decoder_layers: depth of each stack.
    mlp_activations: one activation per MLP input projection; two means gated.
    logits_via_embedding: tie the output layer to the embedding (T5 1.0).
    relative_attention_num_buckets / relative_attention_max_distance: buckets
      of the relative position bias.
    dropout_rate: dropout on residual branches and attention (0 = off).
    layer_norm_epsilon: RMS norm epsilon.
    dtype: activation dtype ("float32" or "bfloat16"); matmuls take their
      inputs in it, while norms, softmax, the output logits and log-probs are
      float32 regardless. "bfloat16" with param_dtype "float32" is T5X's
      mixed precision: float32 parameters and optimizer state, bfloat16
      activations.
    param_dtype: parameter storage dtype.
    remat: rematerialisation policy of each layer in the backward pass, one
      of REMAT_POLICIES (True means "full", False "none"); it changes memory
      and time, not the numbers.
  """

  vocab_size: int
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool | str = "none"

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_encoder_layers", "num_decoder_layers",
                 "relative_attention_num_buckets",
                 "relative_attention_max_distance"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"T5Config.{name}={value!r} must be a positive int.")
    if isinstance(self.mlp_activations, list):
      object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    bad = [a for a in self.mlp_activations if a not in ACTIVATIONS]
    if not self.mlp_activations or bad:
      raise ValueError(
          f"T5Config.mlp_activations={self.mlp_activations!r}: each must be "
          f"one of {ACTIVATIONS}."
      )
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(
            f"T5Config.{name}={getattr(self, name)!r} must be one of {DTYPES}."
        )
    if isinstance(self.remat, bool):
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(
          f"T5Config.remat={self.remat!r} must be one of {REMAT_POLICIES} "
          "(or a bool: True = 'full')."
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
          f"T5Config.dropout_rate={self.dropout_rate} must be in [0, 1)."
      )

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)

  def parameter_differences(self, other: "T5Config") -> dict:
    """{field: (other's, self's)} over the fields that shape the parameters:
    every field but COMPUTE_FIELDS (dropout, activation dtype, remat), which
    change how a model computes, not what its checkpoint holds."""
    return {f.name: (getattr(other, f.name), getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in COMPUTE_FIELDS
            and getattr(self, f.name) != getattr(other, f.name)}


# Fields of T5Config that a model started from another's parameters may
# change: the parameters' names, shapes and storage dtype do not depend on
# them.
COMPUTE_FIELDS = ("dropout_rate", "dtype", "remat")


# Named sizes. `tiny` is the CPU default of the built-in task; the others are
# the published T5 v1.1 shapes (small 77M, base 248M, large 783M, xl 2.85B).
SIZES = {
    "tiny": dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                 num_encoder_layers=2, num_decoder_layers=2),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                 num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                  num_encoder_layers=24, num_decoder_layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120,
               num_encoder_layers=24, num_decoder_layers=24),
}


def t5_1_1(size: str, *, vocab_size: int = T5_VOCAB_SIZE, **overrides) -> T5Config:
  """A T5 v1.1 config of a named size (tiny, small, base, large, xl)."""
  if size not in SIZES:
    raise ValueError(
        f"Unknown T5 size {size!r}; choose one of {tuple(SIZES)}."
    )
  return T5Config(vocab_size=vocab_size, **{**SIZES[size], **overrides})
