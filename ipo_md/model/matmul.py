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

"""Matmuls whose forward and backward dots all take XLA:CPU's fast path.

XLA:CPU (jax 0.10) multiplies bfloat16 operands with AMX only when the dot
is in the plain form [N, K] x [K, M] (with any batch axes in front) and
accumulates in float32. Any other form, such as the transposed operands that
autodiff gives the backward pass (dy @ w.T, x.T @ dy) or a bfloat16 result,
is converted to a float32 dot: on the 2-core dev VM a bf16 [4096, 512] x
[512, 1024] dot ran at 1,300-1,900 GFLOP/s in the plain form and at 230-290
in the others, no faster than float32 (bench/sampler_and_update.py's T5-small
update in bf16 was slower than in float32). XLA folds an explicit transpose
back into the dot, but not one through a view with an extra unit axis
(`transpose`), so the custom gradient here materialises each transposed
operand and keeps every dot plain. `layout` does the same for the attention's
head transposes in the forward pass.

Numbers: the forward is a dot of both operands in `dtype` accumulated in
float32; the gradients are the same products of the incoming gradient (cast
to `dtype`), so a float32 kernel's gradient is returned in float32 without
rounding to `dtype`. In float32, and on GPUs and TPUs, everything is the
plain dot under autodiff (`_plain`).
"""

import functools

import jax
import jax.numpy as jnp


def _plain(dtype) -> bool:
  """Whether dots of `dtype` operands are left to autodiff and XLA: in
  float32, and on every backend but the CPU (GPUs and TPUs multiply
  transposed bf16 operands natively, where a materialised transpose would
  only add memory traffic; checked at trace time on JAX's default backend)."""
  return jnp.dtype(dtype) == jnp.float32 or jax.default_backend() != "cpu"


def transpose(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
  """jnp.transpose(x, perm), materialised: XLA does not fold it into a dot.

  The permutation goes through a view with one more (unit) axis, placed
  after the first output axis, which XLA's transpose folding does not see
  through.
  """
  perm = tuple(perm)
  unit = x.ndim
  out_shape = tuple(x.shape[p] for p in perm)
  return jnp.transpose(x.reshape(x.shape + (1,)),
                       perm[:1] + (unit,) + perm[1:]).reshape(out_shape)


def transpose_2d(x_NxM: jax.Array) -> jax.Array:
  """x.T [M, N], materialised (see `transpose`)."""
  return transpose(x_NxM, (1, 0))


def transpose_last2(x: jax.Array) -> jax.Array:
  """x with its last two axes swapped, materialised (see `transpose`)."""
  k = x.ndim - 2
  return transpose(x, tuple(range(k)) + (k + 1, k))


def layout(x: jax.Array, perm: tuple[int, ...], dtype) -> jax.Array:
  """jnp.transpose(x, perm) for an operand of a `dtype` dot: materialised
  on the CPU outside float32 (see `_plain`)."""
  if _plain(dtype):
    return jnp.transpose(x, perm)
  return transpose(x, perm)


def _dot(a, b):
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def matmul(x_NxK: jax.Array, w_KxM: jax.Array, dtype, out_dtype) -> jax.Array:
  """x @ w, operands in `dtype`, accumulated in float32, cast to `out_dtype`.

  In float32, and off the CPU, this is the plain jnp.dot under autodiff
  (`_plain`): XLA:CPU's float32 dots take transposed operands at 80-90 % of
  the plain form's rate, so a materialised transpose would cost more than it
  saves, and float32 numbers stay those of earlier releases bit for bit.

  Args:
    x_NxK: [N, K] activations (any float dtype).
    w_KxM: [K, M] kernel (any float dtype; not a transposed view, or the
      forward dot leaves the fast path: pass `transpose_2d(v)` instead of v.T).
    dtype: the operands' compute dtype (e.g. jnp.bfloat16).
    out_dtype: the result's dtype.

  Returns:
    [N, M] in `out_dtype`.
  """
  if _plain(dtype):
    return _dot(x_NxK.astype(dtype), w_KxM.astype(dtype)).astype(out_dtype)
  return _fast_matmul(x_NxK, w_KxM, dtype, out_dtype)


def batched_matmul(a: jax.Array, b: jax.Array, dtype, out_dtype) -> jax.Array:
  """a @ b over the leading (batch) axes: [..., M, K] x [..., K, N] ->
  [..., M, N], operands in `dtype`, accumulated in float32, cast to
  `out_dtype`; the gradients' dots are plain as in `matmul` (where `_plain`:
  jnp.einsum under autodiff)."""
  if _plain(dtype):
    return jnp.einsum("...mk,...kn->...mn", a.astype(dtype), b.astype(dtype),
                      preferred_element_type=jnp.float32).astype(out_dtype)
  return _fast_matmul(a, b, dtype, out_dtype)


def _bdot(a, b):
  """[..., M, K] x [..., K, N] -> float32 [..., M, N], same batch axes (none
  for 2-D operands: the plain matmul)."""
  k = a.ndim - 2
  batch = tuple(range(k))
  return jax.lax.dot_general(a, b, (((k + 1,), (k,)), (batch, batch)),
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _fast_matmul(a, b, dtype, out_dtype):
  """`batched_matmul` (or the 2-D `matmul`) whose gradient dots are plain."""
  return _bdot(a.astype(dtype), b.astype(dtype)).astype(out_dtype)


def _fwd(a, b, dtype, out_dtype):
  a_c, b_c = a.astype(dtype), b.astype(dtype)
  # The primals' dtypes ride along as empty arrays (residuals must be arrays).
  like = (jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))
  return _bdot(a_c, b_c).astype(out_dtype), (a_c, b_c, like)


def _bwd(dtype, out_dtype, residuals, g):
  del out_dtype
  a_c, b_c, (a_like, b_like) = residuals
  g = g.astype(dtype)
  return (_bdot(g, transpose_last2(b_c)).astype(a_like.dtype),
          _bdot(transpose_last2(a_c), g).astype(b_like.dtype))


_fast_matmul.defvjp(_fwd, _bwd)
