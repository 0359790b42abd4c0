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

"""The T5 network on a tiny model: cache, causality, padding, variants, sizes.

Tiny-model tier of STYLE.md rule 9. Every check compares numbers with an
independent computation (a teacher-forced recompute, a perturbation, a numpy
reimplementation, a hand formula) or checks an exact invariant.
"""

import functools
import math
import re
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipo_md import logprobs
from ipo_md.decoding import mixture
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import layers
from ipo_md.model import network
from ipo_md.model import output_logprobs
from ipo_md.model import scoring
from tests import hlo_text

V, S, T = 64, 7, 5  # vocabulary, input length, target length (S != T).
TINY = config_lib.T5Config(
    vocab_size=V, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=64,
    num_encoder_layers=2, num_decoder_layers=2)
T5_1_0 = TINY.replace(mlp_activations=("relu",), logits_via_embedding=True)


@functools.cache
def _params(cfg: config_lib.T5Config, seed: int = 0):
  """Seeded numpy parameters in the shapes of the model's own init.

  Drawn on the host instead of by `model.init`, whose compile would dominate
  this file's CPU time; the shapes and the tree come from `jax.eval_shape` of
  the real init. Kernels ~ N(0, 1/fan_in), tables ~ N(0, 1), norm scales
  ~ 1 + N(0, 0.1).
  """
  model = network.Transformer(cfg)
  abstract = nn.unbox(scoring.abstract_params(model))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      x = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
    elif "kernel" in name:
      x = rng.standard_normal(leaf.shape) / math.sqrt(leaf.shape[0])
    else:
      x = rng.standard_normal(leaf.shape)
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


@functools.cache
def _forward(cfg: config_lib.T5Config):
  """Jitted teacher-forced logits (params, inputs, decoder inputs)."""
  model = network.Transformer(cfg)
  return jax.jit(lambda p, x, d: model.apply({"params": p}, x, d))


_MODEL = network.Transformer(TINY)


@functools.partial(jax.jit, static_argnames="repeats")
def _init_cache(params, inputs, repeats=1):
  return scoring.init_decode_cache(_MODEL, params, inputs, T, repeats=repeats)


@jax.jit
def _step(params, tokens_Bx1, state):
  return scoring.tokens_to_logits_fn(_MODEL, params)(tokens_Bx1, state)


@jax.jit
def _score(params, inputs, targets):
  return scoring.score_targets(_MODEL, params, inputs, targets)


def _decode_all(params, inputs, dec_in, repeats=1):
  """Logits [B, T, V] of cached decoding, one token per call."""
  state = _init_cache(params, inputs, repeats=repeats)
  steps = []
  for t in range(dec_in.shape[1]):
    logits, state, aux = _step(params, dec_in[:, t:t + 1], state)
    assert aux == {}, aux
    steps.append(logits)
  return jnp.stack(steps, axis=1)


def _batch():
  """A padded batch: rows with 5, 3 and 7 real input tokens."""
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, V, (3, S)).astype(np.int32)
  inputs[0, 5:] = 0
  inputs[1, 3:] = 0
  targets = rng.integers(2, V, (3, T)).astype(np.int32)
  targets[1, 3] = 1  # An EOS, then padding.
  targets[1, 4] = 0
  return jnp.asarray(inputs), jnp.asarray(targets)


class CachedDecodingTest(absltest.TestCase):

  def test_step_by_step_equals_teacher_forced(self):
    params = _params(TINY)
    inputs, targets = _batch()
    dec_in = logprobs.shift_right(targets)
    full = _forward(TINY)(params, inputs, dec_in)
    np.testing.assert_allclose(_decode_all(params, inputs, dec_in), full,
                               rtol=1e-5, atol=1e-5)
    # The comparison is not vacuous: positions differ from one another.
    self.assertGreater(float(jnp.abs(full[:, 0] - full[:, 1]).max()), 1e-2)

  def test_cache_with_repeats_tiles_prompts(self):
    # Two completions per prompt: the network's rows are prompt-major (rows
    # 2i and 2i + 1 read prompt i), and see the same encoder output.
    params = _params(TINY)
    inputs, targets = _batch()
    dec_in = logprobs.shift_right(scoring.prompt_major(
        jnp.concatenate([targets, targets[::-1]], axis=0), 2))
    full = _forward(TINY)(params, jnp.repeat(inputs, 2, axis=0), dec_in)
    np.testing.assert_allclose(_decode_all(params, inputs, dec_in, 2), full,
                               rtol=1e-5, atol=1e-5)

  def test_sampler_logps_equal_teacher_forced_scores(self):
    # The mixture sampler's recorded policy/ref log-probs are the
    # teacher-forced log-probs of the sampled sequences under each model.
    policy, ref = _params(TINY, 0), _params(TINY, 1)
    inputs, _ = _batch()
    out = jax.jit(functools.partial(_mixture_sample, _MODEL, inputs=inputs))(
        policy, ref, jax.random.key(0))
    tiled = jnp.repeat(inputs, 2, axis=0)  # The cache's rows: prompt-major.
    for name, params in (("policy", policy), ("ref", ref)):
      scores = _score(params, tiled, out.tokens)
      np.testing.assert_allclose(out.aux_logps[name], scores.token,
                                 rtol=1e-5, atol=1e-5, err_msg=name)
    self.assertFalse(np.allclose(out.aux_logps["policy"],
                                 out.aux_logps["ref"], atol=1e-3))


def _mixture_sample(model, policy, ref, rng, *, inputs):
  """Two completions per prompt from the beta = 0.25 geometric mixture, T
  tokens, with both models' log-probs (`sampling.sample`'s output)."""
  t2l = mixture.geometric_mixture(scoring.tokens_to_logits_fn(model, policy),
                                  scoring.tokens_to_logits_fn(model, ref), 0.25)
  cache = (scoring.init_decode_cache(model, policy, inputs, T, repeats=2),
           scoring.init_decode_cache(model, ref, inputs, T, repeats=2))
  return sampling.sample(t2l, cache, rng, batch_size=2 * inputs.shape[0],
                         cfg=sampling.SamplingConfig(max_decode_length=T))


class DecodeLoopProgramTest(parameterized.TestCase):

  @parameterized.parameters("float32", "bfloat16")
  def test_no_cache_copies_per_step(self, dtype):
    # The compiled sampler's loop body touches the KV-cache buffers only
    # through in-place dynamic-update-slices (self-attention) or not at all
    # (cross-attention): no copy, transpose or conversion of a cache buffer,
    # so the per-step work does not depend on the decoded length. In bf16 on
    # the CPU the self-attention cache is float32 (layers.decode_cache_dtype);
    # with a bf16 one, XLA:CPU converted and copied it at every step.
    params = _params(TINY)
    inputs, _ = _batch()
    cfg = sampling.SamplingConfig(max_decode_length=T)
    model = network.Transformer(TINY.replace(dtype=dtype))

    def run(p, rng):
      cache = scoring.init_decode_cache(model, p, inputs, T, repeats=2)
      return sampling.sample(scoring.tokens_to_logits_fn(model, p), cache,
                             rng, batch_size=6, cfg=cfg).tokens

    cache = jax.eval_shape(
        lambda p: scoring.init_decode_cache(model, p, inputs, T, repeats=2),
        params)
    buffers = [x for x in jax.tree_util.tree_leaves(cache)
               if x.ndim == 4 and x.shape[0] > 1]  # Not the bias table.
    hlo_dtype = {"float32": "f32", "bfloat16": "bf16"}
    shapes = {f"{hlo_dtype[x.dtype.name]}[{','.join(map(str, x.shape))}]"
              for x in buffers}
    # Self keys and values [6, ...], cross keys and values [3, ...].
    self.assertLen(buffers, 4 * TINY.num_decoder_layers)
    self.assertEqual(
        {x.dtype.name for x in buffers if x.shape[0] == 6},
        {"float32"} if jax.default_backend() == "cpu" else {dtype})
    self.assertEqual({x.dtype.name for x in buffers if x.shape[0] == 3},
                     {dtype})
    sizes = {math.prod(x.shape) for x in buffers}
    body = hlo_text.largest_while_loop(jax.jit(run).lower(
        params, jax.random.key(0)).compile().as_text())
    writes = []
    for line in body:
      m = re.match(r"(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* "
                   r"([\w\-]+)\(", line)
      if not m:
        continue
      name, op = m.group(1), m.group(4)
      shape = f"{m.group(2)}[{m.group(3)}]"
      size = math.prod(int(d) for d in m.group(3).split(",") if d)
      if op == "copy" or "transpose" in op or "copy" in name:
        # A copy of the size of a cache buffer, in any layout, is a copy
        # of the cache.
        self.assertNotIn(size, sizes, line)
      if shape not in shapes:
        # Nor is there a cache-sized buffer of another dtype (a conversion).
        self.assertNotIn(size, sizes, line)
        continue
      self.assertIn(op, ("get-tuple-element", "bitcast", "fusion",
                         "dynamic-update-slice"), line)
      if op == "fusion":
        self.assertIn("dynamic-update-slice", name, line)
        writes.append(name)
    # One key and one value write per decoder layer.
    self.assertLen(writes, 2 * TINY.num_decoder_layers)


class DecodeCacheDtypeTest(absltest.TestCase):

  def test_float32_held_bf16_cache_samples_the_same(self):
    # A bf16 model's self-attention cache held in float32 (the CPU default,
    # layers.decode_cache_dtype) holds bf16 values and rounds the attention
    # weights as the bf16 products do: the mixture sampler draws the same
    # tokens with the same log-probs as with a bf16 cache.
    model = network.Transformer(TINY.replace(dtype="bfloat16"))
    policy, ref = _params(TINY, 0), _params(TINY, 1)
    inputs, _ = _batch()

    def run(policy, ref, rng):
      out = _mixture_sample(model, policy, ref, rng, inputs=inputs)
      return out.tokens, out.aux_logps

    outs = {}
    for held in ("float32", "bfloat16"):
      with mock.patch.object(layers, "decode_cache_dtype",
                             lambda d, held=held: jnp.dtype(held)):
        outs[held] = jax.jit(run)(policy, ref, jax.random.key(3))
        # The cache really was held in that dtype.
        cache = jax.eval_shape(lambda p: scoring.init_decode_cache(
            model, p, inputs, T, repeats=2), policy)
        self.assertEqual({x.dtype.name for x in jax.tree_util.tree_leaves(
            cache) if x.ndim == 4 and x.shape[0] == 6}, {held})
    (tokens32, logps32), (tokens16, logps16) = (outs["float32"],
                                                outs["bfloat16"])
    np.testing.assert_array_equal(tokens32, tokens16)
    for name in ("policy", "ref"):
      np.testing.assert_allclose(logps32[name], logps16[name], rtol=1e-6,
                                 atol=1e-6, err_msg=name)


class CausalityAndPaddingTest(absltest.TestCase):

  def test_later_decoder_tokens_do_not_change_earlier_logits(self):
    params = _params(TINY)
    inputs, targets = _batch()
    dec_in = np.asarray(logprobs.shift_right(targets))
    base = _forward(TINY)(params, inputs, dec_in)
    for t in range(T - 1):
      changed = dec_in.copy()
      changed[:, t + 1:] = (changed[:, t + 1:] + 7) % (V - 2) + 2
      out = _forward(TINY)(params, inputs, changed)
      np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
      self.assertGreater(float(jnp.abs(out[:, t + 1:] - base[:, t + 1:]).max()),
                         1e-3)

  def test_gradient_wrt_later_decoder_embeddings_is_zero(self):
    params = _params(TINY)
    inputs, targets = _batch()
    dec_in = logprobs.shift_right(targets)
    w = jax.random.normal(jax.random.key(1), (V,))

    def logits_with(delta_BxTxE):
      # Adds delta to the decoder's embedding output (the only Embed call
      # of length T; the encoder's is of length S).
      def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if (isinstance(context.module, layers.Embed)
            and context.method_name == "__call__" and out.shape[1] == T):
          out = out + delta_BxTxE
        return out
      with nn.intercept_methods(interceptor):
        return _MODEL.apply({"params": params}, inputs, dec_in)

    @jax.jit
    def grad_at(t):
      return jax.grad(lambda d: jnp.sum(logits_with(d)[:, t] @ w))(
          jnp.zeros((3, T, TINY.emb_dim)))

    for t in range(T):
      grad = np.asarray(grad_at(t))
      np.testing.assert_array_equal(grad[:, t + 1:], 0.0)
      self.assertTrue(np.all(np.abs(grad[:, :t + 1]).max(axis=-1) > 0),
                      f"position {t} must depend on positions <= {t}")

  def test_encoder_padding_does_not_change_scores(self):
    params = _params(TINY)
    inputs, targets = _batch()
    dec_in = logprobs.shift_right(targets)
    wider = jnp.concatenate([inputs, jnp.zeros((3, 4), jnp.int32)], axis=1)
    a = _forward(TINY)(params, inputs, dec_in)
    b = _forward(TINY)(params, wider, dec_in)
    # Equal up to float32 rounding: the wider key length changes how the
    # matmuls block their sums (a few ulp), padded keys add exact zeros.
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # Whereas a real token in the same place does change them.
    c = _forward(TINY)(params, wider.at[:, S].set(5), dec_in)
    self.assertGreater(float(jnp.abs(c - a).max()), 1e-3)

  def test_jit_and_no_jit_agree(self):
    params = _params(TINY)
    inputs, targets = _batch()
    jitted = _score(params, inputs, targets)
    with jax.disable_jit():
      eager = scoring.score_targets(_MODEL, params, inputs, targets)
    np.testing.assert_allclose(eager.token, jitted.token, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(eager.mask, logprobs.target_mask(targets))
    # The hand-written EOS in row 1 ends scoring there.
    np.testing.assert_array_equal(eager.mask[1], [1, 1, 1, 1, 0])
    # Scores are the log-softmax of the teacher-forced logits at the targets.
    logits = np.asarray(_forward(TINY)(params, inputs,
                                       logprobs.shift_right(targets)),
                        np.float64)
    logz = np.log(np.exp(logits).sum(-1))
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None],
                                -1)[..., 0]
    np.testing.assert_allclose(jitted.token, (picked - logz) * eager.mask,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        jitted.sequence, ((picked - logz) * eager.mask).sum(-1), rtol=1e-5)


class VariantsTest(parameterized.TestCase):

  @parameterized.named_parameters(("t5_1_1", TINY), ("t5_1_0", T5_1_0))
  def test_output_layer_by_hand(self, cfg):
    model = network.Transformer(cfg)
    params = _params(cfg)
    inputs, targets = _batch()
    dec_in = logprobs.shift_right(targets)
    logits, state = jax.jit(lambda p: model.apply(
        {"params": p}, inputs, dec_in, capture_intermediates=True))(params)
    self.assertEqual((logits.shape, logits.dtype), ((3, T, V), jnp.float32))
    self.assertTrue(np.all(np.isfinite(logits)))
    hidden = state["intermediates"]["decoder"]["decoder_norm"]["__call__"][0]
    hidden = np.asarray(hidden, np.float64)
    if cfg.logits_via_embedding:
      emb = np.asarray(params["token_embedder"]["embedding"], np.float64)
      expected = hidden * cfg.emb_dim ** -0.5 @ emb.T
    else:
      kernel = np.asarray(params["decoder"]["logits_dense"]["kernel"],
                          np.float64)
      expected = hidden @ kernel
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

  def test_t5_1_0_param_tree(self):
    params = _params(T5_1_0)
    self.assertNotIn("logits_dense", params["decoder"])
    self.assertIn("logits_dense", _params(TINY)["decoder"])
    mlp = params["encoder"]["layers_0"]["mlp"]
    self.assertEqual(set(mlp), {"wi", "wo"})
    self.assertEqual(set(_params(TINY)["encoder"]["layers_0"]["mlp"]),
                     {"wi_0", "wi_1", "wo"})
    # (It runs: test_output_layer_by_hand_t5_1_0 checks its logits.)

  def test_bfloat16_activations_close_to_float32(self):
    # Same float32 parameters, bf16 activations. bf16 keeps 8 significant
    # bits (relative rounding 2**-9 ~ 0.002 per op); over 2+2 layers with
    # activations of order 1-4 we accept 0.15 nats on any log-prob and
    # 0.03 nats on average. Measured on this model: max 0.05, mean 0.010.
    bf16 = TINY.replace(dtype="bfloat16")
    params = _params(TINY)
    inputs, targets = _batch()
    dec_in = logprobs.shift_right(targets)
    lp32 = jax.nn.log_softmax(_forward(TINY)(params, inputs, dec_in))
    logits16 = _forward(bf16)(params, inputs, dec_in)
    self.assertEqual(logits16.dtype, jnp.float32)  # Logits are upcast.
    lp16 = jax.nn.log_softmax(logits16)
    err = np.abs(np.asarray(lp16) - np.asarray(lp32))
    self.assertGreater(err.max(), 0.0)  # The two runs really differ.
    self.assertLess(err.max(), 0.15)
    self.assertLess(err.mean(), 0.03)


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


@functools.cache
def _loss_grad(cfg: config_lib.T5Config):
  """Jitted gradient of the mean sequence NLL on _batch()."""
  model = network.Transformer(cfg)
  inputs, targets = _batch()
  loss = lambda p: -jnp.mean(
      scoring.score_targets(model, p, inputs, targets).sequence)
  return jax.jit(jax.grad(loss)), loss


class OutputLogprobsTest(parameterized.TestCase):

  @parameterized.parameters(("float32", True), ("float32", False),
                            ("bfloat16", True))
  def test_chunked_equals_log_softmax_values_and_gradients(self, dtype,
                                                           keep):
    # 3 x 13 = 39 rows in chunks of 8 (the last one padded), vocabulary 50;
    # float32 with the softmax kept for the backward pass or recomputed
    # (bfloat16 always recomputes).
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(3, 13, 16)), dtype)
    w = jnp.asarray(rng.normal(size=(16, 50)) / 4, dtype)
    targets = jnp.asarray(rng.integers(0, 50, (3, 13)), jnp.int32)
    g = jnp.asarray(rng.normal(size=(3, 13)), jnp.float32)

    def plain(h, w):
      logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
      return logprobs.token_logprobs(logits, targets)

    chunked = lambda h, w: output_logprobs.token_logprobs(
        h, w, targets, chunk_bytes=8 * 50 * 4,
        keep_bytes=40 * 50 * 4 if keep else 40 * 50 * 4 - 1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(
        rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(chunked(h, w), plain(h, w), **tol)
    weighted = lambda f: lambda h, w: jnp.sum(f(h, w) * g)
    grads = jax.grad(weighted(chunked), argnums=(0, 1))(h, w)
    expected = jax.grad(weighted(plain), argnums=(0, 1))(h, w)
    for got, want in zip(grads, expected):
      self.assertEqual(got.dtype, want.dtype)
      np.testing.assert_allclose(np.asarray(got, np.float32),
                                 np.asarray(want, np.float32), **tol)
    # The configurations differ: the backward pass holds the softmax of the
    # 5 padded chunks [5, 8, 50] exactly when it is kept (float32, within
    # keep_bytes), else only their log-normalisers [5, 8].
    _, vjp = jax.vjp(chunked, h, w)
    shapes = {x.shape for x in jax.tree_util.tree_leaves(vjp)}
    self.assertEqual((5, 8, 50) in shapes, keep and dtype == "float32")
    self.assertEqual((5, 8) in shapes, not (keep and dtype == "float32"))

  @parameterized.parameters(TINY, T5_1_0)
  def test_score_targets_equals_logits_path(self, cfg):
    # score_targets (hidden states + output_kernel) against log_softmax of
    # the network's own logits, values and parameter gradients.
    params = _params(cfg)
    inputs, targets = _batch()
    model = network.Transformer(cfg)

    def via_logits(p):
      logits = model.apply({"params": p}, inputs,
                           logprobs.shift_right(targets))
      mask = logprobs.target_mask(targets)
      return jnp.sum(logprobs.token_logprobs(logits, targets) * mask)

    fused = lambda p: jnp.sum(
        scoring.score_targets(model, p, inputs, targets).sequence)
    value, grad = jax.jit(jax.value_and_grad(fused))(params)
    expected, expected_grad = jax.jit(jax.value_and_grad(via_logits))(params)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(_flat(grad), _flat(expected_grad), rtol=1e-4,
                               atol=1e-5)


class MixedPrecisionAndRematTest(parameterized.TestCase):

  def test_bfloat16_gradient_close_to_float32(self):
    # float32 parameters, bfloat16 activations (T5X's mixed precision): the
    # gradient stays float32 (so does the optimizer state) and is within 8%
    # of the float32 gradient in L2 norm, cosine > 0.995. bf16 rounds at
    # 2**-9 per op and the backward pass doubles the chain; measured on this
    # model: relative error 0.03, cosine 0.9996.
    params = _params(TINY)
    g32 = _loss_grad(TINY)[0](params)
    g16 = _loss_grad(TINY.replace(dtype="bfloat16"))[0](params)
    self.assertEqual({x.dtype for x in jax.tree_util.tree_leaves(g16)},
                     {jnp.dtype(jnp.float32)})
    a, b = _flat(g32), _flat(g16)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    self.assertGreater(rel, 1e-4)  # bf16 really ran.
    self.assertLess(rel, 0.08)
    self.assertGreater(a @ b / np.linalg.norm(a) / np.linalg.norm(b), 0.995)

  def test_remat_policies_same_gradient_less_memory(self):
    # Every policy gives the no-remat gradient; the configurations really
    # differ: the residuals kept from the forward for the backward pass
    # shrink strictly from "none" to "full".
    small = TINY.replace(num_encoder_layers=1, num_decoder_layers=1)
    params = _params(small)
    grads, residual_bytes = {}, {}

    def grad_and_vjp(loss, p):
      value, vjp = jax.vjp(loss, p)
      return vjp(jnp.ones_like(value))[0], vjp

    for policy in config_lib.REMAT_POLICIES:
      loss = _loss_grad(small.replace(remat=policy))[1]
      grad, vjp = jax.jit(functools.partial(grad_and_vjp, loss))(params)
      grads[policy] = _flat(grad)
      residual_bytes[policy] = sum(
          x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(vjp))
    for policy in config_lib.REMAT_POLICIES[1:]:
      np.testing.assert_allclose(grads[policy], grads["none"], rtol=1e-5,
                                 atol=1e-6, err_msg=policy)
    sizes = [residual_bytes[p] for p in config_lib.REMAT_POLICIES]
    self.assertEqual(sizes, sorted(sizes, reverse=True), residual_bytes)
    self.assertLen(set(sizes), len(sizes), residual_bytes)

  def test_remat_bool_and_bad_policy(self):
    self.assertEqual(TINY.replace(remat=True).remat, "full")
    self.assertEqual(TINY.replace(remat=False).remat, "none")
    with self.assertRaisesRegex(ValueError, "remat='some'"):
      TINY.replace(remat="some")


def _bf16(x):
  return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)


def _np_attention(q, k, v, bias, r, keep=None, rate=0.0):
  """float64 softmax(q k + bias) v in dot_product_attention's layouts:
  q [b*R, L, H, D] (query row i * R + r reads key row i), k [b, H, D, S],
  v [b, H, S, D], bias broadcastable to [b*R, H, L, S]; keep: dropout's keep
  mask [b, H, R, L, S]."""
  q = q.reshape(-1, r, *q.shape[1:]).transpose(0, 3, 1, 2, 4)  # [b,H,R,L,D]
  logits = np.einsum("bhrld,bhds->bhrls", q, k)
  bias = np.broadcast_to(bias, (q.shape[0] * r,) + logits.shape[1:2]
                         + logits.shape[3:])
  logits = logits + bias.reshape(-1, r, *bias.shape[1:]).transpose(
      0, 2, 1, 3, 4)
  # The logits are float32 in the model: a fully masked row (-1e10 + bias)
  # then holds equal logits, i.e. uniform weights, as it does there.
  logits = logits.astype(np.float32).astype(np.float64)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  if keep is not None:
    w = w * keep / (1 - rate)
  y = np.einsum("bhrls,bhsd->bhrld", w, v)  # -> [b*R, L, H, D]
  return y.transpose(0, 2, 3, 1, 4).reshape(-1, *y.shape[3:4], y.shape[1],
                                            y.shape[4])


class DotProductAttentionTest(parameterized.TestCase):
  """The attention core against float64 numpy, in both of its forms: float32
  over fewer than NORMALISE_AFTER_KEYS keys takes the softmax before the
  product with the values; more keys, and bfloat16, normalise after it
  (unnormalised weights times values, then divided by the row sums). All
  must be the same attention."""

  def _inputs(self, dtype, s=7):
    rng = np.random.default_rng(0)
    r, b, l, h, d = 2, 3, 5, 2, 8
    q = rng.normal(size=(r * b, l, h, d))
    k = rng.normal(size=(b, h, d, s))
    v = rng.normal(size=(b, h, s, d))
    # Relative-position-like bias per head, plus a padding mask per row; row
    # 1's query 0 sees no key at all (a padded query: uniform weights).
    bias = rng.normal(size=(1, h, l, s))
    allowed = rng.random((r * b, 1, l, s)) < 0.7
    allowed[:, :, :, 0] = True
    allowed[1, :, 0, :] = False
    bias = bias + np.where(allowed, 0.0, -1e10)
    cast = lambda x: jnp.asarray(x, dtype)
    return r, (cast(q), cast(k), cast(v), jnp.asarray(bias, jnp.float32))

  @parameterized.product(dtype_tol=(("float32", 1e-5), ("bfloat16", 2e-2)),
                         keys=(7, layers.NORMALISE_AFTER_KEYS + 3))
  def test_equals_float64_softmax_attention(self, dtype_tol, keys):
    dtype, tol = dtype_tol
    r, (q, k, v, bias) = self._inputs(dtype, keys)
    y = layers.dot_product_attention(q, k, v, bias)
    self.assertEqual(y.dtype, jnp.dtype(dtype))
    want = _np_attention(*(_bf16(x) if dtype == "bfloat16" else
                           np.asarray(x, np.float64) for x in (q, k, v)),
                         np.asarray(bias, np.float64), r)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=tol,
                               rtol=tol)

  @parameterized.product(dtype_tol=(("float32", 1e-5), ("bfloat16", 3e-2)),
                         keys=(7, layers.NORMALISE_AFTER_KEYS + 3))
  def test_dropout_applies_to_the_normalised_weights(self, dtype_tol, keys):
    dtype, tol = dtype_tol
    r, (q, k, v, bias) = self._inputs(dtype, keys)
    rng, rate = jax.random.key(7), 0.25
    y = layers.dot_product_attention(q, k, v, bias, rng, rate)
    b, h, _, s = k.shape
    keep = np.asarray(jax.random.bernoulli(
        rng, 1 - rate, (b, h, r, q.shape[1], s)))
    self.assertTrue(0 < keep.mean() < 1)
    want = _np_attention(*(np.asarray(jnp.asarray(x, jnp.float32), np.float64)
                           for x in (q, k, v)),
                         np.asarray(bias, np.float64), r, keep, rate)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=tol,
                               rtol=tol)

  @parameterized.parameters(7, layers.NORMALISE_AFTER_KEYS + 3)
  def test_float32_forms_differ_only_by_rounding(self, keys):
    # The other form, forced by moving the threshold, gives other bits (so
    # the default really took its own form) within float32 rounding.
    _, (q, k, v, bias) = self._inputs("float32", keys)
    y = layers.dot_product_attention(q, k, v, bias)
    other = 0 if keys < layers.NORMALISE_AFTER_KEYS else 10 ** 9
    with mock.patch.object(layers, "NORMALISE_AFTER_KEYS", other):
      y_other = layers.dot_product_attention(q, k, v, bias)
    self.assertFalse(np.array_equal(np.asarray(y), np.asarray(y_other)))
    np.testing.assert_allclose(y, y_other, rtol=1e-5, atol=1e-6)

  @parameterized.parameters(7, layers.NORMALISE_AFTER_KEYS + 3)
  def test_bfloat16_gradient_close_to_float32(self, keys):
    r, (q, k, v, bias) = self._inputs("float32", keys)
    g = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def grads(dtype):
      f = lambda q, k, v: jnp.sum(layers.dot_product_attention(
          q.astype(dtype), k.astype(dtype), v.astype(dtype), bias)
                                  .astype(jnp.float32) * g)
      return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

    for g16, g32 in zip(grads(jnp.bfloat16), grads(jnp.float32)):
      err = np.abs(np.asarray(g16) - np.asarray(g32)).max()
      self.assertGreater(err, 0.0)  # bfloat16 really ran.
      self.assertLess(err, 0.05 * np.abs(np.asarray(g32)).max())


class BlockedAttentionTest(parameterized.TestCase):
  """On the CPU, attention over more than CPU_FAST_KEYS keys goes through the
  key rows in blocks. Each block is the one-program computation on its own
  rows, so the output must be the same bits, for every bias shape and with
  several queries per key row; the gradients are the same up to the order
  in which a shared bias's gradient is summed. The thresholds are lowered so
  that small inputs take the blocked path."""

  def _inputs(self, bias_rows, dtype="float32"):
    rng = np.random.default_rng(3)
    r, b, l, h, d, s = 2, 6, 5, 2, 4, 11
    cast = lambda x: jnp.asarray(x, dtype)
    q = cast(rng.normal(size=(r * b, l, h, d)))
    k = cast(rng.normal(size=(b, h, d, s)))
    v = cast(rng.normal(size=(b, h, s, d)))
    rows = {"one": 1, "keys": b, "queries": r * b}[bias_rows]
    bias = rng.normal(size=(rows, h, l, s))
    bias = np.where(rng.random(bias.shape) < 0.8, bias, -1e10)  # Masking.
    return q, k, v, jnp.asarray(bias, jnp.float32)

  def _attention(self, **kwargs):
    """A new jitted attention (so nothing is taken from an earlier trace)."""
    return jax.jit(lambda *a: layers.dot_product_attention(*a, **kwargs))

  def _grad(self, g):
    f = lambda *a: jnp.sum(layers.dot_product_attention(*a) * g)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))

  def _blocked(self):
    # 11 keys > 8; a key row's logits: 2 queries x 2 heads x 5 x 11 x 4 bytes
    # = 880 bytes, so 2000 bytes hold 2 rows: 3 blocks of the 6 rows.
    return mock.patch.multiple(layers, CPU_FAST_KEYS=8, CPU_BLOCK_BYTES=2000)

  def test_blocks_are_counted_from_the_logits_bytes(self):
    self.assertEqual(layers.attention_blocks(32, 3_557_400, 385), 16)
    self.assertEqual(layers.attention_blocks(32, 1_572_864, 256), 1)
    self.assertEqual(layers.attention_blocks(2, 3_557_400, 385), 1)  # 7 MB.
    self.assertEqual(layers.attention_blocks(7, 3_557_400, 385), 7)  # Prime.
    self.assertEqual(layers.attention_blocks(6, 20 * 2 ** 20, 300), 6)
    with self._blocked():
      self.assertEqual(layers.attention_blocks(6, 880, 11), 3)

  @parameterized.product(bias_rows=("one", "keys", "queries"),
                         dtype=("float32", "bfloat16"))
  def test_blocked_output_is_the_same_bits(self, bias_rows, dtype):
    q, k, v, bias = self._inputs(bias_rows, dtype)
    whole = np.asarray(self._attention()(q, k, v, bias), np.float32)
    with self._blocked():
      fn = self._attention()
      self.assertIn("while", fn.lower(q, k, v, bias).as_text())  # Blocked.
      blocked = np.asarray(fn(q, k, v, bias), np.float32)
    np.testing.assert_array_equal(blocked, whole)
    bias = np.asarray(bias, np.float64)
    if bias_rows == "keys":  # Key row i's bias is that of queries i * R + r.
      bias = np.repeat(bias, 2, axis=0)
    want = _np_attention(*(np.asarray(jnp.asarray(x, jnp.float32), np.float64)
                           for x in (q, k, v)), bias, 2)
    tol = 1e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(blocked, want, rtol=tol, atol=tol)

  @parameterized.parameters("one", "queries")
  def test_blocked_gradients_match(self, bias_rows):
    q, k, v, bias = self._inputs(bias_rows)
    g = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
    whole = self._grad(g)(q, k, v, bias)
    with self._blocked():
      grad = self._grad(g)
      self.assertIn("while", grad.lower(q, k, v, bias).as_text())
      blocked = grad(q, k, v, bias)
    for a, b in zip(blocked, whole):
      self.assertGreater(float(jnp.abs(b).max()), 0.0)
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  def test_dropout_keeps_one_program(self):
    q, k, v, bias = self._inputs("one")
    rng = jax.random.key(0)
    fn = self._attention(dropout_rate=0.25)
    program = fn.lower(q, k, v, bias, rng).as_text()
    whole = fn(q, k, v, bias, rng)
    with self._blocked():
      fn = self._attention(dropout_rate=0.25)
      self.assertEqual(fn.lower(q, k, v, bias, rng).as_text(), program)
      np.testing.assert_array_equal(fn(q, k, v, bias, rng), whole)


class SingleQueryCrossAttentionTest(parameterized.TestCase):
  """Cross-attention of one query per row (a preference or reward model's
  first decoder step) skips the keys and values of the encoder output; it
  must be the attention of the general path (here: the same rows asked with
  a second, ignored query), in values and in every gradient."""

  def _module_and_inputs(self, dtype):
    m = layers.MultiHeadAttention(num_heads=3, head_dim=8, out_features=16,
                                  is_cross=True, dtype=dtype)
    rng = np.random.default_rng(0)
    r, b, s = 2, 3, 150  # 2 queries per encoder row; 150 >= 128 keys.
    x_q = jnp.asarray(rng.normal(size=(r * b, 1, 16)), jnp.float32)
    x_kv = jnp.asarray(rng.normal(size=(b, s, 16)), jnp.float32)
    keys_ok = np.ones((r * b, 1, 1, s), bool)
    keys_ok[1, ..., 100:] = False  # Padding of a prompt.
    bias = jnp.where(jnp.asarray(keys_ok), 0.0, -1e10)
    params = m.init(jax.random.key(0), x_q, x_kv, bias)
    return m, params, x_q, x_kv, bias

  @parameterized.parameters(("float32", 1e-5), ("bfloat16", 3e-2))
  def test_values_and_gradients_equal_the_general_path(self, dtype, tol):
    m, params, x_q, x_kv, bias = self._module_and_inputs(dtype)
    g = jnp.asarray(np.random.default_rng(1).normal(size=(6, 1, 16)),
                    jnp.float32)

    def single(p, x_q, x_kv):
      return m.apply(p, x_q, x_kv, bias).astype(jnp.float32)

    def general(p, x_q, x_kv):  # Two queries per row: the usual path.
      both = jnp.concatenate([x_q, jnp.zeros_like(x_q)], axis=1)
      return m.apply(p, both, x_kv, bias)[:, :1].astype(jnp.float32)

    np.testing.assert_allclose(single(params, x_q, x_kv),
                               general(params, x_q, x_kv), rtol=tol, atol=tol)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * g)
    got = jax.grad(loss(single), argnums=(0, 1, 2))(params, x_q, x_kv)
    want = jax.grad(loss(general), argnums=(0, 1, 2))(params, x_q, x_kv)
    leaves = zip(jax.tree_util.tree_leaves(got),
                 jax.tree_util.tree_leaves(want))
    for a, b in leaves:
      scale = np.abs(np.asarray(b)).max()
      np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)

  def test_same_parameters_as_the_general_path(self):
    m, params, x_q, x_kv, bias = self._module_and_inputs("float32")
    both = jnp.concatenate([x_q, x_q], axis=1)
    other = m.init(jax.random.key(0), both, x_kv, bias)
    for a, b in zip(jax.tree_util.tree_leaves(params),
                    jax.tree_util.tree_leaves(other)):
      np.testing.assert_array_equal(a, b)

  def test_attention_dropout_applies(self):
    m, params, x_q, x_kv, bias = self._module_and_inputs("float32")
    m = m.clone(dropout_rate=0.5)
    kept = m.apply(params, x_q, x_kv, bias)
    dropped = m.apply(params, x_q, x_kv, bias, deterministic=False,
                      rngs={"dropout": jax.random.key(3)})
    self.assertTrue(np.isfinite(np.asarray(dropped)).all())
    self.assertFalse(np.allclose(kept, dropped))


def _np_bucket(rel, *, bidirectional, num_buckets, max_distance):
  """T5's relative-position buckets in numpy, float32 like the original.

  n = query - key >= 0 looks back. Bidirectional: half the buckets are for
  keys after the query (offset num_buckets/2). In each half, distances below
  max_exact = half/2 get their own bucket; larger ones are spaced
  logarithmically up to max_distance, and everything beyond shares the last.
  """
  n = -np.asarray(rel, np.int64)
  offset = np.zeros_like(n)
  half = num_buckets
  if bidirectional:
    half = num_buckets // 2
    offset = np.where(n < 0, half, 0)
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = half // 2
  ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
  scaled = (np.log(ratio) / np.float32(math.log(max_distance / max_exact))
            * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return offset + np.where(n < max_exact, n, large)


class RelativePositionBucketTest(parameterized.TestCase):

  @parameterized.product(bidirectional=(True, False),
                         buckets_distance=((32, 128), (8, 20), (16, 50)))
  def test_matches_numpy(self, bidirectional, buckets_distance):
    nb, md = buckets_distance
    rel = np.arange(-400, 401)
    got = layers.relative_position_bucket(
        jnp.asarray(rel), bidirectional=bidirectional, num_buckets=nb,
        max_distance=md)
    ref = _np_bucket(rel, bidirectional=bidirectional, num_buckets=nb,
                     max_distance=md)
    np.testing.assert_array_equal(got, ref)
    self.assertEqual(int(np.max(got)), nb - 1)  # The last bucket is used.
    # Buckets never decrease with distance, looking back or ahead.
    back = np.asarray(got)[rel <= 0][::-1]
    self.assertTrue(np.all(np.diff(back) >= 0))
    if bidirectional:
      self.assertTrue(np.all(np.diff(np.asarray(got)[rel >= 0]) >= 0))
      self.assertTrue(np.all(np.asarray(got)[rel > 0] >= nb // 2))
    else:
      np.testing.assert_array_equal(np.asarray(got)[rel > 0], 0)

  def test_hand_values(self):
    # rel = key - query. 32 buckets, max distance 128 (the T5 defaults).
    bi = {0: 0, -1: 1, 1: 17, -7: 7, -8: 8, 8: 24, -12: 9, -16: 10,
          -127: 15, -128: 15, -1000: 15, 1000: 31}
    uni = {5: 0, 0: 0, -1: 1, -15: 15, -16: 16, -20: 17, -127: 31, -128: 31,
           -1000: 31}
    for table, bidirectional in ((bi, True), (uni, False)):
      rel = np.array(list(table), np.int32)
      got = layers.relative_position_bucket(
          jnp.asarray(rel), bidirectional=bidirectional, num_buckets=32,
          max_distance=128)
      np.testing.assert_array_equal(got, list(table.values()),
                                    err_msg=f"bidirectional={bidirectional}")


class ConfigTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("vocab_zero", dict(vocab_size=0), "vocab_size"),
      ("emb_negative", dict(emb_dim=-4), "emb_dim"),
      ("heads_float", dict(num_heads=2.0), "num_heads"),
      ("layers_zero", dict(num_decoder_layers=0), "num_decoder_layers"),
      ("buckets_zero", dict(relative_attention_num_buckets=0), "num_buckets"),
      ("activation", dict(mlp_activations=("tanh",)), "mlp_activations"),
      ("no_activation", dict(mlp_activations=()), "mlp_activations"),
      ("dtype", dict(dtype="float64"), "dtype"),
      ("param_dtype", dict(param_dtype="int8"), "param_dtype"),
      ("dropout_one", dict(dropout_rate=1.0), "dropout_rate"),
      ("dropout_negative", dict(dropout_rate=-0.1), "dropout_rate"),
  )
  def test_invalid(self, change, field):
    with self.assertRaisesRegex(ValueError, field):
      TINY.replace(**change)

  def test_list_activations_become_tuple(self):
    cfg = TINY.replace(mlp_activations=["relu"])
    self.assertEqual(cfg.mlp_activations, ("relu",))
    hash(cfg)  # Frozen configs are hashable (used as jit static args).

  def test_unknown_size(self):
    with self.assertRaisesRegex(ValueError, "Unknown T5 size 'huge'"):
      config_lib.t5_1_1("huge")


def _t5_param_count(v, e, h, d, f, enc, dec, *, gated=True, tied=False,
                    buckets=32):
  """Parameters of a T5 by hand: no biases, RMS norm scales only."""
  attention = 4 * e * h * d                  # q, k, v, o
  mlp = (3 if gated else 2) * e * f          # wi_0, wi_1 (gated), wo
  encoder_layer = attention + mlp + 2 * e    # + 2 norms
  decoder_layer = 2 * attention + mlp + 3 * e
  return (v * e                              # shared embedding
          + enc * encoder_layer + dec * decoder_layer
          + 2 * h * buckets                  # one relpos table per stack
          + 2 * e                            # final norms
          + (0 if tied else e * v))          # logits_dense


class SizesTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("small", "small", 76_961_152, 77e6),
      ("base", "base", 247_577_856, 248e6),
      ("large", "large", 783_150_080, 783e6),
      ("xl", "xl", 2_849_757_184, 2.85e9),
  )
  def test_t5_1_1_parameter_counts(self, size, exact, published):
    cfg = config_lib.t5_1_1(size)
    self.assertEqual(cfg.vocab_size, 32128)
    abstract = scoring.abstract_params(network.Transformer(cfg))
    count = sum(x.size for x in jax.tree.leaves(nn.unbox(abstract)))
    by_hand = _t5_param_count(cfg.vocab_size, cfg.emb_dim, cfg.num_heads,
                              cfg.head_dim, cfg.mlp_dim,
                              cfg.num_encoder_layers, cfg.num_decoder_layers)
    self.assertEqual(by_hand, exact)
    self.assertEqual(count, exact)
    self.assertLess(abs(count - published) / published, 0.005)

  def test_t5_1_0_small_parameter_count(self):
    # The original t5-small: 60,506,624 parameters (tied output, ReLU MLP).
    cfg = config_lib.T5Config(
        vocab_size=32128, emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048,
        num_encoder_layers=6, num_decoder_layers=6, mlp_activations=("relu",),
        logits_via_embedding=True)
    abstract = scoring.abstract_params(network.Transformer(cfg))
    count = sum(x.size for x in jax.tree.leaves(nn.unbox(abstract)))
    by_hand = _t5_param_count(32128, 512, 8, 64, 2048, 6, 6, gated=False,
                              tied=True)
    self.assertEqual(by_hand, 60_506_624)
    self.assertEqual(count, by_hand)


if __name__ == "__main__":
  absltest.main()
