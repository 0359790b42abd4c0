"""Tabular stand-ins for the networks and signals of the method tests.

`TabularNet` has the interface of `network.Transformer` that scoring,
sampling and the objectives use (`init`, `apply` with `method=encode` /
`decode`, a decode cache, `hidden_only`, `config`, the output layer at
params["decoder"]["logits_dense"]["kernel"]), but its hidden state is the
constant 1 (E = 1), so its next-token logits are the output kernel's one row
theta [V], whatever the prompt and the prefix. With `max_decode_length=1` a
completion is one token, so the policy is exactly the theory lab's softmax
over K = V - 1 actions: token k + 1 is action k, and the pad token 0, which
the sampler never draws, has its logit set to -1e9 (`params_of`) so that
teacher-forced log-probs are normalised over the same K tokens the sampler
draws from. The objectives then run unchanged (sampler, mixture,
teacher-forced scoring, losses) on a policy whose exact expected gradient
`ipo_md.theory` computes by enumerating the K^2 pairs.
"""

import dataclasses
import types as pytypes

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD = 0
_PINNED = -1e9


class _Kernel(nn.Module):
  """A [1, V] parameter "kernel" (the output layer of an E = 1 network)."""

  vocab_size: int

  @nn.compact
  def __call__(self):
    return self.param("kernel", nn.initializers.zeros, (1, self.vocab_size))


class _Decoder(nn.Module):
  vocab_size: int

  @nn.compact
  def __call__(self):
    return _Kernel(self.vocab_size, name="logits_dense")()


class TabularNet(nn.Module):
  """Logits theta [V] at every position; the pad logit pinned to -1e9."""

  vocab_size: int

  @property
  def config(self):
    return pytypes.SimpleNamespace(
        dropout_rate=0.0, vocab_size=self.vocab_size,
        logits_via_embedding=False, jnp_dtype=jnp.float32)

  def encode(self, inputs_BxS, *, deterministic=True, **_):
    del deterministic
    return jnp.zeros(inputs_BxS.shape + (1,), jnp.float32)

  @nn.compact
  def decode(self, encoded, inputs_BxS, tokens_BxL, *, decode=False,
             deterministic=True, hidden_only=False, **_):
    del encoded, inputs_BxS, deterministic
    kernel_1xV = _Decoder(self.vocab_size, name="decoder")()
    if decode:
      index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
      index.value = index.value + 1
    hidden_BxLx1 = jnp.ones(tokens_BxL.shape + (1,), jnp.float32)
    if hidden_only:
      return hidden_BxLx1
    return hidden_BxLx1 @ kernel_1xV

  def __call__(self, inputs_BxS, tokens_BxL):
    return self.decode(self.encode(inputs_BxS), inputs_BxS, tokens_BxL)


def params_of(theta_K) -> dict:
  """The TabularNet parameters whose K action logits are theta_K (the pad
  logit -1e9), in the layout `network.output_kernel` reads."""
  theta_K = jnp.asarray(theta_K, jnp.float32)
  row = jnp.concatenate([jnp.full((1,), _PINNED, jnp.float32), theta_K])
  return {"decoder": {"logits_dense": {"kernel": row[None, :]}}}


def action_grad(grads: dict) -> np.ndarray:
  """d/d theta_K of a gradient tree of TabularNet (the pad entry dropped)."""
  return np.asarray(grads["decoder"]["logits_dense"]["kernel"])[..., 0, 1:]


@dataclasses.dataclass(frozen=True, eq=False)
class TabularPreference:
  """p(y > y') = P[a(y), a(y')] on the first token (a = token - 1)."""

  prefs_KxK: np.ndarray

  def __call__(self, params, inputs_BxS, y_BxT, yp_BxT):
    del params, inputs_BxS
    table = jnp.asarray(self.prefs_KxK, jnp.float32)
    return table[y_BxT[:, 0] - 1, yp_BxT[:, 0] - 1]


@dataclasses.dataclass(frozen=True, eq=False)
class TabularReward:
  """r(x, y) = r[a(y)] on the first token."""

  reward_K: np.ndarray

  def __call__(self, params, inputs_BxS, y_BxT):
    del params, inputs_BxS
    return jnp.asarray(self.reward_K, jnp.float32)[y_BxT[:, 0] - 1]


def prompts(batch: int) -> jax.Array:
  """Prompts the tabular network ignores ([batch, 2] int32)."""
  return jnp.full((batch, 2), 5, jnp.int32)
