"""Bridges between the T5 network and the rest of the framework: teacher-forced
scoring (batch -> SequenceLogProbs) and the tokens-to-logits callable that the
model-agnostic sampler consumes."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ipo_md import logprobs
from ipo_md import types
from ipo_md.model import network
from ipo_md.model import output_logprobs


def prompt_major(x_RBx, repeats: int) -> jax.Array:
  """Rows [all prompts] * R (the framework's order: row r * b + i answers
  prompt i) -> the network's prompt-major order (row i * R + r).

  The network groups the R completions of a prompt next to each other so
  that a batch split into equal blocks over a data-parallel mesh keeps each
  completion on the device of its prompt (and of the prompt's encoder output
  and cross-attention keys and values): with the framework's order every
  decoder layer's cross-attention would need an all-to-all between devices,
  at every decoding step.
  """
  if repeats == 1:
    return x_RBx
  n = x_RBx.shape[0]
  x = x_RBx.reshape((repeats, n // repeats) + x_RBx.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(x_RBx.shape)


def framework_major(x_BRx, repeats: int) -> jax.Array:
  """The inverse of `prompt_major`: row i * R + r -> row r * b + i."""
  if repeats == 1:
    return x_BRx
  n = x_BRx.shape[0]
  x = x_BRx.reshape((n // repeats, repeats) + x_BRx.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(x_BRx.shape)


def encode(model: network.Transformer, params, inputs_BxS):
  return model.apply({"params": params}, inputs_BxS, method=model.encode)


def score_targets(model: network.Transformer, params, inputs_BxS, targets_BxT,
                  *, encoded=None, reduce: str = "sum", eos_id: int = 1,
                  rngs=None) -> types.SequenceLogProbs:
  """Teacher-forced log-probs of `targets` given `inputs`.

  `inputs` may have b rows for B = R * b targets: target row r * b + i is a
  completion of prompt i (e.g. y and y' of each prompt), and the encoder and
  the cross-attention keys and values run once per prompt. `encoded`
  [b, S, E] may be passed to skip the encoder.
  """
  deterministic = rngs is None
  if encoded is None:
    encoded = model.apply({"params": params}, inputs_BxS,
                          deterministic=deterministic, method=model.encode,
                          rngs=rngs)
  reps = targets_BxT.shape[0] // encoded.shape[0]
  if reps * encoded.shape[0] != targets_BxT.shape[0]:
    raise ValueError(
        f"targets batch {targets_BxT.shape[0]} is not a multiple of the "
        f"encoded batch {encoded.shape[0]}."
    )
  if inputs_BxS.shape[0] != encoded.shape[0]:
    raise ValueError(
        f"inputs batch {inputs_BxS.shape[0]} differs from the encoded batch "
        f"{encoded.shape[0]}; pass the prompts once per encoder row."
    )
  # No tiling: the decoder's cross-attention reads prompt i for its R rows,
  # which it takes prompt-major (network.Transformer.decode).
  grouped = prompt_major(targets_BxT, reps)
  hidden = model.apply({"params": params}, encoded, inputs_BxS,
                       logprobs.shift_right(grouped),
                       deterministic=deterministic, method=model.decode,
                       rngs=rngs, hidden_only=True)
  # Equal to logprobs.token_logprobs of the logits, without holding them.
  token = output_logprobs.token_logprobs(
      hidden, network.output_kernel(model.config, params), grouped)
  mask = logprobs.target_mask(targets_BxT, eos_id=eos_id)
  return logprobs.sequence_logprobs(framework_major(token, reps), mask,
                                    reduce=reduce)


def init_decode_cache(model: network.Transformer, params, inputs_BxS,
                      max_decode_length: int, *, repeats: int = 1) -> Any:
  """Runs the encoder once and builds the decoder cache for `repeats`
  completions per prompt.

  The encoder output and its cross-attention keys and values are stored once
  per prompt, not once per completion. The decoder's rows are the network's
  prompt-major order (row i * R + r is completion r of prompt i, see
  `prompt_major`): samples drawn with this cache come out in that order
  (`ipo_md.rollouts` returns them in the framework's order).
  """
  encoded = encode(model, params, inputs_BxS)
  dummy = jnp.zeros((repeats * encoded.shape[0], max_decode_length), jnp.int32)
  _, variables = model.apply({"params": params}, encoded, inputs_BxS, dummy,
                             decode=True, method=model.decode,
                             mutable=["cache"])
  return {"cache": variables["cache"], "inputs": inputs_BxS}


def tokens_to_logits_fn(model: network.Transformer, params):
  """A sampling.TokensToLogits for `model` with `params` (cache from
  `init_decode_cache`)."""

  def tokens_to_logits(tokens_Bx1, state):
    logits, variables = model.apply(
        {"params": params, "cache": state["cache"]}, None, state["inputs"],
        tokens_Bx1, decode=True, method=model.decode, mutable=["cache"])
    return (logits[:, 0], {"cache": variables["cache"],
                           "inputs": state["inputs"]}, {})

  return tokens_to_logits


def abstract_params(model: network.Transformer, *, input_length: int = 8,
                    target_length: int = 8):
  """Boxed (LogicallyPartitioned) abstract parameters, without memory."""
  x = jnp.ones((1, input_length), jnp.int32)
  y = jnp.ones((1, target_length), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), x, y)["params"]


def init_params(model: network.Transformer, rng, *, input_length: int = 8,
                target_length: int = 8):
  """Unboxed parameters (use inside jit with out_shardings for big models)."""
  x = jnp.ones((1, input_length), jnp.int32)
  y = jnp.ones((1, target_length), jnp.int32)
  return nn.unbox(model.init(rng, x, y)["params"])
