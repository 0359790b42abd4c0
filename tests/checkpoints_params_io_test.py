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

"""Params checkpoints, training-checkpoint params, the initial-checkpoint
dispatcher and the `convert` / `export` command lines.

Parameters are random numpy trees built from the layout table (no model
init), so the tests are about files, shapes, dtypes and shardings; the one
test that touches the network checks that the table is the network's tree.
"""

import contextlib
import io
import json
import pathlib
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import numpy as np

from ipo_md.checkpoints import hf
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5_layout
from ipo_md.cli import convert
from ipo_md.cli import export
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring

V11 = config_lib.T5Config(vocab_size=32, emb_dim=8, num_heads=2, head_dim=4,
                          mlp_dim=16, num_encoder_layers=2,
                          num_decoder_layers=3)
V10 = V11.replace(mlp_activations=("relu",), logits_via_embedding=True)


def random_params(config: config_lib.T5Config, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return t5_layout.unflatten({
      p: rng.standard_normal(s).astype(np.float32)
      for p, s in t5_layout.param_shapes(config).items()})


def assert_trees_equal(test, a, b):
  fa, fb = t5_layout.flatten(a), t5_layout.flatten(b)
  test.assertEqual(sorted(fa), sorted(fb))
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k], np.float32),
                                  np.asarray(fb[k], np.float32), err_msg=k)


def fake_mesh(test) -> jax.sharding.Mesh:
  """A 2x4 ('data', 'model') mesh of the 8 fake CPU devices of conftest."""
  if len(jax.devices()) < 8:
    test.skipTest("needs 8 devices (conftest sets "
                  "--xla_force_host_platform_device_count=8).")
  return jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4),
                           ("data", "model"))


def mesh_shardings(config: config_lib.T5Config, mesh) -> dict:
  """Shards the last dim divisible by the 'model' axis; replicates the rest."""
  n = mesh.shape["model"]

  def one(shape):
    spec = [None] * len(shape)
    for i in reversed(range(len(shape))):
      if shape[i] % n == 0:
        spec[i] = "model"
        break
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

  return t5_layout.unflatten({p: one(s) for p, s in
                              t5_layout.param_shapes(config).items()})


class ParamsIoTest(parameterized.TestCase):

  def tmp(self) -> pathlib.Path:
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    return pathlib.Path(d.name)

  @parameterized.parameters(V11, V10)
  def test_layout_table_is_the_networks_param_tree(self, config):
    abstract = nn.unbox(scoring.abstract_params(network.Transformer(config)))
    found = {p: x.shape for p, x in t5_layout.flatten(abstract).items()}
    self.assertEqual(found, t5_layout.param_shapes(config))

  @parameterized.parameters(V11, V10)
  def test_save_load_roundtrip(self, config):
    params = random_params(config)
    path = self.tmp() / "ckpt"
    params_io.save_params(path, params, config)
    self.assertTrue((path / "config.json").is_file())
    loaded, loaded_config = params_io.load_params(path)
    self.assertEqual(loaded_config, config)
    self.assertEqual(params_io.load_config(path), config)
    assert_trees_equal(self, loaded, params)

  def test_load_places_each_tensor_in_its_sharding(self):
    mesh = fake_mesh(self)
    path = self.tmp() / "ckpt"
    params = random_params(V11)
    params_io.save_params(path, params, V11)
    shardings = mesh_shardings(V11, mesh)
    loaded, _ = params_io.load_params(path, shardings=shardings)
    for p, x in t5_layout.flatten(loaded).items():
      self.assertEqual(x.sharding, t5_layout.flatten(shardings)[p], p)
    assert_trees_equal(self, loaded, params)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[3])
    loaded, _ = params_io.load_params(path, shardings=one)
    self.assertTrue(all(x.sharding == one for x in jax.tree.leaves(loaded)))

  def test_params_are_cast_to_config_param_dtype(self):
    config = V11.replace(param_dtype="bfloat16")
    path = self.tmp() / "ckpt"
    params_io.save_params(path, random_params(config), config)
    loaded, _ = params_io.load_params(path)
    self.assertEqual({x.dtype.name for x in jax.tree.leaves(loaded)},
                     {"bfloat16"})

  def test_save_refuses_mismatched_params_and_non_empty_dir(self):
    params = random_params(V11)
    params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"] = np.zeros((4, 8))
    with self.assertRaisesRegex(ValueError,
                                r"encoder/layers_1/mlp/wo/kernel.*\(4, 8\).*"
                                r"\(16, 8\)"):
      params_io.save_params(self.tmp() / "x", params, V11)
    path = self.tmp()
    (path / "junk").write_text("")
    with self.assertRaisesRegex(ValueError, "not empty"):
      params_io.save_params(path, random_params(V11), V11)

  def test_config_that_does_not_match_the_tensors(self):
    path = self.tmp() / "ckpt"
    params_io.save_params(path, random_params(V11), V11)
    data = json.loads((path / "config.json").read_text())
    data["mlp_dim"] = 24
    (path / "config.json").write_text(json.dumps(data))
    with self.assertRaisesRegex(
        ValueError, r"encoder/layers_0/mlp/wi_0/kernel.*\(8, 16\).*\(8, 24\)"):
      params_io.load_params(path)
    data["not_a_field"] = 1
    (path / "config.json").write_text(json.dumps(data))
    with self.assertRaisesRegex(ValueError, "unknown T5Config fields"):
      params_io.load_config(path)

  def test_initial_params_checked_against_the_configured_model(self):
    root = self.tmp()
    params = random_params(V11)
    params_io.save_params(root / "ckpt", params, V11)
    hf.export_hf(params, V11, root / "hf")
    for path in (root / "ckpt", root / "hf"):
      model = V11.replace(param_dtype="bfloat16", dropout_rate=0.1)
      loaded, config = params_io.load_initial_params(path,
                                                     expected_config=model)
      self.assertEqual(config, V11.replace(param_dtype="bfloat16"))
      self.assertEqual({x.dtype.name for x in jax.tree.leaves(loaded)},
                       {"bfloat16"})
      with self.assertRaisesRegex(
          ValueError, r"num_decoder_layers: checkpoint 3 vs model 2"):
        params_io.load_initial_params(
            path, expected_config=V11.replace(num_decoder_layers=2))

  def test_missing_pieces(self):
    with self.assertRaisesRegex(FileNotFoundError, "not a params checkpoint"):
      params_io.load_params(self.tmp())
    with self.assertRaisesRegex(FileNotFoundError, "is not a checkpoint"):
      params_io.load_initial_params(self.tmp())


class TrainCheckpointTest(parameterized.TestCase):
  """Params of the lead's train-state checkpoints (ipo_md.checkpoints)."""

  def setUp(self):
    super().setUp()
    checkpoints = __import__("ipo_md.checkpoints", fromlist=["Checkpointer"])
    if not hasattr(checkpoints, "Checkpointer"):
      self.skipTest("ipo_md.checkpoints.Checkpointer is not available.")
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.stage = pathlib.Path(tmp.name) / "run" / "ipo"
    ckpt = checkpoints.Checkpointer(self.stage / "checkpoints",
                                    checkpoints.CheckpointConfig(keep=3))
    self.params = {}
    for step in (10, 20):
      params = random_params(V11, seed=step)
      state = {"step": np.int32(step), "params": params,
               "opt_state": {"v": random_params(V11, seed=99)},
               "rng": np.zeros(2, np.uint32)}
      ckpt.save(step, state, {"step": step, "data_position": step,
                              "model_config": t5_layout.config_to_dict(V11)})
      self.params[step] = params
    ckpt.close()

  def test_latest_and_given_step_from_stage_checkpoints_or_step_dir(self):
    for path, step, want in (
        (self.stage, None, 20), (self.stage / "checkpoints", None, 20),
        (self.stage / "checkpoints" / "10", None, 10), (self.stage, 10, 10)):
      params, config = params_io.load_train_params(path, step=step)
      self.assertEqual(config, V11)
      assert_trees_equal(self, params, self.params[want])
    params, _ = params_io.load_initial_params(self.stage)
    assert_trees_equal(self, params, self.params[20])

  def test_wrong_step_and_model_dir_with_stages(self):
    with self.assertRaisesRegex(FileNotFoundError, r"No step 30.*\[10, 20\]"):
      params_io.load_train_params(self.stage, step=30)
    with self.assertRaisesRegex(FileNotFoundError, r"stages \['ipo'\]"):
      params_io.load_train_params(self.stage.parent)

  def test_damaged_or_unsealed_steps(self):
    root = self.stage / "checkpoints"
    # A newer step without a manifest is a save that never finished: the
    # sealed steps are used.
    shutil.copytree(root / "10", root / "30",
                    ignore=shutil.ignore_patterns("ipo_md_manifest.json"))
    params, _ = params_io.load_initial_params(self.stage)
    assert_trees_equal(self, params, self.params[20])
    data = sorted((root / "20" / "state" / "d").iterdir())[0]
    data.write_bytes(data.read_bytes()[:-5])
    with self.assertRaisesRegex(
        ValueError,
        rf"Training checkpoint {root / '20'}: state/d/{data.name} has \d+ "
        r"bytes, its ipo_md_manifest.json says \d+ \(truncated\)\. Pass an "
        rf"older step folder \({root}/<step>\) explicitly, or rerun that "
        "stage so it rewrites its checkpoint."):
      params_io.load_initial_params(self.stage)
    params, _ = params_io.load_initial_params(root / "10")
    assert_trees_equal(self, params, self.params[10])


class CommandLineTest(absltest.TestCase):

  def tmp(self) -> pathlib.Path:
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    return pathlib.Path(d.name)

  def test_convert_from_hf_then_export_back(self):
    root = self.tmp()
    params = random_params(V11)
    hf.export_hf(params, V11, root / "hf_in")
    with contextlib.redirect_stdout(io.StringIO()):
      rc = convert.main(["--from_hf", str(root / "hf_in"),
                         "--to", str(root / "ckpt")])
    self.assertEqual(rc, 0)
    loaded, config = params_io.load_params(root / "ckpt")
    self.assertEqual(config, V11)
    assert_trees_equal(self, loaded, params)
    with contextlib.redirect_stdout(io.StringIO()):
      rc = export.main(["--from", str(root / "ckpt"),
                        "--to_hf", str(root / "hf_out"), "--dtype", "float32"])
    self.assertEqual(rc, 0)
    self.assertEqual((root / "hf_in" / "model.safetensors").read_bytes(),
                     (root / "hf_out" / "model.safetensors").read_bytes())

  def test_bad_input_exits_2_with_a_message(self):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      rc = convert.main(["--from_hf", str(self.tmp()), "--to",
                         str(self.tmp() / "x")])
    self.assertEqual(rc, 2)
    self.assertIn("config.json", err.getvalue())


if __name__ == "__main__":
  absltest.main()
