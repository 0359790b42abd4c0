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

"""Hugging Face import/export without torch: config mapping, the output-layer
rules, name and shape checks, streaming, sharding, and bad input.

HF folders are written here with the framework's own exporter or tensor by
tensor with safetensors; `model_hf_parity_test.py` checks the same code
against transformers itself.
"""

import json
import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ipo_md.checkpoints import hf
from ipo_md.checkpoints import hf_files
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5_layout
from tests.checkpoints_params_io_test import assert_trees_equal
from tests.checkpoints_params_io_test import mesh_shardings
from tests.checkpoints_params_io_test import random_params
from tests.checkpoints_params_io_test import fake_mesh
from tests.checkpoints_params_io_test import V10
from tests.checkpoints_params_io_test import V11

# Real config.json entries (transformers 4.x) of the two families.
FLAN_T5_4X = {"architectures": ["T5ForConditionalGeneration"],
              "model_type": "t5", "d_model": 8, "d_kv": 4, "d_ff": 16,
              "num_layers": 2, "num_decoder_layers": 3, "num_heads": 2,
              "vocab_size": 32, "feed_forward_proj": "gated-gelu",
              "tie_word_embeddings": False, "dropout_rate": 0.1,
              "relative_attention_max_distance": 128,
              "relative_attention_num_buckets": 32}
T5_1_0_4X = {"architectures": ["T5WithLMHeadModel"], "model_type": "t5",
             "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 2,
             "num_decoder_layers": 3, "num_heads": 2, "vocab_size": 32}


class HfTest(parameterized.TestCase):

  def tmp(self) -> pathlib.Path:
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    return pathlib.Path(d.name)

  def hf_dir(self, config=V11, seed=0) -> tuple[pathlib.Path, dict]:
    path, params = self.tmp() / "hf", random_params(config, seed)
    hf.export_hf(params, config, path)
    return path, params

  def rewrite(self, path, edit) -> None:
    """Re-saves model.safetensors after `edit(dict of tensors)`."""
    with safe_open(str(path / "model.safetensors"), "numpy") as f:
      tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), {"format": "pt"})

  def test_config_mapping_of_both_families(self):
    flan = hf.t5_config_from_hf(FLAN_T5_4X, logits_via_embedding=False)
    self.assertEqual(flan.replace(dropout_rate=0.0), V11)
    self.assertEqual(flan.dropout_rate, 0.1)
    t5 = hf.t5_config_from_hf(T5_1_0_4X, logits_via_embedding=True)
    self.assertEqual(t5, V10)

  def test_scaling_rule_for_transformers_4_and_5_configs(self):
    self.assertFalse(hf.scale_decoder_outputs(FLAN_T5_4X))
    self.assertTrue(hf.scale_decoder_outputs(T5_1_0_4X))
    # transformers 5.x: tie_word_embeddings is always true.
    self.assertFalse(hf.scale_decoder_outputs(
        {"tie_word_embeddings": True, "scale_decoder_outputs": False}))

  @parameterized.named_parameters(
      ("umt5", {"model_type": "umt5"}, "model_type='umt5'"),
      ("encoder_only", {"architectures": ["T5EncoderModel"]}, "T5EncoderModel"),
      ("exact_gelu", {"feed_forward_proj": "gelu"}, "exact erf GELU"),
      ("no_heads", {"num_heads": None}, "num_heads"))
  def test_unsupported_architectures_are_named(self, change, message):
    hf_config = {**FLAN_T5_4X, **change}
    hf_config = {k: v for k, v in hf_config.items() if v is not None}
    with self.assertRaisesRegex(ValueError, message):
      hf.t5_config_from_hf(hf_config, logits_via_embedding=False)

  @parameterized.parameters(V11, V10)
  def test_export_then_import_is_exact(self, config):
    path, params = self.hf_dir(config)
    written = json.loads((path / "config.json").read_text())
    self.assertEqual(written["tie_word_embeddings"],
                     config.logits_via_embedding)
    self.assertEqual(written["scale_decoder_outputs"],
                     config.logits_via_embedding)
    with safe_open(str(path / "model.safetensors"), "numpy") as f:
      keys = set(f.keys())
      np.testing.assert_array_equal(
          f.get_tensor("decoder.block.2.layer.1.EncDecAttention.q.weight"),
          params["decoder"]["layers_2"]["encoder_decoder_attention"]["query"][
              "kernel"].T)
    self.assertEqual("lm_head.weight" in keys, not config.logits_via_embedding)
    self.assertLen(keys, len(t5_layout.param_shapes(config)))
    loaded, loaded_config = hf.load_hf(path)
    self.assertEqual(loaded_config, config)
    assert_trees_equal(self, loaded, params)

  def test_transformers_4_flan_config_imports_untied(self):
    path, params = self.hf_dir(V11)
    (path / "config.json").write_text(json.dumps(FLAN_T5_4X))
    loaded, config = hf.load_hf(path)
    self.assertFalse(config.logits_via_embedding)
    assert_trees_equal(self, loaded, params)

  def test_untied_but_scaled_head_folds_the_scale(self):
    path, params = self.hf_dir(V11)
    written = json.loads((path / "config.json").read_text())
    written.pop("scale_decoder_outputs")
    written["tie_word_embeddings"] = True
    (path / "config.json").write_text(json.dumps(written))
    loaded, config = hf.load_hf(path)
    self.assertFalse(config.logits_via_embedding)
    np.testing.assert_allclose(
        loaded["decoder"]["logits_dense"]["kernel"],
        params["decoder"]["logits_dense"]["kernel"] * 8 ** -0.5, rtol=1e-6)

  def test_tied_but_unscaled_head_becomes_an_untied_copy(self):
    path, params = self.hf_dir(V10)
    written = json.loads((path / "config.json").read_text())
    written["scale_decoder_outputs"] = False
    (path / "config.json").write_text(json.dumps(written))
    loaded, config = hf.load_hf(path)
    self.assertFalse(config.logits_via_embedding)
    np.testing.assert_array_equal(loaded["decoder"]["logits_dense"]["kernel"],
                                  params["token_embedder"]["embedding"].T)

  def test_each_tensor_is_read_once_and_placed_in_its_sharding(self):
    path, params = self.hf_dir(V11)
    reads = []
    original = hf_files.open_weights

    def counting(directory):
      src = original(directory)
      read = src.read
      src.read = lambda key: reads.append(key) or read(key)
      return src

    self.enter_context(absltest.mock.patch.object(hf_files, "open_weights",
                                                  counting))
    mesh = fake_mesh(self)
    shardings = mesh_shardings(V11, mesh)
    loaded, _ = hf.load_hf(path, shardings=shardings)
    self.assertCountEqual(reads, set(reads))
    self.assertLen(reads, len(t5_layout.param_shapes(V11)))
    flat = t5_layout.flatten(shardings)
    for p, x in t5_layout.flatten(loaded).items():
      self.assertEqual(x.sharding, flat[p], p)
    assert_trees_equal(self, loaded, params)

  def test_sharded_safetensors_index(self):
    path, params = self.hf_dir(V11)
    with safe_open(str(path / "model.safetensors"), "numpy") as f:
      tensors = {k: f.get_tensor(k) for k in f.keys()}
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"a.safetensors": keys[:10], "b.safetensors": keys[10:]}
    for name, names in shards.items():
      save_file({k: tensors[k] for k in names}, str(path / name))
    index = {"weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded, _ = params_io.load_initial_params(path)
    assert_trees_equal(self, loaded, params)

  def test_bfloat16_export_and_param_dtype(self):
    path = self.tmp() / "hf"
    params = random_params(V11)
    hf.export_hf(params, V11, path, dtype="bfloat16")
    with safe_open(str(path / "model.safetensors"), "numpy") as f:
      self.assertEqual(f.get_tensor("shared.weight").dtype, ml_dtypes.bfloat16)
    loaded, config = hf.load_hf(path, param_dtype="bfloat16")
    self.assertEqual(config.param_dtype, "bfloat16")
    np.testing.assert_array_equal(
        loaded["token_embedder"]["embedding"],
        params["token_embedder"]["embedding"].astype(ml_dtypes.bfloat16))

  def test_folder_without_config_or_weights(self):
    path, _ = self.hf_dir(V11)
    (path / "model.safetensors").unlink()
    with self.assertRaisesRegex(FileNotFoundError,
                                r"No weights.*model\.safetensors"):
      hf.load_hf(path)
    (path / "config.json").unlink()
    with self.assertRaisesRegex(FileNotFoundError, "config.json"):
      hf.load_hf(path)

  def test_shape_mismatch_names_tensor_and_both_shapes(self):
    path, _ = self.hf_dir(V11)
    key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    self.rewrite(path, lambda t: t.update({key: np.zeros((12, 8), np.float32)}))
    with self.assertRaisesRegex(ValueError,
                                rf"{key}.*\(12, 8\).*implies \(16, 8\)"):
      hf.load_hf(path)

  def test_missing_and_unexpected_tensors(self):
    path, _ = self.hf_dir(V11)
    key = "decoder.block.2.layer.0.SelfAttention.v.weight"
    self.rewrite(path, lambda t: t.pop(key))
    with self.assertRaisesRegex(ValueError,
                                rf"missing tensor '{key}'.*\(8, 8\)"):
      hf.load_hf(path)
    path, _ = self.hf_dir(V11)
    extra = "decoder.block.3.layer.0.layer_norm.weight"
    self.rewrite(path, lambda t: t.update({extra: np.ones(8, np.float32)}))
    with self.assertRaisesRegex(ValueError, f"unexpected tensors.*{extra}"):
      hf.load_hf(path)

  def test_write_safetensors_checks_what_it_is_given(self):
    path = self.tmp() / "x.safetensors"
    with self.assertRaisesRegex(ValueError, r"declared \(2,\) float32"):
      hf_files.write_safetensors(path, [("a", (2,), np.float32)],
                                 lambda _: np.zeros(3, np.float32))


if __name__ == "__main__":
  absltest.main()
