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

"""The sampler and the geometric mixture against fake TokensToLogits.

No network: a three-line fake returns fixed logits (STYLE.md rule 7), so every
expected distribution is written out in numpy, and the empirical distribution
of thousands of samples (one batch, fixed seed) is compared to it with a
chi-square test. Each distributional test also checks that the same samples
*reject* a nearby wrong distribution, so a test that cannot fail is caught.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ipo_md.decoding import mixture
from ipo_md.decoding import sampling

PAD, EOS = 0, 1
V = 6
N = 4000  # Rows of one sampled batch.
# Fixed logits of a fake policy and reference (pad and EOS included).
POLICY = np.array([0.3, -0.5, 1.0, 0.2, -1.0, 0.6], np.float32)
REF = np.array([0.1, 0.8, -0.7, 1.2, 0.0, -0.4], np.float32)
P_ACCEPT = 1e-3  # A correct distribution passes at this p-value.
P_REJECT = 1e-6  # A wrong one must fail at this p-value.


def fake(logits_V):
  """A TokensToLogits that ignores tokens; its cache counts the calls."""
  def tokens_to_logits(tokens_Bx1, calls):
    b = tokens_Bx1.shape[0]
    return jnp.broadcast_to(jnp.asarray(logits_V), (b, V)), calls + 1, {}
  return tokens_to_logits


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max(-1, keepdims=True) - np.log(
      np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


def _without_pad(logp_V):
  p = np.exp(logp_V)
  p[PAD] = 0.0
  return p / p.sum()


def _mixture_probs(beta):
  """softmax((1-b) log_softmax(policy) + b log_softmax(ref)), pad removed."""
  lp = (1 - beta) * _np_log_softmax(POLICY) + beta * _np_log_softmax(REF)
  return _without_pad(_np_log_softmax(lp))


def _filtered_probs(logits, *, temperature=1.0, top_k=0, top_p=1.0):
  """Independent numpy filter: temperature, drop pad, top-k, then top-p."""
  z = np.asarray(logits, np.float64) / temperature
  keep = np.ones(V, bool)
  keep[PAD] = False
  order = [i for i in np.argsort(-z) if keep[i]]
  if top_k:
    for i in order[top_k:]:
      keep[i] = False
    order = order[:top_k]
  if top_p < 1.0:
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    before = 0.0
    for i, pi in zip(order, p):
      if before >= top_p:
        keep[i] = False
      before += pi
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  return p / p.sum()


def _first_tokens(tokens_to_logits, cache, cfg, seed=0, n=N):
  out = jax.jit(
      lambda c, r: sampling.sample(tokens_to_logits, c, r, batch_size=n,
                                   cfg=cfg))(cache, jax.random.key(seed))
  return np.asarray(out.tokens[:, 0]), out


def _chisquare(tokens, probs):
  counts = np.bincount(tokens, minlength=V)
  support = probs > 0
  # Tokens outside the support must never be drawn.
  np.testing.assert_array_equal(counts[~support], 0)
  return stats.chisquare(counts[support], len(tokens) * probs[support]).pvalue


class MixtureDistributionTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.3, 1.0)
  def test_first_token_matches_analytic_mixture(self, beta):
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF), beta)
    cfg = sampling.SamplingConfig(max_decode_length=1)
    tokens, _ = _first_tokens(t2l, (jnp.int32(0), jnp.int32(0)), cfg)
    probs = _mixture_probs(beta)
    self.assertGreater(_chisquare(tokens, probs), P_ACCEPT)
    # Power: the samples reject the mixture of a clearly different beta.
    wrong = _mixture_probs(1.0 - beta if beta != 0.5 else 0.0)
    self.assertLess(_chisquare(tokens, wrong), P_REJECT)

  def test_mixing_logits_equals_mixing_logprobs(self):
    # docs/methods.md: log_softmax((1-b) lp + b lr) is the same distribution
    # as softmax((1-b) logits_p + b logits_r).
    beta = 0.3
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF), beta)
    mixed, _, aux = t2l(jnp.zeros((2, 1), jnp.int32), (0, 0))
    via_logits = _np_log_softmax((1 - beta) * POLICY + beta * REF)
    np.testing.assert_allclose(jax.nn.log_softmax(mixed)[0], via_logits,
                               atol=1e-6)
    np.testing.assert_allclose(aux["policy"][1], _np_log_softmax(POLICY),
                               atol=1e-6)
    np.testing.assert_allclose(aux["ref"][1], _np_log_softmax(REF), atol=1e-6)

  def test_both_models_called_once_per_step(self):
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF), 0.5)
    _, (calls_p, calls_r), _ = t2l(jnp.zeros((3, 1), jnp.int32), (0, 10))
    self.assertEqual((calls_p, calls_r), (1, 11))

  def test_beta_zero_policy_only_with_logps(self):
    cfg = sampling.SamplingConfig(max_decode_length=1)
    policy_only = mixture.with_logps(fake(POLICY), "policy")
    tokens, out = _first_tokens(policy_only, jnp.int32(0), cfg, seed=3)
    self.assertEqual(set(out.aux_logps), {"policy"})
    probs = _without_pad(_np_log_softmax(POLICY))
    self.assertGreater(_chisquare(tokens, probs), P_ACCEPT)
    np.testing.assert_allclose(out.aux_logps["policy"][:, 0],
                               _np_log_softmax(POLICY)[tokens], atol=1e-6)
    # The beta=0 mixture is the same distribution: with the same key it draws
    # the same tokens (its logits differ from the policy's by a constant).
    mixed = mixture.geometric_mixture(fake(POLICY), fake(REF), 0.0)
    tokens_mix, _ = _first_tokens(mixed, (jnp.int32(0), jnp.int32(0)), cfg,
                                  seed=3)
    np.testing.assert_array_equal(tokens_mix, tokens)


class PerRowMixtureTest(absltest.TestCase):

  def test_rows_with_beta_zero_are_the_policy_others_the_mixture(self):
    # One sampler call: even rows beta = 0 (the policy), odd rows 0.6.
    beta_B = np.where(np.arange(N) % 2 == 0, 0.0, 0.6).astype(np.float32)
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF), beta_B)
    cfg = sampling.SamplingConfig(max_decode_length=1)
    tokens, out = _first_tokens(t2l, (jnp.int32(0), jnp.int32(0)), cfg,
                                seed=11)
    policy_rows, mixture_rows = tokens[0::2], tokens[1::2]
    policy = _without_pad(_np_log_softmax(POLICY))
    self.assertGreater(_chisquare(policy_rows, policy), P_ACCEPT)
    self.assertGreater(_chisquare(mixture_rows, _mixture_probs(0.6)),
                       P_ACCEPT)
    # Power: each half rejects the other half's distribution.
    self.assertLess(_chisquare(policy_rows, _mixture_probs(0.6)), P_REJECT)
    self.assertLess(_chisquare(mixture_rows, policy), P_REJECT)
    # Both models' log-probs are recorded for every row.
    np.testing.assert_allclose(out.aux_logps["ref"][:, 0],
                               _np_log_softmax(REF)[tokens], atol=1e-6)

  def test_float_and_constant_array_agree(self):
    cfg = sampling.SamplingConfig(max_decode_length=1)
    scalar = mixture.geometric_mixture(fake(POLICY), fake(REF), 0.3)
    rows = mixture.geometric_mixture(fake(POLICY), fake(REF),
                                     np.full((N,), 0.3, np.float32))
    cache = (jnp.int32(0), jnp.int32(0))
    a, _ = _first_tokens(scalar, cache, cfg, seed=2)
    b, _ = _first_tokens(rows, cache, cfg, seed=2)
    np.testing.assert_array_equal(a, b)

  def test_bad_per_row_beta(self):
    with self.assertRaisesRegex(ValueError, "in every row"):
      mixture.geometric_mixture(fake(POLICY), fake(REF),
                                np.array([0.0, 1.5], np.float32))
    with self.assertRaisesRegex(ValueError, r"float array \[batch\]"):
      mixture.geometric_mixture(fake(POLICY), fake(REF),
                                np.zeros((2, 2), np.float32))
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF),
                                    np.zeros((3,), np.float32))
    with self.assertRaisesRegex(ValueError, "one weight per row"):
      t2l(jnp.zeros((4, 1), jnp.int32), (0, 0))


class FilterTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("temperature_0.5", dict(temperature=0.5)),
      ("temperature_2", dict(temperature=2.0)),
      ("top_k_2", dict(top_k=2)),
      ("top_k_3_temperature_0.7", dict(top_k=3, temperature=0.7)),
      ("top_p_0.6", dict(top_p=0.6)),
      ("top_p_0.9_top_k_4", dict(top_p=0.9, top_k=4)),
  )
  def test_samples_match_filtered_distribution(self, kwargs):
    cfg = sampling.SamplingConfig(max_decode_length=1, **kwargs)
    probs = _filtered_probs(POLICY, **kwargs)
    # The filter itself: softmax(filter_logits) is the analytic distribution.
    filtered = sampling.filter_logits(jnp.asarray(POLICY)[None], cfg)
    np.testing.assert_allclose(jax.nn.softmax(filtered)[0], probs, atol=1e-6)
    tokens, _ = _first_tokens(fake(POLICY), jnp.int32(0), cfg, seed=7)
    self.assertGreater(_chisquare(tokens, probs), P_ACCEPT)
    # Power: the unfiltered distribution is rejected, either by the
    # chi-square test or because it expects many draws of removed tokens
    # (_chisquare asserted that none were drawn).
    unfiltered = _without_pad(_np_log_softmax(POLICY))
    removed = (unfiltered > 0) & (probs == 0)
    if removed.any():
      self.assertGreater(N * unfiltered[removed].sum(), 100)
    else:
      self.assertLess(_chisquare(tokens, unfiltered), P_REJECT)

  def test_hand_computed_top_p(self):
    # Probabilities (pad excluded) 0.5, 0.3, 0.2: top_p=0.5 keeps only the
    # first (mass before the second is 0.5, not < 0.5); top_p=0.51 keeps two.
    logits = np.log(np.array([1e-9, 0.5, 0.3, 0.2, 1e-9, 1e-9]))
    logits = jnp.asarray(logits, jnp.float32)[None]
    for top_p, kept in ((0.5, [1]), (0.51, [1, 2]), (0.81, [1, 2, 3])):
      cfg = sampling.SamplingConfig(max_decode_length=1, top_p=top_p)
      p = np.asarray(jax.nn.softmax(sampling.filter_logits(logits, cfg))[0])
      expected = np.zeros(V)
      expected[kept] = np.array([0.5, 0.3, 0.2])[:len(kept)]
      np.testing.assert_allclose(p, expected / expected.sum(), atol=1e-6,
                                 err_msg=f"top_p={top_p}")

  def test_pad_never_sampled(self):
    # Pad is by far the most likely token and EOS is impossible.
    logits = np.array([20.0, -1e9, 0.0, 0.0, 0.0, 0.0], np.float32)
    cfg = sampling.SamplingConfig(max_decode_length=3)
    out = jax.jit(lambda r: sampling.sample(
        fake(logits), jnp.int32(0), r, batch_size=500, cfg=cfg))(
            jax.random.key(1))
    tokens = np.asarray(out.tokens)
    self.assertEqual(int((tokens == PAD).sum()), 0)
    counts = np.bincount(tokens.ravel(), minlength=V)
    self.assertGreater(stats.chisquare(counts[2:]).pvalue, P_ACCEPT)


class CategoricalTest(absltest.TestCase):
  """The inverse-CDF sampler over a vocabulary of several 128-token blocks."""

  def test_matches_softmax_across_blocks(self):
    # 300 tokens = blocks [0, 128), [128, 256), [256, 300): the middle block
    # has no mass at all, and a few tokens elsewhere are filtered out.
    v = 300
    logits = np.random.default_rng(0).normal(0, 1.5, v).astype(np.float32)
    logits[128:256] = -1e10
    logits[[3, 127, 299]] = -1e10
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs[logits < -1e9] = 0.0
    probs /= probs.sum()
    n = 40000
    tokens = np.asarray(jax.jit(sampling.categorical)(
        jax.random.key(5), jnp.broadcast_to(jnp.asarray(logits), (n, v))))
    counts = np.bincount(tokens, minlength=v)
    np.testing.assert_array_equal(counts[probs == 0], 0)
    support = probs > 0
    p_ok = stats.chisquare(counts[support], n * probs[support]).pvalue
    self.assertGreater(p_ok, P_ACCEPT)
    # Power: half the mass moved from the last block to the first is seen.
    wrong = probs.copy()
    wrong[256:] *= 0.5
    wrong[:128] *= 1 + 0.5 * probs[256:].sum() / probs[:128].sum()
    self.assertLess(
        stats.chisquare(counts[support], n * wrong[support]).pvalue, P_REJECT)

  def test_single_allowed_token_is_always_drawn(self):
    for allowed in (0, 127, 128, 200, 299):
      logits = np.full((64, 300), -1e10, np.float32)
      logits[:, allowed] = 3.0
      tokens = sampling.categorical(jax.random.key(allowed),
                                    jnp.asarray(logits))
      np.testing.assert_array_equal(tokens, allowed)


class LoopTest(absltest.TestCase):

  def _staircase(self, calls_log):
    """Row r emits EOS with certainty at step r, and never before it."""
    def tokens_to_logits(tokens_Bx1, step):
      jax.debug.callback(lambda: calls_log.append(1))
      b = tokens_Bx1.shape[0]
      rows = jnp.arange(b)[:, None]
      base = jnp.broadcast_to(jnp.asarray(POLICY), (b, V))
      eos = jnp.where(rows == step, 1e9, -1e9)
      logits = jnp.where(jnp.arange(V)[None] == EOS, eos, base)
      return logits, step + 1, {}
    return tokens_to_logits

  def test_stops_once_every_row_emitted_eos(self):
    calls = []
    cfg = sampling.SamplingConfig(max_decode_length=10)
    t2l = mixture.with_logps(self._staircase(calls), "policy")
    out = sampling.sample(t2l, jnp.int32(0), jax.random.key(0), batch_size=3,
                          cfg=cfg)
    jax.block_until_ready(out)
    jax.effects_barrier()
    # Rows end at steps 0, 1, 2, so exactly three calls, not ten.
    self.assertLen(calls, 3)
    tokens = np.asarray(out.tokens)
    self.assertEqual(tokens.shape, (3, 10))
    for r in range(3):
      self.assertEqual(tokens[r, r], EOS)
      self.assertTrue(np.all(tokens[r, :r] > EOS), tokens[r])
      np.testing.assert_array_equal(tokens[r, r + 1:], PAD)
    logps = np.asarray(out.aux_logps["policy"])
    # The certain EOS has log-prob 0 up to float rounding; others follow the
    # fake's logits (EOS masked out, so POLICY without EOS).
    lp_no_eos = _np_log_softmax(np.where(np.arange(V) == EOS, -1e9, POLICY))
    for r in range(3):
      np.testing.assert_allclose(logps[r, :r], lp_no_eos[tokens[r, :r]],
                                 atol=1e-5)
      self.assertAlmostEqual(float(logps[r, r]), 0.0, places=6)
      np.testing.assert_array_equal(logps[r, r + 1:], 0.0)

  def test_runs_to_max_length_without_eos(self):
    calls = []
    cfg = sampling.SamplingConfig(max_decode_length=4)
    # Row index 99 is never reached: nobody emits EOS.
    def t2l(tokens_Bx1, step):
      logits, step, aux = self._staircase(calls)(tokens_Bx1, step + 99)
      return logits, step - 99, aux
    out = sampling.sample(t2l, jnp.int32(0), jax.random.key(0), batch_size=2,
                          cfg=cfg)
    jax.block_until_ready(out)
    jax.effects_barrier()
    self.assertLen(calls, 4)
    self.assertTrue(np.all(np.asarray(out.tokens) > EOS))

  def test_min_decode_length_masks_eos_before_it(self):
    # Rows 0 and 1 would end at steps 0 and 1, before the minimum of 2, so
    # they never end (their EOS is impossible later); row 2 ends at step 2.
    cfg = sampling.SamplingConfig(max_decode_length=6, min_decode_length=2)
    out = sampling.sample(self._staircase([]), jnp.int32(0),
                          jax.random.key(0), batch_size=3, cfg=cfg)
    tokens = np.asarray(out.tokens)
    self.assertTrue(np.all(tokens[:2] > EOS), tokens)
    self.assertTrue(np.all(tokens[2, :2] > EOS), tokens)
    self.assertEqual(tokens[2, 2], EOS)
    np.testing.assert_array_equal(tokens[2, 3:], PAD)
    with self.assertRaisesRegex(ValueError, "min_decode_length=7"):
      sampling.SamplingConfig(max_decode_length=6, min_decode_length=7)

  def test_aux_logps_are_the_fakes_at_sampled_tokens(self):
    beta = 0.3
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF), beta)
    cfg = sampling.SamplingConfig(max_decode_length=5)
    out = jax.jit(lambda r: sampling.sample(
        t2l, (jnp.int32(0), jnp.int32(0)), r, batch_size=64, cfg=cfg))(
            jax.random.key(5))
    tokens = np.asarray(out.tokens)
    self.assertEqual(set(out.aux_logps), {"policy", "ref"})
    after_eos = np.cumsum(tokens == EOS, axis=1) - (tokens == EOS) > 0
    self.assertTrue(after_eos.any() and (~after_eos).all(axis=0).any())
    np.testing.assert_array_equal(tokens[after_eos], PAD)
    for name, logits in (("policy", POLICY), ("ref", REF)):
      expected = np.where(after_eos, 0.0, _np_log_softmax(logits)[tokens])
      np.testing.assert_allclose(out.aux_logps[name], expected, atol=1e-6,
                                 err_msg=name)

  def test_jit_and_eager_agree(self):
    t2l = mixture.geometric_mixture(fake(POLICY), fake(REF), 0.3)
    cfg = sampling.SamplingConfig(max_decode_length=4, top_k=4)
    run = lambda r: sampling.sample(t2l, (jnp.int32(0), jnp.int32(0)), r,
                                    batch_size=16, cfg=cfg)
    eager = run(jax.random.key(2))
    jitted = jax.jit(run)(jax.random.key(2))
    np.testing.assert_array_equal(eager.tokens, jitted.tokens)
    # Another key gives other samples (the rng is actually used).
    other = jax.jit(run)(jax.random.key(3))
    self.assertFalse(np.array_equal(other.tokens, jitted.tokens))


class ConfigErrorsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("length", dict(max_decode_length=0), "max_decode_length"),
      ("temperature_zero", dict(temperature=0.0), "temperature"),
      ("temperature_negative", dict(temperature=-1.0), "temperature"),
      ("top_k", dict(top_k=-1), "top_k"),
      ("top_p_zero", dict(top_p=0.0), "top_p"),
      ("top_p_big", dict(top_p=1.5), "top_p"),
  )
  def test_sampling_config(self, kwargs, field):
    kwargs = {"max_decode_length": 4, **kwargs}
    with self.assertRaisesRegex(ValueError, field):
      sampling.SamplingConfig(**kwargs)

  @parameterized.parameters(-0.1, 1.5)
  def test_mixture_beta(self, beta):
    with self.assertRaisesRegex(ValueError, "beta"):
      mixture.geometric_mixture(fake(POLICY), fake(REF), beta)


if __name__ == "__main__":
  absltest.main()
