# Copyright 2025 The ipo-md Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Target log-probs straight from the decoder's last hidden states.

Teacher-forced scoring needs log softmax(h W)[target] for every position, not
the [N, V] logits themselves. Computed the plain way, the logits, the
softmax and the backward pass's scatter of the targets each hold N x V
float32 (three x 251 MiB for the T5-small update: 32 completions x 64
tokens x 32k vocabulary; 3 GiB at the paper's T5-L shape). Here the rows go
through the output layer in chunks of about 64 MiB of logits: the forward
keeps only each row's log-normaliser, and the backward recomputes a chunk's
logits and turns them into the gradient (softmax - onehot, the textbook
cross-entropy gradient) without a scatter. One extra output-layer matmul
buys that memory back.

That matmul is the dearest in float32 (about 6 % of the T5-small update's
products). So when the activations are float32 and the softmax of all rows
fits in `keep_bytes` (384 MiB by default; the T5-small update's 2,048 rows
of 32k, padded to whole chunks, need 256 MiB), the forward keeps the softmax
itself, one float32 per logit, and the backward reads it instead of
recomputing the logits. The gradient is the same expression on the same
values. In bfloat16 the
recomputation runs at the bf16 matmul rate and the softmax is never kept.
"""

import functools

import jax
import jax.numpy as jnp

from ipo_md.model import matmul

_CHUNK_BYTES = 64 * 2 ** 20  # float32 logits per chunk.
_KEEP_BYTES = 384 * 2 ** 20  # float32 softmax kept for the backward pass.


def _chunk_rows(n: int, v: int, chunk_bytes: int) -> int:
  return max(1, min(n, chunk_bytes // (4 * v)))


def _chunks(x, rows: int):
  """[N, ...] -> [C, rows, ...], zero-padded."""
  n = x.shape[0]
  c = -(-n // rows)
  pad = [(0, c * rows - n)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad).reshape((c, rows) + x.shape[1:])


def _logits(h_nxE, w_ExV):
  return jnp.dot(h_nxE, w_ExV, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _token_logprobs(h_NxE, w_ExV, targets_N, rows, keep):
  del keep  # Only the backward pass differs.
  return _forward(h_NxE, w_ExV.astype(h_NxE.dtype), targets_N, rows)[0]


def _forward(h_NxE, w_ExV, targets_N, rows, keep=False):
  """Log-probs and, per chunk, the log-normalisers or (keep) the softmax;
  h and w share the compute dtype."""
  def one(args):
    h, t = args
    logits = _logits(h, w_ExV)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
    return picked - lse, _softmax(logits, lse) if keep else lse

  n = h_NxE.shape[0]
  logp, saved = jax.lax.map(one, (_chunks(h_NxE, rows),
                                  _chunks(targets_N, rows)))
  return logp.reshape(-1)[:n], saved


def _softmax(logits, lse):
  return jnp.exp(logits - lse[:, None])


def _fwd(h_NxE, w_ExV, targets_N, rows, keep):
  w_c = w_ExV.astype(h_NxE.dtype)
  logp, saved = _forward(h_NxE, w_c, targets_N, rows, keep)
  # The kernel's own dtype rides along as an empty array.
  return logp, (h_NxE, w_c, targets_N, saved, jnp.zeros((0,), w_ExV.dtype))


def _bwd(rows, keep, residuals, g_N):
  h_NxE, w_ExV, targets_N, saved, w_like = residuals
  n, v = h_NxE.shape[0], w_ExV.shape[1]
  # Both gradient dots in the plain form outside float32 (matmul.layout).
  transpose = lambda x: matmul.layout(x, (1, 0), w_ExV.dtype)
  w_VxE = transpose(w_ExV)

  def one(dw, args):
    h, t, kept, g = args
    p = kept if keep else _softmax(_logits(h, w_ExV), kept)
    onehot = jax.lax.broadcasted_iota(jnp.int32, p.shape, 1) == t[:, None]
    dlogits = (jnp.where(onehot, 1.0, 0.0) - p) * g[:, None]
    d = dlogits.astype(w_ExV.dtype)
    dh = jnp.dot(d, w_VxE, preferred_element_type=jnp.float32)
    dw = dw + jnp.dot(transpose(h), d, preferred_element_type=jnp.float32)
    return dw, dh.astype(h_NxE.dtype)

  # `saved` is already in chunks: [C, rows] log-normalisers or [C, rows, V].
  dw, dh = jax.lax.scan(
      one, jnp.zeros((h_NxE.shape[1], v), jnp.float32),
      (_chunks(h_NxE, rows), _chunks(targets_N, rows), saved,
       _chunks(g_N.astype(jnp.float32), rows)))
  return (dh.reshape(-1, h_NxE.shape[1])[:n], dw.astype(w_like.dtype), None)


_token_logprobs.defvjp(_fwd, _bwd)


def token_logprobs(hidden_BxTxE: jax.Array, kernel_ExV: jax.Array,
                   targets_BxT: jax.Array, *,
                   chunk_bytes: int = _CHUNK_BYTES,
                   keep_bytes: int = _KEEP_BYTES) -> jax.Array:
  """log softmax(hidden @ kernel)[target], float32 [B, T].

  Equals `logprobs.token_logprobs(hidden @ kernel, targets)` (float32
  logits accumulated from the operands' dtype) without holding the logits.

  Args:
    hidden_BxTxE: the decoder's last hidden states (after the final norm;
      for a tied output layer, already scaled).
    kernel_ExV: the output layer [E, V] (any float dtype; not a transposed
      view); it is cast to the hidden states' dtype, and its gradient is
      returned in its own dtype, accumulated in float32.
    targets_BxT: int target ids.
    chunk_bytes: float32 logits held at a time (about).
    keep_bytes: with float32 hidden states, the largest softmax (rows x V x
      4 bytes, the rows padded to whole chunks) that the forward keeps for
      the backward pass instead of recomputing the logits; 0 never keeps it.

  Returns:
    float32 [B, T].
  """
  b, t, e = hidden_BxTxE.shape
  v = kernel_ExV.shape[1]
  if kernel_ExV.shape[0] != e or targets_BxT.shape != (b, t):
    raise ValueError(
        f"token_logprobs: hidden {hidden_BxTxE.shape}, kernel "
        f"{kernel_ExV.shape} and targets {targets_BxT.shape} do not match "
        "([B, T, E], [E, V], [B, T]).")
  rows = _chunk_rows(b * t, v, chunk_bytes)
  softmax_bytes = -(-b * t // rows) * rows * v * 4
  keep = bool(hidden_BxTxE.dtype == jnp.float32
              and softmax_bytes <= keep_bytes)
  flat = _token_logprobs(hidden_BxTxE.reshape(b * t, e), kernel_ExV,
                         targets_BxT.reshape(b * t).astype(jnp.int32), rows,
                         keep)
  return flat.reshape(b, t)
