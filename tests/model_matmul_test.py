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

"""ipo_md.model.matmul: the numbers of its custom gradients, and that a
bfloat16 T5's compiled gradient keeps every dot in bfloat16."""

import re
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ipo_md.model import config as config_lib
from ipo_md.model import matmul
from ipo_md.model import network
from ipo_md.model import scoring

F32, BF16 = jnp.float32, jnp.bfloat16


def _bf16(x) -> np.ndarray:
  """x rounded to bfloat16, as float64."""
  return np.asarray(jnp.asarray(x, BF16), np.float64)


class TransposeTest(parameterized.TestCase):

  @parameterized.parameters((1, 1), (3, 5), (7, 16))
  def test_transposes_equal_numpy(self, n, m):
    x = np.arange(n * m * 6, dtype=np.float32).reshape(2, 3, n, m)
    np.testing.assert_array_equal(matmul.transpose_2d(jnp.asarray(x[0, 0])),
                                  x[0, 0].T)
    np.testing.assert_array_equal(matmul.transpose_last2(jnp.asarray(x)),
                                  np.swapaxes(x, -1, -2))


class MatmulTest(parameterized.TestCase):

  def _data(self, shapes):
    rng = np.random.default_rng(0)
    return [jnp.asarray(rng.normal(size=s), F32) for s in shapes]

  def test_float32_value_and_gradients_equal_the_plain_dot(self):
    x, w, g = self._data([(6, 5), (5, 3), (6, 3)])
    plain = lambda x, w: jnp.sum(jnp.dot(x, w) * g)
    ours = lambda x, w: jnp.sum(matmul.matmul(x, w, F32, F32) * g)
    np.testing.assert_allclose(matmul.matmul(x, w, F32, F32), x @ w,
                               rtol=1e-6)
    for a, b in zip(jax.grad(plain, (0, 1))(x, w),
                    jax.grad(ours, (0, 1))(x, w)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

  def test_bfloat16_gradients_are_float32_products_of_bf16_operands(self):
    # y = x16 @ w16 in float32, cast to bf16; dx = g16 @ w16.T cast to x's
    # dtype (bf16 here); dw = x16.T @ g16 in float32 (the kernel's dtype),
    # not rounded to bf16.
    x, w, g = self._data([(33, 40), (40, 24), (33, 24)])
    x = x.astype(BF16)
    y, vjp = jax.vjp(lambda x, w: matmul.matmul(x, w, BF16, BF16), x, w)
    dx, dw = vjp(g.astype(BF16))
    self.assertEqual((y.dtype, dx.dtype, dw.dtype), (BF16, BF16, F32))
    x16, w16, g16 = _bf16(x), _bf16(w), _bf16(g)
    np.testing.assert_allclose(np.asarray(y, np.float64), _bf16(x16 @ w16),
                               rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(dx, np.float64),
                               _bf16(g16 @ w16.T), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(dw, x16.T @ g16, rtol=1e-5, atol=1e-5)
    # Kept in float32: most entries are not bf16 numbers.
    dw = np.asarray(dw)
    self.assertGreater(np.mean(_bf16(dw) != dw), 0.9)

  def test_off_the_cpu_bf16_is_the_plain_dot_under_autodiff(self):
    # GPUs and TPUs take transposed bf16 operands natively: there the
    # gradient is autodiff's, bit for bit, with no materialised transpose.
    x, w, g = self._data([(6, 5), (5, 3), (6, 3)])
    plain = lambda x, w: jnp.sum(jnp.dot(
        x.astype(BF16), w.astype(BF16), preferred_element_type=F32) * g)
    ours = lambda x, w: jnp.sum(matmul.matmul(x, w, BF16, F32) * g)
    with mock.patch.object(jax, "default_backend", return_value="gpu"):
      got = jax.grad(ours, (0, 1))(x, w)
      text = jax.jit(jax.grad(ours, (0, 1))).lower(x, w).as_text()
    for a, b in zip(jax.grad(plain, (0, 1))(x, w), got):
      np.testing.assert_array_equal(a, b)
    # The CPU path's materialised transposes go through [M, 1, N] views.
    unit_view = r"tensor<\d+x1x\d+xbf16>"
    self.assertNotRegex(text, unit_view)
    self.assertRegex(jax.jit(jax.grad(ours, (0, 1))).lower(x, w).as_text(),
                     unit_view)

  @parameterized.parameters(F32, BF16)
  def test_batched_matmul_gradients(self, dtype):
    a, b, g = self._data([(2, 3, 6, 5), (2, 3, 5, 4), (2, 3, 6, 4)])
    ours = lambda a, b: jnp.sum(matmul.batched_matmul(a, b, dtype, F32) * g)
    da, db = jax.grad(ours, (0, 1))(a, b)
    a16, b16, g16 = (_bf16(v) if dtype == BF16 else np.asarray(v, np.float64)
                     for v in (a, b, g))
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        matmul.batched_matmul(a, b, dtype, F32), a16 @ b16, **tol)
    np.testing.assert_allclose(da, g16 @ np.swapaxes(b16, -1, -2), **tol)
    np.testing.assert_allclose(db, np.swapaxes(a16, -1, -2) @ g16, **tol)


def _dot_operand_types(hlo: str) -> list[tuple[str, str]]:
  """(lhs, rhs) element types of every dot in a compiled HLO module."""
  types, found = {}, []
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[", line)
    if m:
      types[m.group(1)] = m.group(2)
    d = re.search(r"= \w+\[[^\]]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", line)
    if d:
      found.append((types[d.group(1)], types[d.group(2)]))
  return found


class CompiledProgramTest(parameterized.TestCase):

  @parameterized.named_parameters(("t5_1_1", False), ("t5_1_0_tied", True))
  def test_bfloat16_t5_gradient_keeps_every_dot_in_bfloat16(self, tied):
    # XLA:CPU runs a bf16 dot in bf16 only in the plain form with a float32
    # result; any other form (autodiff's transposed operands, a bf16 result)
    # becomes a float32 dot of converted operands, 5-8x slower on the AMX
    # CPUs that the benchmarks ran on. Every dot of the gradient of a bf16
    # T5's teacher-forced log-probs (dense layers, attention, output layer)
    # must therefore read bf16 operands.
    cfg = config_lib.T5Config(
        vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=64,
        num_encoder_layers=1, num_decoder_layers=1, dtype="bfloat16",
        logits_via_embedding=tied)
    model = network.Transformer(cfg)
    params = jax.eval_shape(
        lambda: jax.tree.map(lambda x: x, scoring.init_params(
            model, jax.random.key(0))))
    inputs = jax.ShapeDtypeStruct((4, 7), jnp.int32)
    targets = jax.ShapeDtypeStruct((4, 5), jnp.int32)
    loss = lambda p, x, y: jnp.sum(
        scoring.score_targets(model, p, x, y).sequence)
    hlo = jax.jit(jax.grad(loss)).lower(params, inputs, targets).compile(
    ).as_text()
    dots = _dot_operand_types(hlo)
    self.assertGreaterEqual(len(dots), 20)  # Forward and backward, all kinds.
    self.assertEqual({t for pair in dots for t in pair}, {"bf16"}, dots)


if __name__ == "__main__":
  absltest.main()
