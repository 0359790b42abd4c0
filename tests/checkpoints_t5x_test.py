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

"""Native T5X checkpoints, written here in the layouts T5X publishes.

* Orbax: `checkpoint_<step>/` is an Orbax PyTree checkpoint of
  `{'target': params, 'state': {'step', 'param_states'}}`.
* Legacy: `checkpoint_<step>/checkpoint` is msgpack of
  `{'version': 3, 'optimizer': {'target': ..., 'state': ...}}` whose large
  arrays are TensorStore zarr specs with relative paths
  (`target.encoder.layers_0...`, gzip), small ones inline; an early-Orbax
  `PLACEHOLDER://name` leaf is included too.
"""

import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
from flax import serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5_layout
from ipo_md.checkpoints import t5x_import
from tests.checkpoints_params_io_test import assert_trees_equal
from tests.checkpoints_params_io_test import mesh_shardings
from tests.checkpoints_params_io_test import random_params
from tests.checkpoints_params_io_test import fake_mesh
from tests.checkpoints_params_io_test import V10
from tests.checkpoints_params_io_test import V11

# Fields a T5X checkpoint does not record; inference uses the defaults.
_INFERRED = dict(relative_attention_max_distance=128)


def _optimizer_state(params: dict) -> dict:
  """Adafactor-like factored second moments, which the importer must skip."""
  return jax.tree.map(lambda x: {"v_row": np.ones(x.shape[:1], np.float32)},
                      params)


def write_orbax(directory: pathlib.Path, params: dict, step: int) -> None:
  state = {"target": params,
           "state": {"step": np.int32(step),
                     "param_states": _optimizer_state(params)}}
  ocp.PyTreeCheckpointer().save(directory / f"checkpoint_{step}", state)


def _write_zarr(ckpt_dir: pathlib.Path, name: str, array: np.ndarray) -> dict:
  spec = {"driver": "zarr", "dtype": array.dtype.name,
          "kvstore": {"driver": "file", "path": name},
          "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                       "chunks": list(array.shape)}}
  absolute = {**spec, "kvstore": {"driver": "file",
                                  "path": str(ckpt_dir / name)}}
  ts.open(absolute, create=True).result().write(array).result()
  return spec


def write_legacy(directory: pathlib.Path, params: dict, step: int) -> None:
  ckpt_dir = directory / f"checkpoint_{step}"
  ckpt_dir.mkdir(parents=True)
  target = {}
  for i, (path, array) in enumerate(t5_layout.flatten(params).items()):
    name = "target." + path.replace("/", ".")
    if array.ndim == 1:
      target[path] = array  # Unpartitioned: inline in the msgpack.
    elif i % 7 == 0:
      _write_zarr(ckpt_dir, name, array)
      target[path] = "PLACEHOLDER://" + name
    else:
      target[path] = _write_zarr(ckpt_dir, name, array)
  state = {"version": 3, "optimizer": {
      "target": _nest_keeping_specs(target),
      "state": {"step": np.int32(step), "param_states": {}}}}
  (ckpt_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(state))


def _nest_keeping_specs(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


class T5xImportTest(parameterized.TestCase):

  def tmp(self) -> pathlib.Path:
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    return pathlib.Path(d.name)

  @parameterized.product(writer=(write_orbax, write_legacy),
                         config=(V11, V10))
  def test_import_infers_config_and_restores_target(self, writer, config):
    root = self.tmp()
    old, new = random_params(config, 1), random_params(config, 2)
    writer(root, old, 100)
    writer(root, new, 200)
    params, inferred = t5x_import.load_t5x(root)
    self.assertEqual(inferred, config.replace(**_INFERRED))
    assert_trees_equal(self, params, new)
    params, _ = t5x_import.load_t5x(root, step=100)
    assert_trees_equal(self, params, old)
    params, _ = t5x_import.load_t5x(root / "checkpoint_100")
    assert_trees_equal(self, params, old)

  @parameterized.parameters(write_orbax, write_legacy)
  def test_sharded_restore_and_initial_params_dispatch(self, writer):
    root = self.tmp()
    params = random_params(V11)
    writer(root, params, 7)
    mesh = fake_mesh(self)
    shardings = mesh_shardings(V11, mesh)
    loaded, _ = params_io.load_initial_params(root, shardings=shardings)
    flat = t5_layout.flatten(shardings)
    for p, x in t5_layout.flatten(loaded).items():
      self.assertEqual(x.sharding, flat[p], p)
    assert_trees_equal(self, loaded, params)

  def test_activation_override_and_its_check(self):
    root = self.tmp()
    write_orbax(root, random_params(V11), 1)
    _, config = t5x_import.load_t5x(root, mlp_activations=("silu", "linear"))
    self.assertEqual(config.mlp_activations, ("silu", "linear"))
    with self.assertRaisesRegex(ValueError, "2 input projections"):
      t5x_import.load_t5x(root, mlp_activations=("relu",))

  def test_initial_params_take_unrecorded_fields_from_the_model(self):
    root = self.tmp()
    params = random_params(V11)
    write_legacy(root, params, 1)
    model = V11.replace(mlp_activations=("silu", "linear"),
                        relative_attention_max_distance=64)
    loaded, config = params_io.load_initial_params(root, expected_config=model)
    self.assertEqual(config, model)
    assert_trees_equal(self, loaded, params)
    with self.assertRaisesRegex(ValueError, "mlp_dim: checkpoint 16 vs model"):
      params_io.load_initial_params(root,
                                    expected_config=model.replace(mlp_dim=8))

  @parameterized.parameters(write_orbax, write_legacy)
  def test_shapes_that_do_not_match_a_given_config(self, writer):
    root = self.tmp()
    writer(root, random_params(V11), 1)
    config = V11.replace(mlp_dim=24)
    with self.assertRaisesRegex(
        ValueError, r"encoder/layers_0/mlp/wi_0/kernel.*\(8, 16\).*\(8, 24\)"):
      t5x_import.load_t5x(root, config=config)

  def test_bad_folders(self):
    root = self.tmp()
    with self.assertRaisesRegex(FileNotFoundError, "No T5X checkpoint"):
      t5x_import.load_t5x(root)
    write_orbax(root, random_params(V11), 3)
    with self.assertRaisesRegex(FileNotFoundError, r"No checkpoint_4.*\[3\]"):
      t5x_import.load_t5x(root, step=4)
    ocp.PyTreeCheckpointer().save(root / "other", {"params": {"a": np.ones(2)}})
    with self.assertRaisesRegex(ValueError, "no 'target' entry"):
      t5x_import.load_t5x(root / "other")
    params = random_params(V11)
    del params["decoder"]["layers_2"]
    write_orbax(root / "partial", params, 1)
    with self.assertRaisesRegex(ValueError, "missing tensor"):
      t5x_import.load_t5x(root / "partial", config=V11)


if __name__ == "__main__":
  absltest.main()
