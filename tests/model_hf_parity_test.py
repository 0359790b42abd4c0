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

"""The network against Hugging Face transformers (PyTorch, CPU).

Tiny random `T5ForConditionalGeneration` models of both variants (T5 v1.1:
gated-GELU, untied output layer; T5 1.0: ReLU, tied output layer with the
d_model**-0.5 rescaling) are built and saved inside the test, imported with
`hf.load_hf`, and compared on a padded batch: logits and per-sequence
log-probs within 1e-4 in float32, identical greedy tokens, and, after
`hf.export_hf`, transformers reproduces our logits and reports no missing or
unexpected weights. In bfloat16 activations the logits stay within
BF16_LOGIT_ATOL of the float32 reference.

Needs the [hf] extra (torch + transformers); skipped without it.
"""

import logging
import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ipo_md import logprobs  # pylint: disable=g-import-not-at-top
from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
from ipo_md.decoding import sampling  # pylint: disable=g-import-not-at-top
from ipo_md.model import layers  # pylint: disable=g-import-not-at-top
from ipo_md.model import network  # pylint: disable=g-import-not-at-top
from ipo_md.model import scoring  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.hf

F32_ATOL = 1e-4
# bfloat16 activations (params float32) against the float32 HF model: the
# 8-bit mantissa gives ~2^-8 relative error per op. Measured max |diff| on the
# tiny models here: 0.041 (v1.1) and 0.035 (1.0) on logits of magnitude <= 5;
# float32 gives ~2e-6. Deeper/wider models accumulate more error.
BF16_LOGIT_ATOL = 0.1
V, B, S, T = 64, 3, 20, 12


def _hf_model(variant: str):
  """A tiny random HF T5 whose weights (norms, position biases too) are all
  non-trivial, so a swapped or mis-transposed tensor changes the logits."""
  v1_1 = variant == "v1_1"
  cfg = transformers.T5Config(
      vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
      num_decoder_layers=3, num_heads=4, dropout_rate=0.0,
      feed_forward_proj="gated-gelu" if v1_1 else "relu",
      tie_word_embeddings=not v1_1, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, decoder_start_token_id=0)
  torch.manual_seed(0 if v1_1 else 1)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))
  if v1_1:
    # transformers 5.x forces tie_word_embeddings=True (False only turns off
    # the rescaling), so untie by hand as real v1.1 checkpoints are.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32) * 0.2)
  return model


def _batch():
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, V, (B, S)).astype(np.int32)
  inputs[0, 12:] = 0
  inputs[1, 5:] = 0
  targets = rng.randint(2, V, (B, T)).astype(np.int32)
  targets[0, 7], targets[0, 8:] = 1, 0
  targets[2, 3:] = 0
  return inputs, targets


def _hf_logits(model, inputs, decoder_inputs) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(inputs, dtype=torch.long),
                attention_mask=torch.tensor(inputs != 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(decoder_inputs,
                                               dtype=torch.long))
  return out.logits.float().numpy()


def _apply(model, params, inputs, decoder_inputs) -> np.ndarray:
  """Teacher-forced logits, jitted (one compile instead of op-by-op)."""
  fn = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
  return np.asarray(fn(params, inputs, decoder_inputs))


class HfParityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.models, cls.imported = {}, {}
    for variant in ("v1_1", "v1_0"):
      model = _hf_model(variant)
      path = pathlib.Path(cls._tmp.name) / variant
      model.save_pretrained(path)
      cls.models[variant] = model
      cls.imported[variant] = hf.load_hf(path)
    cls.inputs, cls.targets = _batch()
    cls.decoder_inputs = np.asarray(logprobs.shift_right(cls.targets))

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _tempdir(self) -> str:
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    return tmp.name

  def _ours(self, variant, **changes):
    params, config = self.imported[variant]
    model = network.Transformer(config.replace(**changes))
    return model, params

  def test_variants_differ(self):
    c11, c10 = self.imported["v1_1"][1], self.imported["v1_0"][1]
    self.assertEqual(c11.mlp_activations, ("gelu", "linear"))
    self.assertFalse(c11.logits_via_embedding)
    self.assertEqual(c10.mlp_activations, ("relu",))
    self.assertTrue(c10.logits_via_embedding)

  @parameterized.parameters("v1_1", "v1_0")
  def test_logits_and_logprobs_match_float32(self, variant):
    model, params = self._ours(variant)
    ours = _apply(model, params, self.inputs, self.decoder_inputs)
    theirs = _hf_logits(self.models[variant], self.inputs,
                        self.decoder_inputs)
    np.testing.assert_allclose(ours, theirs, atol=F32_ATOL, rtol=0,
                               err_msg=f"{variant} logits")
    score = jax.jit(lambda p, x, y: scoring.score_targets(model, p, x, y))
    ours_lp = score(params, self.inputs, self.targets)
    logp = torch.log_softmax(torch.tensor(theirs), -1).numpy()
    token = np.take_along_axis(logp, self.targets[..., None], -1)[..., 0]
    mask = np.asarray(logprobs.target_mask(self.targets))
    np.testing.assert_allclose(np.asarray(ours_lp.sequence),
                               (token * mask).sum(1), atol=F32_ATOL, rtol=0,
                               err_msg=f"{variant} sequence log-probs")

  @parameterized.parameters("v1_1", "v1_0")
  def test_long_inputs_match_float32(self, variant):
    # Over NORMALISE_AFTER_KEYS encoder tokens the encoder's and the cross
    # attention's weights are normalised after the product with the values
    # (layers.dot_product_attention); still the same model as transformers'.
    s = layers.NORMALISE_AFTER_KEYS + 12
    rng = np.random.RandomState(1)
    inputs = rng.randint(2, V, (B, s)).astype(np.int32)
    inputs[1, s - 30:] = 0
    model, params = self._ours(variant)
    ours = _apply(model, params, inputs, self.decoder_inputs)
    theirs = _hf_logits(self.models[variant], inputs, self.decoder_inputs)
    np.testing.assert_allclose(ours, theirs, atol=F32_ATOL, rtol=0,
                               err_msg=f"{variant} logits, {s} input tokens")

  @parameterized.parameters("v1_1", "v1_0")
  def test_greedy_decoding_identical(self, variant):
    model, params = self._ours(variant)
    cfg = sampling.SamplingConfig(max_decode_length=T, top_k=1)

    @jax.jit
    def greedy(p, inputs):
      cache = scoring.init_decode_cache(model, p, inputs, T)
      return sampling.sample(scoring.tokens_to_logits_fn(model, p), cache,
                             jax.random.key(0), batch_size=B, cfg=cfg).tokens

    ours = greedy(params, self.inputs)
    with torch.no_grad():
      out = self.models[variant].generate(
          input_ids=torch.tensor(self.inputs, dtype=torch.long),
          attention_mask=torch.tensor(self.inputs != 0, dtype=torch.long),
          max_new_tokens=T, do_sample=False, num_beams=1,
          # Our sampler never emits the pad id. transformers 5.x sizes its KV
          # cache by num_layers, which breaks num_decoder_layers != num_layers.
          suppress_tokens=[0], use_cache=False)
    theirs = np.zeros((B, T), np.int32)
    theirs[:, :out.shape[1] - 1] = out[:, 1:].numpy()
    np.testing.assert_array_equal(np.asarray(ours), theirs)

  @parameterized.parameters("v1_1", "v1_0")
  def test_bfloat16_within_documented_tolerance(self, variant):
    model, params = self._ours(variant, dtype="bfloat16")
    ours = _apply(model, params, self.inputs, self.decoder_inputs)
    theirs = _hf_logits(self.models[variant], self.inputs,
                        self.decoder_inputs)
    np.testing.assert_allclose(ours, theirs, atol=BF16_LOGIT_ATOL, rtol=0)
    self.assertGreater(np.abs(ours - theirs).max(), 0.0)  # bf16 really ran.

  @parameterized.parameters("v1_1", "v1_0")
  def test_export_loads_in_transformers_and_reproduces_logits(self, variant):
    model, params = self._ours(variant)
    out = pathlib.Path(self._tempdir()) / "hf"
    hf.export_hf(params, self.imported[variant][1], out)
    with self.assertLogs("transformers", level="WARNING") as logs:
      logging.getLogger("transformers").warning("sentinel")
      loaded, info = transformers.T5ForConditionalGeneration.from_pretrained(
          out, output_loading_info=True)
    self.assertEmpty(info["missing_keys"])
    self.assertEmpty(info["unexpected_keys"])
    self.assertEmpty(info["mismatched_keys"])
    bad = [m for m in logs.output if any(
        w in m.lower() for w in ("missing", "unexpected", "newly initialized"))]
    self.assertEmpty(bad)
    ours = _apply(model, params, self.inputs, self.decoder_inputs)
    theirs = _hf_logits(loaded.eval(), self.inputs, self.decoder_inputs)
    np.testing.assert_allclose(theirs, ours, atol=F32_ATOL, rtol=0)

  def test_torch_bin_with_tied_copies_imports_as_tied(self):
    # Old .bin checkpoints store lm_head and the embed_tokens copies too.
    path = pathlib.Path(self._tempdir())
    model = self.models["v1_0"]
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    params, config = hf.load_hf(path)
    self.assertTrue(config.logits_via_embedding)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                           self.imported["v1_0"][0])


if __name__ == "__main__":
  absltest.main()
