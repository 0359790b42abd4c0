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

"""SIGKILL at a random moment of a saving process, then restore_latest.

A subprocess saves a tiny state at every step (save, then wait: finite
check, marker, Orbax write and rename, seal, rotation) and prints each step
once it is sealed; it is killed after a random delay, so the kill lands in
any of those phases. restore_latest must then return a step at least as new
as the last sealed one, with exactly that step's values, and set aside only
folders that hold no finished work. The default suite kills twice (a Python
start each); a soak on request kills more often:

    IPO_MD_SOAK=40 python -m pytest tests/checkpoints_kill_test.py
"""

import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from ipo_md import checkpoints

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_KILLS = int(os.environ.get("IPO_MD_SOAK", "2"))

_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from ipo_md import checkpoints

    def state(step):
      return {"w": np.arange(4096, dtype=np.float32) * step,
              "v": np.full((64, 64), step, np.float32)}

    ck = checkpoints.Checkpointer(sys.argv[1],
                                  checkpoints.CheckpointConfig(keep=2))
    restored = ck.restore_latest({k: np.zeros_like(v)
                                  for k, v in state(0).items()})
    step = 0 if restored is None else restored.step
    print("ready", flush=True)
    while True:
      step += 1
      ck.save(step, state(step), {"step": step, "data_position": step})
      ck.wait()
      print("sealed", step, flush=True)
""")


def _state(step: int) -> dict:
  return {"w": np.arange(4096, dtype=np.float32) * step,
          "v": np.full((64, 64), step, np.float32)}


class KillTest(parameterized.TestCase):

  @parameterized.parameters(range(_KILLS))
  def test_resume_after_sigkill(self, seed):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    directory = pathlib.Path(tmp.name) / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(_ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    self.assertEqual(proc.stdout.readline().strip(), "ready")
    time.sleep(random.Random(seed).uniform(0.3, 2.0))
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    sealed = [int(line.split()[1]) for line in out.splitlines()
              if line.startswith("sealed")]
    lines = []
    ck = checkpoints.Checkpointer(directory, checkpoints.CheckpointConfig(),
                                  report=lines.append)
    self.addCleanup(ck.close)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=one)
              for k, v in _state(0).items()}
    restored = ck.restore_latest(target)
    if sealed:
      self.assertIsNotNone(restored, lines)
      self.assertGreaterEqual(restored.step, sealed[-1], lines)
      self.assertLessEqual(restored.step, sealed[-1] + 1, lines)
    if restored is not None:
      self.assertEqual(restored.meta["data_position"], restored.step)
      for k, v in _state(restored.step).items():
        np.testing.assert_array_equal(np.asarray(restored.state[k]), v)
    self.assertEqual([d for d in ck.damaged if d.valuable], [])


if __name__ == "__main__":
  absltest.main()
