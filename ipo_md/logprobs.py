"""Logits and targets -> per-token and per-sequence log-probabilities.

The papers define log pi(y|x) as the teacher-forced *sum* over response
tokens; TRL's DPOTrainer averages for IPO. Which one is used is a named option
(`reduce`), never a silent choice (docs/methods.md, the options table).
"""

import jax
import jax.numpy as jnp

from ipo_md import types

REDUCTIONS = ("sum", "mean")


def target_mask(targets_BxT: jax.Array, *, eos_id: int = 1,
                pad_id: int = 0) -> jax.Array:
  """1.0 on scored tokens: every non-pad token up to and including the first
  EOS; 0.0 on padding and everything after the first EOS. [B, T] float32."""
  after_eos = jnp.cumsum(targets_BxT == eos_id, axis=1) - (
      targets_BxT == eos_id)
  return ((after_eos == 0) & (targets_BxT != pad_id)).astype(jnp.float32)


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log softmax(logits)[target] in float32, [B, T]."""
  if logits_BxTxV.ndim != 3 or targets_BxT.shape != logits_BxTxV.shape[:2]:
    raise ValueError(
        f"token_logprobs expects logits [B, T, V] and targets [B, T]; got "
        f"{logits_BxTxV.shape} and {targets_BxT.shape}."
    )
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]


def sequence_logprobs(token_logps_BxT: jax.Array, mask_BxT: jax.Array, *,
                      reduce: str = "sum") -> types.SequenceLogProbs:
  """Masked per-sequence log-probs: the sum (default) or the mean per token."""
  if reduce not in REDUCTIONS:
    raise ValueError(
        f"Unknown log-prob reduction {reduce!r}; choose one of {REDUCTIONS}."
    )
  token = token_logps_BxT * mask_BxT
  total = jnp.sum(token, axis=1)
  if reduce == "mean":
    total = total / jnp.maximum(jnp.sum(mask_BxT, axis=1), 1.0)
  return types.SequenceLogProbs(sequence=total, token=token, mask=mask_BxT)


def shift_right(targets_BxT: jax.Array, start_id: int = 0) -> jax.Array:
  """Decoder inputs for teacher forcing: [start, y_0, ..., y_{T-2}]."""
  start = jnp.full((targets_BxT.shape[0], 1), start_id, targets_BxT.dtype)
  return jnp.concatenate([start, targets_BxT[:, :-1]], axis=1)
