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

"""The checkpoint code on `gs://` paths, served from memory (fake_gcs).

Every test runs inside `fake_gcs()`, which fails if anything reached the
local disk through pathlib/os instead of epath. Covered: JSON files,
manifests (seal, verify, set aside), the Checkpointer's scan of a bucket
(damaged and unfinished folders, non-finite refusal), the run lock, Hugging
Face export and import (single file, sharded index, truncation), params
checkpoint detection and config, legacy T5X import, and TensorStore specs.
Not covered, because it cannot run on a fake: Orbax's own tensor reads and
writes (TensorStore's gcs driver talks HTTP, and Orbax 0.12.8 asks
google-cloud-storage whether the bucket has a hierarchical namespace).
"""

import json
import os
import pathlib
import subprocess
import tempfile

from absl.testing import absltest
from etils import epath
from flax import serialization
import jax.numpy as jnp
import numpy as np

from ipo_md import checkpoints
from ipo_md.checkpoints import hf
from ipo_md.checkpoints import hf_files
from ipo_md.checkpoints import lock as lock_lib
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import paths
from ipo_md.checkpoints import t5_layout
from ipo_md.checkpoints import t5x_import
from ipo_md.checkpoints import verify
from tests.checkpoints_checkpointer_test import make_state
from tests.checkpoints_fakefs import fake_gcs
from tests.checkpoints_params_io_test import assert_trees_equal
from tests.checkpoints_params_io_test import random_params
from tests.checkpoints_params_io_test import V11


def copy_into(local: pathlib.Path, remote: epath.Path) -> None:
  """Copies a local folder into the fake bucket, through epath."""
  for path in sorted(local.rglob("*")):
    if path.is_file():
      target = remote / str(path.relative_to(local))
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())


class FakeGcsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.local = pathlib.Path(cls._tmp.name) / "ckpt"
    ck = checkpoints.Checkpointer(cls.local, checkpoints.CheckpointConfig())
    ck.save(2, make_state(2.0, 2), {"step": 2, "data_position": 2})
    ck.close()

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.fs = self.enter_context(fake_gcs())
    self.lines = []

  def enter_context(self, manager):
    value = manager.__enter__()
    self.addCleanup(manager.__exit__, None, None, None)
    return value

  def test_paths_and_json(self):
    path = paths.as_path("gs://b/run/x.json")
    self.assertEqual(str(path), "gs://b/run/x.json")
    self.assertTrue(paths.is_remote(path))
    self.assertEqual(paths.scheme(path), "gs")
    paths.write_json(path, {"a": [1, 2]})
    self.assertEqual(paths.read_json(path, what="test file"), {"a": [1, 2]})
    self.assertEqual(sorted(self.fs.files), ["gs://b/run/x.json"])
    with self.assertRaisesRegex(FileNotFoundError,
                                r"No test file at gs://b/run/y.json\."):
      paths.read_json("gs://b/run/y.json", what="test file")
    path.write_text("{")
    with self.assertRaisesRegex(ValueError, r"gs://b/run/x.json \(test file\) "
                                "is not valid JSON"):
      paths.read_json(path, what="test file")

  def test_manifest_seals_verifies_and_sets_aside(self):
    step_dir = epath.Path("gs://b/ck/2")
    copy_into(self.local / "2", step_dir)
    local_manifest = json.loads(
        (self.local / "2" / verify.MANIFEST).read_text())
    (step_dir / verify.MANIFEST).unlink()
    manifest = verify.write_manifest(step_dir)
    self.assertEqual(manifest["files"], local_manifest["files"])
    self.assertIsNone(verify.check(step_dir))
    data = sorted((step_dir / "state" / "d").iterdir())[0]
    original = data.read_bytes()
    data.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    damage = verify.check(step_dir)
    self.assertEqual(damage.slug, "altered")
    self.assertIsNone(verify.check(step_dir, contents=False))
    data.write_bytes(original[:10])
    self.assertEqual(verify.check(step_dir, contents=False).slug, "truncated")
    moved = verify.move_aside(verify.check(step_dir), "gs://b/ck/damaged")
    self.assertRegex(moved.moved_to,
                     r"^gs://b/ck/damaged/2-truncated-\d{8}T\d{6}Z$")
    self.assertFalse(step_dir.exists())
    self.assertEqual(
        epath.Path(moved.moved_to, verify.REASON_FILE).read_text(),
        moved.line() + "\n")
    self.assertTrue(epath.Path(moved.moved_to, "state", "_METADATA").exists())

  def test_checkpointer_scan_of_a_bucket(self):
    root = epath.Path("gs://b/run/checkpoints")
    ck = checkpoints.Checkpointer(root, checkpoints.CheckpointConfig(),
                                  report=self.lines.append)
    self.assertEqual(ck.directory, root)
    self.assertIsNone(ck.latest_step())
    copy_into(self.local / "2", root / "2")
    self.assertEqual(ck.latest_step(), 2)
    with self.assertRaisesRegex(checkpoints.NonFiniteStateError,
                                "Refusing to checkpoint step 3: params/"
                                "embedding holds NaN.*The newest finite "
                                "checkpoint is gs://b/run/checkpoints/2"):
      state = make_state()
      ck.save(3, state.replace(params={**state.params,
                                       "embedding": jnp.full((6, 4), jnp.nan)}),
              {})
    self.assertFalse((root / "3").exists())
    data = sorted((root / "2" / "state" / "d").iterdir())[0]
    data.write_bytes(data.read_bytes()[:-3])
    (root / "7").mkdir()
    (root / "8" / "state").mkdir(parents=True)
    (root / "8" / "state" / "_METADATA").write_text("{}")
    (root / "saving").mkdir()
    (root / "saving" / "8").write_text("8\n")  # A save killed mid-write.
    with self.assertRaises(checkpoints.NoUsableCheckpointError) as raised:
      ck.restore_latest(make_state())
    self.assertEqual([d.slug for d in raised.exception.damaged],
                     ["unfinished", "empty", "truncated"])
    self.assertEqual(self.lines[0].split("; moved to ")[0],
                     "gs://b/run/checkpoints/8: is a save that never finished "
                     "(the run was killed while writing it)")
    self.assertIn("gs://b/run/checkpoints/2: state/d/", str(raised.exception))
    self.assertEqual(sorted(p.name.split("-")[0]
                            for p in (root / "damaged").iterdir()),
                     ["2", "7", "8"])
    self.assertEqual(list((root / "saving").iterdir()), [])
    self.assertIsNone(ck.restore_latest(make_state()))
    ck.close()

  def test_run_lock_on_a_bucket(self):
    lock = lock_lib.RunLock("gs://b/run", report=self.lines.append)
    self.addCleanup(lock.release)
    lock.acquire()
    holder = json.loads(epath.Path("gs://b/run/ipo_md.lock").read_text())
    self.assertEqual(holder["pid"], os.getpid())
    with self.assertRaisesRegex(lock_lib.RunLockedError,
                                r"MODEL_DIR gs://b/run is in use by another "
                                rf"run: PID {os.getpid()}"):
      lock_lib.RunLock("gs://b/run").acquire()
    lock.release()
    self.assertFalse(epath.Path("gs://b/run/ipo_md.lock").exists())
    # A lock whose holder on this host is gone is broken.
    dead = subprocess.Popen(["true"])
    dead.wait()
    epath.Path("gs://b/run/ipo_md.lock").write_text(json.dumps(
        {**holder, "pid": dead.pid, "pid_start": None, "token": "old"}))
    lock.acquire()
    self.assertTrue(self.lines[0].startswith(
        "Breaking the stale lock gs://b/run/ipo_md.lock: PID "
        f"{dead.pid}"), self.lines)

  def test_hugging_face_export_and_import(self):
    params = random_params(V11)
    hf.export_hf(params, V11, "gs://b/hf")
    self.assertEqual(sorted(self.fs.files),
                     ["gs://b/hf/config.json", "gs://b/hf/model.safetensors"])
    loaded, config = hf.load_hf("gs://b/hf")
    self.assertEqual(config, V11)
    assert_trees_equal(self, loaded, params)
    loaded, _ = params_io.load_initial_params("gs://b/hf",
                                              expected_config=V11)
    assert_trees_equal(self, loaded, params)
    blob = epath.Path("gs://b/hf/model.safetensors")
    blob.write_bytes(blob.read_bytes()[:-100])
    with self.assertRaisesRegex(
        ValueError, r"gs://b/hf/model.safetensors is truncated: tensor '.*' "
        r"needs bytes up to \d+, the file has \d+\. Download it again\."):
      hf.load_hf("gs://b/hf")

  def test_sharded_safetensors(self):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
              "b": np.ones(4, np.int64)}
    for i, name in enumerate(arrays):
      hf_files.write_safetensors(
          f"gs://b/s/part{i}.safetensors",
          [(name, arrays[name].shape, arrays[name].dtype)],
          lambda k: arrays[k])
    paths.write_json("gs://b/s/model.safetensors.index.json", {
        "weight_map": {"a": "part0.safetensors", "b": "part1.safetensors"}})
    with hf_files.open_weights("gs://b/s") as src:
      self.assertEqual(sorted(src.keys()), ["a", "b"])
      for name, array in arrays.items():
        np.testing.assert_array_equal(src.read(name), array)
        self.assertEqual(src.read(name).dtype, array.dtype)

  def test_params_checkpoint_detection_and_config(self):
    t5_layout.write_json("gs://b/p/config.json",
                         t5_layout.config_to_dict(V11))
    epath.Path("gs://b/p/params").mkdir(parents=True)
    self.assertTrue(params_io.is_params_dir("gs://b/p"))
    self.assertEqual(params_io.load_config("gs://b/p"), V11)
    self.assertFalse(hf.is_hf_dir("gs://b/p"))
    with self.assertRaisesRegex(FileNotFoundError,
                                "Initial checkpoint gs://b/none is not a "
                                "directory"):
      params_io.load_initial_params("gs://b/none")
    epath.Path("gs://b/other/x").mkdir(parents=True)
    with self.assertRaisesRegex(FileNotFoundError,
                                "gs://b/other is not a checkpoint this "
                                "framework can read"):
      params_io.load_initial_params("gs://b/other")

  def test_legacy_t5x_with_inline_arrays(self):
    params = random_params(V11, 3)
    state = {"version": 3, "optimizer": {
        "target": params, "state": {"step": np.int32(5)}}}
    epath.Path("gs://b/t5x/checkpoint_5").mkdir(parents=True)
    epath.Path("gs://b/t5x/checkpoint_5/checkpoint").write_bytes(
        serialization.msgpack_serialize(state))
    self.assertTrue(t5x_import.is_t5x_checkpoint("gs://b/t5x"))
    loaded, config = t5x_import.load_t5x("gs://b/t5x")
    self.assertEqual(config.emb_dim, V11.emb_dim)
    assert_trees_equal(self, loaded, params)

  def test_tensorstore_specs_of_each_scheme(self):
    self.assertEqual(t5x_import.kvstore_spec(epath.Path("gs://bkt/a/b.x")),
                     {"driver": "gcs", "bucket": "bkt", "path": "a/b.x"})
    self.assertEqual(t5x_import.kvstore_spec(epath.Path("/tmp/c")),
                     {"driver": "file", "path": "/tmp/c"})
    with self.assertRaisesRegex(ValueError, "TensorStore reads local paths "
                                "and gs://, not s3://. Copy the checkpoint"):
      t5x_import.kvstore_spec(epath.Path("s3://bkt/a"))


if __name__ == "__main__":
  absltest.main()
