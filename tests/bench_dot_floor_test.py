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

"""bench/dot_floor.py counts a program's products and their FLOPs right (its
timings are benchmarks, never asserted)."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import dot_floor  # pylint: disable=g-import-not-at-top,wrong-import-position


def _by_shape(counts):
  return {(k[0], k[2]): c for k, c in counts.items()}


def test_counts_each_product_as_often_as_it_runs():
  w = jnp.ones((4, 8))
  v = jnp.ones((8, 4))

  def program(x):
    x = x @ w  # once: [3, 4] x [4, 8]

    def body(carry):  # per trip of the while loop: [3, 8] x [8, 4] x [4, 8]
      i, y = carry
      return i + 1, (y @ v) @ w

    _, x = jax.lax.while_loop(lambda c: c[0] < 5, body, (0, x))

    def step(y, _):  # per step of the scan (length 3): [3, 8] x [8, 4]
      return y, y @ v

    _, ys = jax.lax.scan(step, x, None, length=3)
    return ys.sum()

  jaxpr = jax.make_jaxpr(program)(jnp.ones((3, 4))).jaxpr
  counts = _by_shape(dot_floor.count_dots(jaxpr, while_trips=7))
  assert counts == {((3, 4), (4, 8)): 1 + 7,  # outside, and in the body
                    ((3, 8), (8, 4)): 7 + 3}, counts


def test_counts_the_gradient_products():
  w = jnp.ones((4, 8))
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: (x @ w).sum()))(
      jnp.ones((3, 4))).jaxpr
  # The forward product may be dead in the gradient's jaxpr (DCE'd or not);
  # the input's cotangent [3, 8] x [4, 8] (contracting the 8s) is there.
  keys = list(dot_floor.count_dots(jaxpr, while_trips=1))
  assert any(k[0] == (3, 8) and k[2] == (4, 8) for k in keys), keys


def test_dot_flops_by_hand():
  # [b=2, m=3, k=5] x [b=2, k=5, n=7]: 2 * b * m * n * k.
  key = ((2, 3, 5), "float32", (2, 5, 7), "float32",
         (((2,), (1,)), ((0,), (0,))), None)
  assert dot_floor.dot_flops(key) == 2 * 2 * 3 * 7 * 5
  # Contracting two axes: [3, 4, 5] x [4, 5, 6] over (4, 5).
  key = ((3, 4, 5), "float32", (4, 5, 6), "float32",
         (((1, 2), (0, 1)), ((), ())), None)
  assert dot_floor.dot_flops(key) == 2 * 3 * 6 * 20


def test_einsum_spec_computes_the_same_product():
  # The PyTorch column runs each product as an einsum of these subscripts;
  # numpy's einsum takes the same ones.
  rng = np.random.default_rng(0)
  cases = [
      ((3, 4), (4, 5), (((1,), (0,)), ((), ()))),  # x @ w
      ((3, 4), (5, 4), (((1,), (1,)), ((), ()))),  # x @ w.T
      ((4, 3), (4, 5), (((0,), (0,)), ((), ()))),  # x.T @ w (a gradient)
      ((2, 6, 3, 4), (2, 6, 4, 5),                  # attention's batched form
       (((3,), (2,)), ((0, 1), (0, 1)))),
      ((6, 2, 3), (2, 6, 3, 5),                     # batch axes out of order
       (((2,), (2,)), ((0, 1), (1, 0)))),
      ((3, 4, 5), (4, 5, 6), (((1, 2), (0, 1)), ((), ()))),
  ]
  for a_shape, b_shape, dims in cases:
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal(b_shape)
    key = (a_shape, "float32", b_shape, "float32", dims, None)
    want = jax.lax.dot_general(jnp.asarray(a, jnp.float32),
                               jnp.asarray(b, jnp.float32), dims)
    got = np.einsum(dot_floor.einsum_spec(key), a, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                               err_msg=str(dims))


def test_torch_column_times_each_product_in_a_child():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  keys = [((8, 16), "float32", (16, 4), "float32", (((1,), (0,)), ((), ())),
           None),
          ((2, 8, 16), "bfloat16", (2, 16, 4), "bfloat16",
           (((2,), (1,)), ((0,), (0,))), "float32")]
  seconds = dot_floor.torch_seconds(keys, repeats=2)
  assert seconds is not None and len(seconds) == 2
  assert all(0 < t < 1 for t in seconds), seconds
