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

"""The Checkpointer and the run lock with two JAX processes (jax.distributed
over gloo, one CPU device each), as on a pod: process 0 alone takes the lock,
seals, rotates and sets damaged folders aside, and both processes agree on
the step they restore, each receiving its own shard.

One subprocess pair (about 6 s of CPU) covers save, damage, fallback and the
non-finite refusal, so the test stays in the default suite.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

# argv: coordinator address, process id, model_dir. Prints one JSON line.
_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    addr, pid, model_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(addr, num_processes=2, process_id=pid)
    import numpy as np
    from jax.experimental import multihost_utils
    from ipo_md import checkpoints
    from ipo_md.checkpoints import lock as lock_lib

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def state(scale):
      w = np.arange(8, dtype=np.float32) * scale
      return {"w": jax.make_array_from_callback((8,), split, lambda i: w[i]),
              "b": jax.make_array_from_callback((), whole,
                                                lambda i: np.float32(scale))}

    lines = []
    with lock_lib.RunLock(model_dir, report=lines.append):
      ck = checkpoints.Checkpointer(f"{model_dir}/checkpoints",
                                    checkpoints.CheckpointConfig(keep=2),
                                    report=lines.append)
      for step in (1, 2, 3):
        ck.save(step, state(float(step)), {"step": step})
      ck.wait()
      refused = ""
      try:
        ck.save(4, state(float("nan")), {"step": 4})
      except checkpoints.NonFiniteStateError as e:
        refused = str(e)
      if pid == 0:
        data = sorted((ck.directory / "3" / "state" / "d").iterdir())[0]
        data.write_bytes(data.read_bytes()[:-4])
      multihost_utils.sync_global_devices("damaged")
      target = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
          state(0.0))
      restored = ck.restore_latest(target)
      shard = restored.state["w"].addressable_shards[0]
      ck.close()
    print(json.dumps({
        "pid": pid, "step": restored.step, "meta": restored.meta,
        "shard": np.asarray(shard.data).tolist(),
        "index": str(shard.index), "b": float(restored.state["b"]),
        "lines": lines, "refused": refused,
        "dirs": sorted(p.name for p in ck.directory.iterdir())}))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class TwoProcessTest(absltest.TestCase):

  def test_lock_save_fallback_and_refusal_agree_across_processes(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    model_dir = pathlib.Path(tmp.name) / "run"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                                "JAX_PROCESS_ID"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               PYTHONPATH=str(_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    addr = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, "-c", _CHILD, addr, str(i), str(model_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    results = []
    for proc in procs:
      out, err = proc.communicate(timeout=180)
      self.assertEqual(proc.returncode, 0, err[-3000:])
      results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    for r in results:
      self.assertEqual(r["step"], 2)
      self.assertEqual(r["meta"], {"step": 2})
      self.assertEqual(r["b"], 2.0)
      self.assertIn("Refusing to checkpoint step 4: b holds NaN (2 leaves in "
                    "all).", r["refused"])
      self.assertEqual(r["dirs"], ["2", "damaged", "saving"])
    self.assertEqual(first["shard"], [0.0, 2.0, 4.0, 6.0])
    self.assertEqual(second["shard"], [8.0, 10.0, 12.0, 14.0])
    # Only process 0 reports, seals and moves.
    self.assertLen(first["lines"], 1)
    self.assertRegex(first["lines"][0],
                     rf"^{model_dir}/checkpoints/3: state/d/\w+ has \d+ bytes,"
                     r" its ipo_md_manifest.json says \d+ \(truncated\); moved"
                     rf" to {model_dir}/checkpoints/damaged/3-truncated-")
    self.assertEqual(second["lines"], [])
    self.assertFalse((model_dir / "ipo_md.lock").exists())


if __name__ == "__main__":
  absltest.main()
