"""In-graph judges and position swapping (`ipo_md.eval.judges`).

A fake preference signal with a known, constant first-position bias shows
that judging both orders and averaging removes the bias exactly; the gold
judge is checked against the oracle it wraps.
"""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from ipo_md.data import synthetic
from ipo_md.eval import judges
from ipo_md.eval import store


class TanhSignal:
  """p(y > y') = 0.5 + 0.3 tanh(scale * (mean(y) - mean(y'))) + bias: an
  antisymmetric preference plus a constant position bias."""

  def __init__(self, bias=0.0):
    self.bias = bias

  def __repr__(self):
    return f"TanhSignal(bias={self.bias})"

  def __call__(self, params, inputs, y, yp):
    del inputs
    d = jnp.mean(y, axis=1) - jnp.mean(yp, axis=1)
    return 0.5 + 0.3 * jnp.tanh(params["scale"] * d) + self.bias


def _pairs(m, t=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(2, 50, (m, 5)).astype(np.int32)
  a = rng.integers(2, 50, (m, t)).astype(np.int32)
  b = rng.integers(2, 50, (m, t)).astype(np.int32)
  texts = tuple(str(i) for i in range(m))
  return judges.Pairs(x, a, b, texts, texts, texts)


PARAMS = {"scale": jnp.float32(0.2)}


def _score(document, summary):
  """The oracle's score, recomputed on words (see oracle.FactsOracle)."""
  d, y = document.split(), summary.split()
  facts = {(d[i], d[i + 3], d[i + 4]) for i in range(len(d) - 4)
           if d[i + 1:i + 3] == ["owns", "a"]}
  claims = [tuple(y[i:i + 3]) for i in range(len(y) - 2)
            if y[i] in synthetic.NAMES and y[i + 1] in synthetic.COLORS
            and y[i + 2] in synthetic.OBJECTS]
  true = [c for c in claims if c in facts]
  covered = len(set(true))
  invented = len(claims) - len(true)
  repeated = len(true) - covered
  over = max(len(y) - 4 * len(facts), 0)
  return covered - invented - 0.5 * repeated - 0.25 * over


class SignalJudgeTest(absltest.TestCase):

  def test_both_orders_remove_a_constant_position_bias_exactly(self):
    pairs = _pairs(40)
    fair = judges.SignalJudge(TanhSignal(0.0), PARAMS, name="fair")
    biased = judges.SignalJudge(TanhSignal(0.15), PARAMS, name="biased")
    truth = fair(pairs)
    raw = biased(pairs)
    np.testing.assert_allclose(raw - truth, 0.15, atol=1e-6)
    both = judges.judge_both_orders(biased, pairs)
    np.testing.assert_allclose(both.symmetric, truth, atol=1e-6)
    self.assertAlmostEqual(both.position_bias, 0.15, places=6)
    # The symmetrised verdict is antisymmetric in (a, b).
    back = judges.judge_both_orders(biased, pairs.swapped())
    np.testing.assert_allclose(both.symmetric + back.symmetric, 1.0,
                               atol=1e-6)

  def test_chunks_and_padding_match_one_big_batch(self):
    pairs = _pairs(37)
    big = judges.SignalJudge(TanhSignal(), PARAMS, name="big")
    small = judges.SignalJudge(TanhSignal(), PARAMS, name="small",
                               batch_size=16)
    np.testing.assert_allclose(small(pairs), big(pairs), atol=1e-7)
    self.assertEqual(small.calls, 3)  # 16 + 16 + 5 padded to 16.
    self.assertEqual(big.calls, 1)  # 37 padded to 64.

  def test_gold_judge_is_the_oracle(self):
    records = synthetic.generate("validation")[:6]
    word_ids = synthetic.word_ids()
    def ids(texts, length):
      out = np.zeros((len(texts), length), np.int32)
      for i, t in enumerate(texts):
        tokens = [word_ids[w] for w in t.split()][:length - 1] + [1]
        out[i, :len(tokens)] = tokens
      return out
    x = ids([r["inputs"] for r in records], 64)
    a = ids([r["targets"] for r in records], 24)
    b = ids([r["ideal"] for r in records], 24)
    texts = tuple("" for _ in records)
    pairs = judges.Pairs(x, a, b, texts, texts, texts)
    gold = judges.gold_judge()
    s_a = np.array([_score(r["inputs"], r["targets"]) for r in records])
    s_b = np.array([_score(r["inputs"], r["ideal"]) for r in records])
    # The ideal summary scores its number of facts; references score less.
    self.assertTrue(np.all(np.asarray(s_b) >= np.asarray(s_a)))
    both = judges.judge_both_orders(gold, pairs)
    np.testing.assert_allclose(both.forward, 1 / (1 + np.exp(-2 * (s_a - s_b))),
                               atol=1e-6)
    # The oracle is antisymmetric already: no position bias to remove.
    np.testing.assert_allclose(both.symmetric, both.forward, atol=1e-6)
    same = judges.Pairs(x, b, b, texts, texts, texts)
    np.testing.assert_allclose(judges.judge_both_orders(gold, same).forward,
                               0.5)

  def test_key_follows_params_and_signal(self):
    k = judges.SignalJudge(TanhSignal(), PARAMS, name="j").key
    self.assertEqual(k, judges.SignalJudge(TanhSignal(), PARAMS, name="j").key)
    self.assertNotEqual(k, judges.SignalJudge(
        TanhSignal(), {"scale": jnp.float32(0.3)}, name="j").key)
    self.assertNotEqual(k, judges.SignalJudge(TanhSignal(0.1), PARAMS,
                                              name="j").key)

  def test_out_of_range_output_is_an_error(self):
    bad = judges.SignalJudge(TanhSignal(0.9), PARAMS, name="bad")
    with self.assertRaisesRegex(ValueError, r"Judge 'bad' returned p=1.*"
                                r"must return probabilities in \[0, 1\]"):
      bad(_pairs(8))

  def test_pairs_validation(self):
    x = np.zeros((3, 4), np.int32)
    with self.assertRaisesRegex(ValueError, "Pairs.b .* must have one shape"):
      judges.Pairs(x, x, np.zeros((3, 5), np.int32), "abc", "abc", "abc")
    with self.assertRaisesRegex(ValueError, "Pairs.a_texts has 2 strings"):
      judges.Pairs(x, x, x, "abc", "ab", "abc")


class StoreTest(absltest.TestCase):

  def test_digest_is_canonical(self):
    self.assertEqual(store.digest({"a": 1, "b": [2]}),
                     store.digest({"b": [2], "a": 1}))
    self.assertNotEqual(store.digest({"a": 1}), store.digest({"a": 2}))


if __name__ == "__main__":
  absltest.main()
