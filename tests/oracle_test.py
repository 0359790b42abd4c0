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

"""The synthetic task's programmatic oracle on hand-built token sequences.

Each summary below comes with its counts worked out by hand (covered,
invented, repeated facts, tokens over budget); scores and preferences are
then computed from the module docstring's formula with numpy. Invariants of
a preference (p(y > y) = 1/2, p(y > y') + p(y' > y) = 1) and the task's
sanity check (ideal summaries beat the noisy references) follow.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ipo_md.data import synthetic
from ipo_md.preference import base
from ipo_md.preference import oracle

EOS, PAD = 1, 0
LI, LT = 40, 16  # Input and summary lengths of the hand-built batch.
# Facts: (alice, red, boat) and (carol, blue, car); budget 4 * 2 = 8 tokens.
# The distractor "a blue car was seen nearby ." has no owner: not a fact.
DOCUMENT = ("alice owns a red boat . bob likes sunny days . a blue car was "
            "seen nearby . carol owns a blue car .")
# (name, summary text ("|" = EOS), covered, invented, repeated, length).
CASES = (
    ("ideal", "alice red boat . carol blue car . |", 2, 0, 0, 8),
    ("partial", "alice red boat . |", 1, 0, 0, 4),
    ("invented", "alice red boat . bob blue car . |", 1, 1, 0, 8),
    ("distractor_not_a_fact", "dave blue car . |", 0, 1, 0, 4),
    ("repeated", "alice red boat . alice red boat . carol blue car . |",
     2, 0, 1, 12),
    # A repeated *invented* claim is penalised as invented each time.
    ("repeated_invented", "bob blue car . bob blue car . |", 0, 2, 0, 8),
    ("after_eos_ignored", "alice red boat . | carol blue car .", 1, 0, 0, 4),
    ("padding_words", "alice red boat . carol blue car . a a a a . |",
     2, 0, 0, 13),
    ("no_eos", "alice red boat . carol blue car . . . . . . . . .",
     2, 0, 0, 16),
    ("empty", "|", 0, 0, 0, 0),
    ("wrong_order_still_covers", "carol blue car . alice red boat . |",
     2, 0, 0, 8),
)
WEIGHTS = dict(invented_weight=1.0, repeat_weight=0.5, length_weight=0.25)


def _encode(text: str, length: int) -> list[int]:
  ids = synthetic.word_ids()
  tokens = [EOS if w == "|" else ids[w] for w in text.split()]
  assert len(tokens) <= length, text
  return tokens + [PAD] * (length - len(tokens))


def _hand_score(covered, invented, repeated, length, *, invented_weight,
                repeat_weight, length_weight, num_facts=2):
  over = max(length - 4 * num_facts, 0)
  return (covered - invented_weight * invented - repeat_weight * repeated
          - length_weight * over)


def _batch():
  inputs = jnp.asarray([_encode(DOCUMENT + " |", LI)] * len(CASES))
  summaries = jnp.asarray([_encode(c[1], LT) for c in CASES])
  return inputs, summaries


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _jit_signal(o):
  """The oracle as a jitted PreferenceSignal (eager dispatch is slow)."""
  return jax.jit(lambda params, x, y, yp: o(params, x, y, yp))


_PREFER = _jit_signal(oracle.FactsOracle())


class HandBuiltTest(parameterized.TestCase):

  def test_components(self):
    inputs, summaries = _batch()
    comps = jax.jit(oracle.FactsOracle().components)(inputs, summaries)
    for i, (name, _, covered, invented, repeated, length) in enumerate(CASES):
      got = {k: float(v[i]) for k, v in comps.items()}
      want = dict(covered=covered, invented=invented, repeated=repeated,
                  length=length, over_budget=max(length - 8, 0), num_facts=2)
      self.assertEqual(got, want, name)

  @parameterized.named_parameters(
      ("defaults", WEIGHTS),
      ("other_weights", dict(invented_weight=2.0, repeat_weight=1.5,
                             length_weight=0.1)),
  )
  def test_scores_and_preferences(self, weights):
    inputs, summaries = _batch()
    o = oracle.FactsOracle(bt_scale=1.5, **weights)
    scores = np.array([_hand_score(*c[2:], **weights) for c in CASES])
    np.testing.assert_allclose(jax.jit(o.score)(inputs, summaries), scores,
                               rtol=1e-6, atol=1e-6)
    # All ordered pairs at once: row i of y against row j of y'.
    n = len(CASES)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    p = jax.jit(o)(None, inputs[ii], summaries[ii], summaries[jj])
    np.testing.assert_allclose(p, _sigmoid(1.5 * (scores[ii] - scores[jj])),
                               rtol=1e-6, atol=1e-7)

  def test_default_hand_values(self):
    # ideal (2) vs partial (1): sigmoid(2 * 1); repeated (2 - 0.5 - 1 = 0.5)
    # vs invented (1 - 1 = 0): sigmoid(2 * 0.5).
    inputs, summaries = _batch()
    p = _PREFER(None, inputs[:2], summaries[jnp.array([0, 4])],
                summaries[jnp.array([1, 2])])
    np.testing.assert_allclose(p, [_sigmoid(2.0), _sigmoid(1.0)], rtol=1e-6)

  def test_bt_scale_zero_is_a_tie(self):
    inputs, summaries = _batch()
    p = _jit_signal(oracle.FactsOracle(bt_scale=0.0))(
        None, inputs, summaries, summaries[::-1])
    np.testing.assert_array_equal(p, 0.5)

  @parameterized.parameters("bt_scale", "invented_weight", "repeat_weight",
                            "length_weight")
  def test_negative_weights_raise(self, name):
    with self.assertRaisesRegex(ValueError, name):
      oracle.FactsOracle(**{name: -0.1})


class PreferenceInvariantsTest(absltest.TestCase):

  def test_self_preference_is_half_and_pairs_sum_to_one(self):
    inputs, summaries = _batch()
    np.testing.assert_array_equal(
        _PREFER(None, inputs, summaries, summaries), 0.5)
    rolled = jnp.roll(summaries, 3, axis=0)
    p_fwd = _PREFER(None, inputs, summaries, rolled)
    p_bwd = _PREFER(None, inputs, rolled, summaries)
    np.testing.assert_allclose(p_fwd + p_bwd, 1.0, atol=1e-6)
    self.assertGreater(float(jnp.abs(p_fwd - 0.5).max()), 0.4)

  def test_symmetrized_equals_the_antisymmetric_oracle(self):
    inputs, summaries = _batch()
    rolled = jnp.roll(summaries, 5, axis=0)
    sym = jax.jit(lambda *a: base.symmetrized(oracle.FactsOracle(), *a))(
        None, inputs, summaries, rolled)
    np.testing.assert_allclose(sym, _PREFER(None, inputs, summaries, rolled),
                               atol=1e-6)

  def test_symmetrized_fixes_a_biased_signal(self):
    # A signal that prefers the first argument by +0.1: symmetrising removes
    # the bias exactly (0.5 * (p + 0.1 + 1 - (1 - p + 0.1)) = p).
    inputs, summaries = _batch()
    o = oracle.FactsOracle()
    rolled = jnp.roll(summaries, 5, axis=0)
    biased = lambda params, x, y, yp: jnp.clip(o(params, x, y, yp) + 0.1,
                                               0.0, 1.0)
    p = _PREFER(None, inputs, summaries, rolled)
    sym = jax.jit(lambda *a: base.symmetrized(biased, *a))(
        None, inputs, summaries, rolled)
    inside = (p >= 0.1) & (p <= 0.9)  # No clipping in either order.
    self.assertTrue(np.any(inside))
    np.testing.assert_allclose(sym[inside], p[inside], atol=1e-6)


class ValidationSplitTest(absltest.TestCase):

  def test_ideal_beats_noisy_reference(self):
    examples = synthetic.generate("validation")
    x = jnp.asarray([_encode(e["inputs"] + " |", 64) for e in examples])
    ideal = jnp.asarray([_encode(e["ideal"] + " |", 32) for e in examples])
    ref = jnp.asarray([_encode(e["targets"] + " |", 32) for e in examples])
    o = oracle.FactsOracle()
    p = np.asarray(jax.jit(lambda a, b: o(None, x, a, b))(ideal, ref))
    self.assertGreater(p.mean(), 0.8)
    # The ideal summary is never worse, and ties are exactly the examples
    # whose reference is the ideal summary.
    self.assertGreaterEqual(p.min(), 0.5)
    same = np.array([e["ideal"] == e["targets"] for e in examples])
    np.testing.assert_array_equal(p == 0.5, same)
    # It scores every fact of x and nothing else.
    comps = jax.jit(o.components)(x, ideal)
    np.testing.assert_array_equal(comps["covered"], comps["num_facts"])
    np.testing.assert_array_equal(comps["invented"], 0)
    np.testing.assert_array_equal(comps["over_budget"], 0)


if __name__ == "__main__":
  absltest.main()
