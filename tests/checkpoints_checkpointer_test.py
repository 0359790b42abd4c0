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

"""The train-state Checkpointer: verified saves, damaged-checkpoint fallback,
keep-K that never loses the newest good checkpoint, non-finite refusal, and
restore onto another mesh.

The state is a tiny flax struct with an optax Adafactor state (dataclass,
tuple and NamedTuple nodes, as in the real TrainState), never a model, so the
tests are about files and trees. Each damage case starts from a copy of one
directory holding two sealed steps, damages the newest the way a disk, a
stray copy or a killed process would, and checks exactly what is restored,
what is reported and where the damaged folder went.
"""

import json
import pathlib
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ipo_md import checkpoints
from ipo_md.checkpoints import verify

P = jax.sharding.PartitionSpec


class TinyState(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def make_state(scale: float = 1.0, step: int = 0) -> TinyState:
  params = {"dense": {"kernel": jnp.arange(32.0).reshape(8, 4) * scale,
                      "bias": jnp.full((4,), 0.5 * scale)},
            "embedding": jnp.linspace(-1.0, 1.0, 24).reshape(6, 4) * scale}
  tx = optax.adafactor(1e-3)
  return TinyState(step=jnp.int32(step), params=params,
                   opt_state=tx.init(params), rng=jax.random.PRNGKey(step))


def abstract(state, sharding=None):
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


def assert_same(test, a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  test.assertEqual(len(la), len(lb))
  for x, y in zip(la, lb):
    test.assertEqual(x.dtype, y.dtype)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def files_under(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                if p.is_file())


def first_tensor_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The data file that a restore reads (the per-process files under
  ocdbt.process_0/ are merged into state/d/ when the save completes)."""
  return sorted((step_dir / "state" / "d").iterdir())[0]


class CheckpointerTestBase(parameterized.TestCase):

  def tmp(self) -> pathlib.Path:
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    return pathlib.Path(d.name)

  def checkpointer(self, directory, keep=3, every=1):
    self.lines = []
    ck = checkpoints.Checkpointer(
        directory, checkpoints.CheckpointConfig(every=every, keep=keep),
        report=self.lines.append)
    self.addCleanup(ck.close)
    return ck


class CheckpointerTest(CheckpointerTestBase):

  def test_roundtrip_is_bit_identical_and_sealed(self):
    d = self.tmp() / "ckpt"
    ck = self.checkpointer(d)
    state = make_state(1.0, step=7)
    ck.save(7, state, {"step": 7, "data_position": 7})
    ck.wait()
    manifest = json.loads((d / "7" / verify.MANIFEST).read_text())
    self.assertEqual(manifest["step"], 7)
    self.assertEqual(sorted(manifest["files"]),
                     [f for f in files_under(d / "7") if f != verify.MANIFEST])
    self.assertFalse((d / "saving" / "7").exists())
    self.assertEqual(ck.latest_step(), 7)
    restored = ck.restore_latest(abstract(state))
    self.assertEqual(restored.step, 7)
    self.assertEqual(restored.meta, {"step": 7, "data_position": 7})
    assert_same(self, restored.state, state)
    state2, meta2 = ck.restore(7, abstract(state))
    assert_same(self, state2, state)
    self.assertEqual(meta2["data_position"], 7)
    self.assertEqual(self.lines, [])

  def test_latest_meta_skips_damaged_steps_and_moves_nothing(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    self.assertIsNone(ck.latest_meta())
    for step in (1, 2):
      ck.save(step, make_state(step), {"step": step, "data_position": 3})
    ck.wait()
    self.assertEqual(ck.latest_meta(), (2, {"step": 2, "data_position": 3}))
    _truncate(d / "2")
    self.assertEqual(ck.latest_meta(), (1, {"step": 1, "data_position": 3}))
    self.assertTrue((d / "2").is_dir())
    self.assertEqual(self.lines, [])

  def test_fresh_directory_restores_nothing(self):
    ck = self.checkpointer(self.tmp() / "new")
    self.assertIsNone(ck.latest_step())
    self.assertIsNone(ck.restore_latest(abstract(make_state())))

  def test_keep_k_keeps_the_newest_sealed(self):
    d = self.tmp()
    ck = self.checkpointer(d, keep=2)
    for step in (1, 2, 3):
      ck.save(step, make_state(step), {"step": step})
    ck.save(3, make_state(99.0), {"step": 3})  # Exists: a no-op.
    ck.wait()
    self.assertEqual(sorted(p.name for p in d.iterdir() if p.name.isdigit()),
                     ["2", "3"])
    restored = ck.restore_latest(abstract(make_state()))
    assert_same(self, restored.state.params, make_state(3).params)

  def test_rotation_never_deletes_the_newest_sealed_checkpoint(self):
    d = self.tmp()
    ck = self.checkpointer(d, keep=1)
    ck.save(1, make_state(1.0), {"step": 1})
    ck.close()
    # Newer folders that are not sealed checkpoints: a copy without its
    # manifest, and an empty one. A rotation counting them would delete 1.
    shutil.copytree(d / "1", d / "2")
    (d / "2" / verify.MANIFEST).unlink()
    (d / "3").mkdir()
    ck = self.checkpointer(d, keep=1)
    ck.wait()
    self.assertTrue((d / "1").is_dir())
    restored = ck.restore_latest(abstract(make_state()))
    self.assertEqual(restored.step, 1)
    self.assertEqual([dmg.slug for dmg in ck.damaged], ["empty", "unverified"])
    ck.save(4, make_state(4.0), {"step": 4})
    ck.wait()
    self.assertEqual(sorted(p.name for p in d.iterdir() if p.name.isdigit()),
                     ["4"])

  @parameterized.named_parameters(
      ("nan", "nan", "params/dense/kernel holds NaN."),
      ("inf", "inf", "params/dense/kernel holds Inf."),
      ("both", "both", "params/dense/kernel holds NaN and Inf (2 leaves in "
       "all)."))
  def test_non_finite_state_is_refused(self, kind, expected):
    d = self.tmp()
    ck = self.checkpointer(d, keep=1)
    ck.save(1, make_state(1.0), {"step": 1})
    state = make_state(2.0)
    kernel = state.params["dense"]["kernel"]
    if kind in ("nan", "both"):
      kernel = kernel.at[3, 1].set(jnp.nan)
    if kind in ("inf", "both"):
      kernel = kernel.at[0, 0].set(-jnp.inf)
    params = {**state.params, "dense": {**state.params["dense"],
                                        "kernel": kernel}}
    if kind == "both":
      params["embedding"] = params["embedding"].at[0, 0].set(jnp.inf)
    with self.assertRaises(checkpoints.NonFiniteStateError) as raised:
      ck.save(2, state.replace(params=params), {"step": 2})
    error = raised.exception
    self.assertEqual(error.step, 2)
    self.assertEqual(error.leaves[0][0], "params/dense/kernel")
    self.assertIn(f"Refusing to checkpoint step 2: {expected}", str(error))
    self.assertIn(f"The newest finite checkpoint is {d / '1'}.", str(error))
    ck.wait()
    self.assertEqual(sorted(p.name for p in d.iterdir() if p.name.isdigit()),
                     ["1"])
    self.assertFalse((d / "saving" / "2").exists())

  def test_integer_and_key_leaves_are_not_checked(self):
    tree = {"i": jnp.int32(-1), "k": jax.random.key(0),
            "x": jnp.ones(3, jnp.bfloat16)}
    self.assertEqual(checkpoints.finite.non_finite_leaves(tree), [])

  def test_shape_mismatch_is_a_configuration_error_and_moves_nothing(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    ck.save(5, make_state(), {"step": 5})
    ck.wait()
    other = make_state()
    other = other.replace(params={**other.params,
                                  "embedding": jnp.zeros((10, 4)),
                                  "extra": jnp.zeros(2)})
    with self.assertRaisesRegex(
        checkpoints.CheckpointMismatchError,
        rf"Checkpoint {d / '5'} does not fit this run's train state \(shapes "
        r"differ: params/embedding is \(6, 4\) there, \(10, 4\) here; the run "
        r"has entries the checkpoint lacks: params/extra\). This is a "
        "configuration difference, not damage: nothing was moved."):
      ck.restore_latest(abstract(other))
    self.assertTrue((d / "5" / verify.MANIFEST).is_file())
    self.assertFalse((d / "damaged").exists())
    self.assertEqual(self.lines, [])

  def test_check_meta_runs_before_the_state_and_propagates(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    ck.save(5, make_state(), {"step": 5, "model_config": {"emb_dim": 8}})
    ck.wait()
    seen = []

    def check(meta):
      seen.append(meta)
      raise ValueError("another model")

    with self.assertRaisesRegex(ValueError, "another model"):
      ck.restore_latest(abstract(make_state()), check_meta=check)
    self.assertEqual(seen, [{"step": 5, "model_config": {"emb_dim": 8}}])
    self.assertTrue((d / "5").is_dir())

  def test_explicit_restore_of_a_damaged_step_raises(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    ck.save(5, make_state(), {"step": 5})
    ck.wait()
    path = first_tensor_file(d / "5")
    path.write_bytes(path.read_bytes()[:-3])
    with self.assertRaisesRegex(
        checkpoints.DamagedCheckpointError,
        rf"Checkpoint {d / '5'}: state/d/{path.name} has "
        r"\d+ bytes, its ipo_md_manifest.json says \d+ \(truncated\)\. "
        r"Restore another step \(sealed steps: \[5\]\)"):
      ck.restore(5, abstract(make_state()))
    self.assertTrue((d / "5").is_dir())

  def test_nothing_restores_is_an_error_naming_each_folder(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    ck.save(5, make_state(), {"step": 5})
    ck.wait()
    (d / "5" / "state" / "_METADATA").unlink()
    (d / "9").mkdir()
    with self.assertRaises(checkpoints.NoUsableCheckpointError) as raised:
      ck.restore_latest(abstract(make_state()))
    message = str(raised.exception)
    self.assertTrue(message.startswith(
        f"No checkpoint in {d} verifies and restores:\n  {d / '9'}: is an "
        f"empty folder"), message)
    self.assertIn(f"\n  {d / '5'}: state/_METADATA is missing (listed in its "
                  f"ipo_md_manifest.json); moved to {d / 'damaged'}/5-missing-"
                  "file-", message)
    self.assertIn("Rerun the same command to start this stage from step 0",
                  message)
    self.assertEqual(len(self.lines), 2)
    self.assertEqual(sorted(p.name.split("-")[0]
                            for p in (d / "damaged").iterdir()), ["5", "9"])
    # They were set aside: the rerun starts fresh.
    self.assertIsNone(ck.restore_latest(abstract(make_state())))

  def test_only_unfinished_folders_mean_a_fresh_start(self):
    d = self.tmp()
    (d / "3").mkdir()
    (d / "4").write_text("")
    ck = self.checkpointer(d)
    self.assertIsNone(ck.restore_latest(abstract(make_state())))
    self.assertEqual([x.slug for x in ck.damaged], ["not-a-folder", "empty"])
    self.assertEqual(self.lines[0].split("; moved to ")[0],
                     f"{d / '4'}: is a file, not a checkpoint folder")

  def test_a_save_killed_after_writing_is_sealed_on_restore(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    ck.save(1, make_state(1.0), {"step": 1})
    ck.save(2, make_state(2.0), {"step": 2})
    ck.close()
    # What a SIGKILL between Orbax's commit and the seal leaves.
    (d / "2" / verify.MANIFEST).unlink()
    (d / "saving" / "2").write_text("2\n")
    ck = self.checkpointer(d)
    restored = ck.restore_latest(abstract(make_state()))
    self.assertEqual(restored.step, 2)
    assert_same(self, restored.state, make_state(2.0))
    self.assertEqual(self.lines, [
        f"{d / '2'}: sealed (its save had finished, but the run stopped "
        "before verifying it)."])
    self.assertTrue((d / "2" / verify.MANIFEST).is_file())
    self.assertFalse((d / "saving" / "2").exists())

  def test_a_failed_seal_is_reported_and_sealed_on_restore(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    with mock.patch.object(verify, "write_manifest",
                           side_effect=OSError("bucket unavailable")):
      ck.save(3, make_state(3.0), {"step": 3})
      ck.wait()
    self.assertEqual(self.lines, [
        f"{d / '3'}: saved but not verified (OSError: bucket unavailable); "
        "it will be verified if a run resumes from it."])
    self.assertTrue((d / "saving" / "3").exists())
    restored = self.checkpointer(d).restore_latest(abstract(make_state()))
    self.assertEqual(restored.step, 3)
    self.assertTrue((d / "3" / verify.MANIFEST).is_file())

  def test_a_save_killed_while_writing_leaves_no_step(self):
    d = self.tmp()
    ck = self.checkpointer(d)
    ck.save(1, make_state(1.0), {"step": 1})
    ck.close()
    # Orbax writes a step into a temporary folder and renames it when done.
    shutil.copytree(d / "1", d / "2.orbax-checkpoint-tmp-1234")
    (d / "saving" / "2").write_text("2\n")
    ck = self.checkpointer(d)
    restored = ck.restore_latest(abstract(make_state()))
    self.assertEqual(restored.step, 1)
    self.assertEqual([x.slug for x in ck.damaged], ["unfinished"])
    self.assertRegex(self.lines[0], (
        rf"^{d}/2.orbax-checkpoint-tmp-1234: is a save that never finished "
        r"\(Orbax's temporary folder; the run was killed while writing it\); "
        rf"moved to {d}/damaged/2.orbax-checkpoint-tmp-1234-unfinished-"))
    self.assertFalse((d / "saving" / "2").exists())
    self.assertEqual(sorted(p.name for p in d.iterdir()),
                     ["1", "damaged", "saving"])


def _truncate(step_dir):
  path = first_tensor_file(step_dir)
  path.write_bytes(path.read_bytes()[:-7])


def _overwrite(step_dir):
  path = first_tensor_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x55
  path.write_bytes(bytes(data))


def _garble_meta(step_dir):
  path = step_dir / "meta" / "metadata"
  text = path.read_text()
  path.write_text("{" * len(text))


def _garble_array_metadata(step_dir):
  path = step_dir / "state" / "array_metadatas" / "process_0"
  data = bytearray(path.read_bytes())
  data[len(data) // 3:len(data) // 3 + 8] = b"\xff" * 8
  path.write_bytes(bytes(data))


def _no_manifest(step_dir):
  (step_dir / verify.MANIFEST).unlink()


def _bad_manifest(step_dir):
  (step_dir / verify.MANIFEST).write_text('{"files": ')


def _manifest_of_step_1(step_dir):
  shutil.copy(step_dir.parent / "1" / verify.MANIFEST,
              step_dir / verify.MANIFEST)


def _resealed(damage):
  """The damage, then a fresh manifest: files that verify but are bad."""

  def apply(step_dir):
    damage(step_dir)
    verify.write_manifest(step_dir)

  return apply


def _bad_position(step_dir):
  (step_dir / "meta" / "metadata").write_text(
      json.dumps({"step": 2, "data_position": "seven"}))


def _nan_state(step_dir):
  shutil.rmtree(step_dir / "state")
  state = make_state(2.0)
  state = state.replace(params={**state.params,
                                "embedding": jnp.full((6, 4), jnp.nan)})
  with ocp.StandardCheckpointer() as writer:
    writer.save(step_dir / "state", state)
    writer.wait_until_finished()


class DamagedCheckpointTest(CheckpointerTestBase):
  """Each way step 2 of a {1, 2} directory can be damaged: restore_latest
  falls back to step 1 bit for bit, reports step 2 and moves it aside."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._template = tempfile.TemporaryDirectory()
    ck = checkpoints.Checkpointer(cls._template.name,
                                  checkpoints.CheckpointConfig(keep=5))
    for step in (1, 2):
      ck.save(step, make_state(float(step), step),
              {"step": step, "data_position": 10 * step})
    ck.close()

  @classmethod
  def tearDownClass(cls):
    cls._template.cleanup()
    super().tearDownClass()

  def directory(self) -> pathlib.Path:
    d = self.tmp() / "ckpt"
    shutil.copytree(self._template.name, d)
    return d

  @parameterized.named_parameters(
      ("truncated_tensor", _truncate, "truncated",
       r"state/d/\w+ has \d+ bytes, its ipo_md_manifest.json "
       r"says \d+ \(truncated\)"),
      ("overwritten_tensor", _overwrite, "altered",
       r"state/d/\w+ differs from its ipo_md_manifest.json "
       r"\(same size, other SHA-256: altered on disk\)"),
      ("deleted_tensor",
       lambda d: first_tensor_file(d).unlink(), "missing-file",
       r"state/d/\w+ is missing \(listed in its "
       r"ipo_md_manifest.json\)"),
      ("missing_tree_metadata",
       lambda d: (d / "state" / "_METADATA").unlink(), "missing-file",
       r"state/_METADATA is missing"),
      ("missing_step_metadata",
       lambda d: (d / "_CHECKPOINT_METADATA").unlink(), "missing-file",
       r"_CHECKPOINT_METADATA is missing"),
      ("garbled_meta_json", _garble_meta, "altered",
       r"meta/metadata differs from its ipo_md_manifest.json"),
      ("missing_meta", lambda d: shutil.rmtree(d / "meta"), "missing-file",
       r"meta/\S+ is missing"),
      ("no_manifest", _no_manifest, "unverified",
       r"has no ipo_md_manifest.json: it was not written by this version of "
       r"ipo-md \(or was copied in without it\), so its contents cannot be "
       r"verified"),
      ("garbled_manifest", _bad_manifest, "bad-manifest",
       r"ipo_md_manifest.json is not valid JSON"),
      ("manifest_of_another_step", _manifest_of_step_1, "wrong-step",
       r"its ipo_md_manifest.json is for step 1, not 2 \(copied from another "
       r"folder\?\)"),
      ("bad_data_position_sealed", _resealed(_bad_position), "bad-meta",
       r"its data_position 'seven' is not a count of batches"),
      ("garbled_meta_sealed", _resealed(_garble_meta), "bad-meta",
       r"its meta cannot be read \("),
      ("missing_tree_metadata_sealed",
       _resealed(lambda d: (d / "state" / "_METADATA").unlink()),
       "bad-metadata", r"its tree metadata cannot be read \("),
      ("truncated_tensor_sealed", _resealed(_truncate), "bad-metadata",
       r"its tree metadata cannot be read \(ValueError: "),
      ("garbled_array_metadata_sealed", _resealed(_garble_array_metadata),
       "unreadable", r"its state does not restore \("),
      ("non_finite_sealed", _resealed(_nan_state), "non-finite",
       r"params/embedding holds NaN \(1 non-finite leaves\)"),
  )
  def test_falls_back_to_the_previous_step(self, damage, slug, reason):
    d = self.directory()
    damage(d / "2")
    before = files_under(d / "2")
    ck = self.checkpointer(d)
    restored = ck.restore_latest(abstract(make_state()))
    self.assertEqual(restored.step, 1)
    self.assertEqual(restored.meta, {"step": 1, "data_position": 10})
    assert_same(self, restored.state, make_state(1.0, 1))
    self.assertLen(self.lines, 1)
    self.assertRegex(
        self.lines[0],
        rf"^{d / '2'}: {reason}.*; moved to {d / 'damaged'}/2-{slug}-"
        r"\d{8}T\d{6}Z$")
    self.assertFalse((d / "2").exists())
    (moved,) = (d / "damaged").iterdir()
    self.assertEqual(str(moved), ck.damaged[0].moved_to)
    # Nothing was deleted: the same files, plus the reason.
    self.assertEqual(
        [f for f in files_under(moved) if f != verify.REASON_FILE], before)
    self.assertEqual((moved / verify.REASON_FILE).read_text(),
                     self.lines[0] + "\n")
    # Training goes on and rewrites step 2.
    ck.save(2, make_state(2.0, 2), {"step": 2})
    ck.wait()
    self.assertEqual(ck.latest_step(), 2)

  @parameterized.named_parameters(
      ("empty_folder", lambda d: (d / "3").mkdir(), "empty",
       "is an empty folder"),
      ("stray_file", lambda d: (d / "3").write_text("x"), "not-a-folder",
       "is a file, not a checkpoint folder"),
      ("unsealed_copy",
       lambda d: shutil.copytree(d / "1", d / "3",
                                 ignore=shutil.ignore_patterns(
                                     verify.MANIFEST)),
       "unverified", "has no ipo_md_manifest.json"))
  def test_stray_newer_folder_is_set_aside(self, make, slug, reason):
    d = self.directory()
    make(d)
    ck = self.checkpointer(d)
    restored = ck.restore_latest(abstract(make_state()))
    self.assertEqual(restored.step, 2)
    assert_same(self, restored.state, make_state(2.0, 2))
    self.assertEqual([x.slug for x in ck.damaged], [slug])
    self.assertTrue(self.lines[0].startswith(f"{d / '3'}: {reason}"),
                    self.lines[0])


class TopologyTest(CheckpointerTestBase):
  """Saved on a (4, 2) mesh of 8 devices; restored elsewhere bit for bit."""

  def setUp(self):
    super().setUp()
    if len(jax.devices()) < 8:
      self.skipTest("needs 8 devices (conftest sets "
                    "--xla_force_host_platform_device_count=8).")

  def mesh(self, shape, n):
    return jax.sharding.Mesh(np.array(jax.devices()[:n]).reshape(shape),
                             ("data", "model"))

  def shardings(self, mesh, state):
    """Kernels split over both axes, vectors over 'model', rest replicated."""

    def one(x):
      if x.ndim == 2 and x.shape[0] % mesh.shape["data"] == 0 and (
          x.shape[1] % mesh.shape["model"] == 0):
        spec = P("data", "model")
      elif x.ndim == 1 and x.shape[0] % mesh.shape["model"] == 0:
        spec = P("model")
      else:
        spec = P()
      return jax.sharding.NamedSharding(mesh, spec)

    return jax.tree_util.tree_map(one, state)

  def saved(self):
    d = self.tmp()
    state = make_state(3.0, 11)
    mesh = self.mesh((4, 2), 8)
    shardings = self.shardings(mesh, state)
    placed = jax.tree_util.tree_map(jax.device_put, state, shardings)
    self.assertEqual(placed.params["dense"]["kernel"].sharding.spec,
                     P("data", "model"))
    ck = self.checkpointer(d)
    ck.save(11, placed, {"step": 11, "data_position": 11})
    ck.wait()
    return d, state

  def test_restore_onto_four_devices_and_onto_one(self):
    d, state = self.saved()
    ck = self.checkpointer(d)
    mesh = self.mesh((2, 2), 4)
    target = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state, self.shardings(mesh, state))
    restored = ck.restore_latest(target)
    kernel = restored.state.params["dense"]["kernel"]
    self.assertEqual(kernel.sharding, jax.sharding.NamedSharding(
        mesh, P("data", "model")))
    self.assertEqual(len(kernel.sharding.device_set), 4)
    assert_same(self, restored.state, state)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[5])
    restored = ck.restore_latest(abstract(state, one))
    self.assertEqual(restored.state.params["embedding"].sharding, one)
    assert_same(self, restored.state, state)

  def test_a_mesh_that_cannot_hold_a_shape_is_named(self):
    d, state = self.saved()
    ck = self.checkpointer(d)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:3]).reshape(1, 3),
                             ("data", "model"))
    target = abstract(state, jax.sharding.NamedSharding(mesh, P()))
    bias = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=(
        jax.sharding.NamedSharding(mesh, P("model"))))
    target = target.replace(params={**target.params, "dense": {
        **target.params["dense"], "bias": bias}})
    with self.assertRaisesRegex(
        checkpoints.CheckpointMismatchError,
        rf"Cannot restore params/dense/bias of {d / '11'} \(shape \(4,\)\) "
        r"onto this topology: sharding P\('model',\) over mesh "
        r"\{'data': 1, 'model': 3\} does not divide it\. Choose mesh axis "
        "sizes that divide the dimension"):
      ck.restore_latest(target)
    self.assertEqual(self.lines, [])


if __name__ == "__main__":
  absltest.main()
