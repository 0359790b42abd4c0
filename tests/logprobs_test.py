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

"""Numbers of `ipo_md.logprobs`: masks, token and sequence log-probs.

Expected values are hand-written or computed with numpy (float64) on the same
inputs; masking is checked against slicing each row to its scored prefix.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np

from ipo_md import logprobs

EOS, PAD = 1, 0
# Row 0: EOS in the middle, then a token and padding after it.
# Row 1: EOS first (only the EOS is scored), a second EOS later.
# Row 2: no EOS at all, no padding (the whole row is scored).
# Row 3: a pad in the middle before the EOS (pads are never scored).
# Row 4: all padding (nothing scored).
TARGETS = np.array([
    [5, 6, EOS, 7, PAD, PAD],
    [EOS, 3, EOS, PAD, PAD, PAD],
    [4, 4, 2, 3, 5, 6],
    [4, PAD, 5, EOS, PAD, PAD],
    [PAD, PAD, PAD, PAD, PAD, PAD],
], np.int32)
MASK = np.array([
    [1, 1, 1, 0, 0, 0],
    [1, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1],
    [1, 0, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0],
], np.float32)
# Length of the prefix up to and including the first EOS (row length if none).
PREFIX = np.array([3, 1, 6, 4, 0])
VOCAB = 8


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _logits(seed=0, shape=(5, 6, VOCAB)):
  return np.random.default_rng(seed).normal(0.0, 3.0, shape).astype(np.float32)


class TargetMaskTest(absltest.TestCase):

  def test_hand_written_masks(self):
    mask = logprobs.target_mask(jnp.asarray(TARGETS), eos_id=EOS, pad_id=PAD)
    self.assertEqual(mask.dtype, jnp.float32)
    np.testing.assert_array_equal(mask, MASK)

  def test_other_special_ids(self):
    # eos=7, pad=3: row [5, 3, 7, 2] -> 5 scored, 3 is pad, 7 is EOS (scored),
    # 2 is after EOS.
    mask = logprobs.target_mask(jnp.array([[5, 3, 7, 2]]), eos_id=7, pad_id=3)
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0]])

  def test_shift_right(self):
    shifted = logprobs.shift_right(jnp.asarray(TARGETS[:2]))
    np.testing.assert_array_equal(
        shifted, [[0, 5, 6, EOS, 7, PAD], [0, EOS, 3, EOS, PAD, PAD]])
    np.testing.assert_array_equal(
        logprobs.shift_right(jnp.array([[4, 5]]), start_id=9), [[9, 4]])


class TokenLogprobsTest(parameterized.TestCase):

  def test_matches_numpy_log_softmax(self):
    logits = _logits()
    got = logprobs.token_logprobs(jnp.asarray(logits), jnp.asarray(TARGETS))
    ref = np.take_along_axis(_np_log_softmax(logits), TARGETS[..., None],
                             axis=-1)[..., 0]
    self.assertEqual(got.shape, TARGETS.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)

  def test_large_logits_are_stable(self):
    # A naive log(softmax) underflows to -inf here; log_softmax does not.
    logits = np.array([[[1000.0, 0.0, -1000.0]]], np.float32)
    got = logprobs.token_logprobs(jnp.asarray(logits), jnp.array([[2]]))
    np.testing.assert_allclose(got, [[-2000.0]], rtol=1e-6)

  def test_bfloat16_logits_give_float32(self):
    logits_bf16 = jnp.asarray(_logits(), jnp.bfloat16)
    got = logprobs.token_logprobs(logits_bf16, jnp.asarray(TARGETS))
    self.assertEqual(got.dtype, jnp.float32)
    # Same numbers as float32 math on the bf16-rounded values.
    rounded = np.asarray(logits_bf16.astype(jnp.float32))
    ref = np.take_along_axis(_np_log_softmax(rounded), TARGETS[..., None],
                             axis=-1)[..., 0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)

  def test_gradient_is_onehot_minus_softmax(self):
    logits = _logits(1, (2, 3, VOCAB))
    targets = TARGETS[:2, :3]
    grad = jax.grad(lambda l: jnp.sum(logprobs.token_logprobs(
        l, jnp.asarray(targets))))(jnp.asarray(logits))
    probs = np.exp(_np_log_softmax(logits))
    onehot = np.eye(VOCAB)[targets]
    np.testing.assert_allclose(grad, onehot - probs, atol=1e-6)
    jtu.check_grads(
        lambda l: logprobs.token_logprobs(l, jnp.asarray(targets)),
        (jnp.asarray(logits, jnp.float32),), order=1, modes=("rev",),
        atol=1e-2, rtol=1e-2)

  @parameterized.named_parameters(
      ("logits_2d", (5, VOCAB), (5, 6)),
      ("length_mismatch", (5, 6, VOCAB), (5, 5)),
      ("batch_mismatch", (5, 6, VOCAB), (4, 6)),
  )
  def test_shape_errors(self, logits_shape, targets_shape):
    with self.assertRaisesRegex(ValueError, "expects logits"):
      logprobs.token_logprobs(jnp.zeros(logits_shape),
                              jnp.zeros(targets_shape, jnp.int32))


class SequenceLogprobsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.token = _np_log_softmax(_logits()).max(axis=-1).astype(np.float32)
    self.token = -np.abs(self.token) - 0.1  # Strictly negative, like logps.

  def test_masking_equals_slicing(self):
    out = logprobs.sequence_logprobs(jnp.asarray(self.token),
                                     jnp.asarray(MASK), reduce="sum")
    for b in range(TARGETS.shape[0]):
      row = TARGETS[b, :PREFIX[b]]
      kept = self.token[b, :PREFIX[b]][row != PAD]
      np.testing.assert_allclose(out.sequence[b], kept.sum(), rtol=1e-6,
                                 atol=1e-7, err_msg=f"row {b}")
    np.testing.assert_allclose(out.token, self.token * MASK, rtol=0, atol=0)
    np.testing.assert_array_equal(out.mask, MASK)

  def test_garbage_after_eos_is_ignored(self):
    # Changing log-probs where the mask is 0 changes nothing.
    noisy = np.where(MASK > 0, self.token, 1e6).astype(np.float32)
    a = logprobs.sequence_logprobs(jnp.asarray(self.token), jnp.asarray(MASK))
    b = logprobs.sequence_logprobs(jnp.asarray(noisy), jnp.asarray(MASK))
    np.testing.assert_array_equal(a.sequence, b.sequence)

  def test_mean_is_sum_over_count(self):
    s = logprobs.sequence_logprobs(jnp.asarray(self.token), jnp.asarray(MASK),
                                   reduce="sum").sequence
    m = logprobs.sequence_logprobs(jnp.asarray(self.token), jnp.asarray(MASK),
                                   reduce="mean").sequence
    counts = MASK.sum(axis=1)  # [3, 1, 6, 3, 0]
    np.testing.assert_array_equal(counts, [3, 1, 6, 3, 0])
    np.testing.assert_allclose(m[:4], np.asarray(s[:4]) / counts[:4],
                               rtol=1e-6)
    # An empty row has sum 0 and mean 0 (not NaN).
    self.assertEqual(float(s[4]), 0.0)
    self.assertEqual(float(m[4]), 0.0)

  def test_hand_values(self):
    token = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    s = logprobs.sequence_logprobs(token, mask, reduce="sum")
    m = logprobs.sequence_logprobs(token, mask, reduce="mean")
    np.testing.assert_allclose(s.sequence, [-3.0, -4.75])
    np.testing.assert_allclose(m.sequence, [-1.5, -4.75 / 3], rtol=1e-6)

  def test_unknown_reduction(self):
    with self.assertRaisesRegex(ValueError, "Unknown log-prob reduction"):
      logprobs.sequence_logprobs(jnp.zeros((1, 2)), jnp.ones((1, 2)),
                                 reduce="max")


if __name__ == "__main__":
  absltest.main()
