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

"""The profiling helpers: the trace window writes a trace of the right steps,
the phase timer's split adds up and arrives in step order, and a call that
returns with its work done is timed from its start. Nothing here asserts how
long anything takes, only how the timer's numbers relate to the clock."""

import tempfile
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp

from ipo_md import profiling


@jax.jit
def _double(x):
  return x * 2.0


@jax.jit
def _halve(x):
  return x * 0.5


class ParseTest(parameterized.TestCase):

  def test_values(self):
    self.assertEqual(profiling.parse_profile_steps("3:5"), (3, 5))
    self.assertEqual(profiling.parse_profile_steps("0:0"), (0, 0))
    self.assertIsNone(profiling.parse_profile_steps(""))
    self.assertIsNone(profiling.parse_profile_steps(None))

  @parameterized.parameters("5:3", "a:b", "3", "-1:2", "1:2:3")
  def test_bad(self, spec):
    with self.assertRaisesRegex(ValueError, "profile_steps=.*A:B"):
      profiling.parse_profile_steps(spec)


class TraceWindowTest(absltest.TestCase):

  def test_trace_holds_the_window_only(self):
    with tempfile.TemporaryDirectory() as directory:
      window = profiling.TraceWindow(directory, 1, 2)
      x = jnp.ones((4,))
      started = []
      for step in range(4):
        window.before_step(step)
        started.append(window.active)
        x = _double(x)
        window.after_step(step, x)
      window.close()
      self.assertEqual(started, [False, True, True, False])
      files = window.trace_files()
      self.assertLen(files, 1)
      data = jax.profiler.ProfileData.from_file(str(files[0]))
      names = {event.name for plane in data.planes for line in plane.lines
               for event in line.events}
      self.assertTrue(any("_double" in n for n in names), sorted(names)[:20])


class PhaseTimerTest(absltest.TestCase):

  def test_split_adds_up_in_step_order(self):
    timer = profiling.PhaseTimer()
    x = jnp.ones((256, 256))
    for step in range(3):
      timer.begin(step)
      x = _double(x)
      timer.phase("sample", x)
      x = _halve(x)
      timer.phase("update", x)
      timer.end()
    timings = timer.poll() + timer.close()
    self.assertEqual([t["step"] for t in timings], [0, 1, 2])
    for t in timings:
      self.assertEqual(set(t), {"step", "timing/sample", "timing/update",
                                profiling.HOST_KEY, profiling.STEP_KEY})
      parts = t["timing/sample"] + t["timing/update"] + t[profiling.HOST_KEY]
      self.assertAlmostEqual(parts, t[profiling.STEP_KEY], places=9)
      self.assertGreaterEqual(min(t[k] for k in t if k != "step"), 0.0)

  def test_calls_that_return_done_are_timed_from_their_start(self):
    # As XLA:CPU runs calls with jax_cpu_enable_async_dispatch=False (what
    # `ipo-md train` sets): the output is ready when the loop hands it over.
    timer = profiling.PhaseTimer()
    x = jnp.ones((256, 256))
    jax.block_until_ready(_double(x))  # Compiled before the timing.
    spent = []
    for step in range(3):
      time.sleep(0.05)  # The host's work between steps.
      timer.begin(step)
      start = time.perf_counter()
      x = jax.block_until_ready(_double(x))
      spent.append(time.perf_counter() - start)
      timer.phase("update", x)
      timer.end()
    timings = timer.close()
    self.assertEqual([t["step"] for t in timings], [0, 1, 2])
    for t, s in zip(timings, spent):
      # The whole call counts as the phase's time.
      self.assertGreaterEqual(t["timing/update"], s)
      self.assertAlmostEqual(t["timing/update"] + t[profiling.HOST_KEY],
                             t[profiling.STEP_KEY], places=9)
    for t in timings[1:]:
      # The sleep before the step is the host's time, not the device's.
      self.assertGreaterEqual(t[profiling.HOST_KEY], 0.05)
      self.assertLess(t["timing/update"], t[profiling.HOST_KEY])

  def test_wait_returns_once_the_step_is_timed(self):
    timer = profiling.PhaseTimer()
    x = jnp.ones((256, 256))
    for step in range(1, 4):
      timer.begin(step)
      x = _double(x)
      timer.phase("update", x)
      timer.end()
    jax.block_until_ready(x)
    timer.wait(3)
    self.assertEqual([t["step"] for t in timer.poll()], [1, 2, 3])
    self.assertEqual(timer.close(), [])

  def test_misuse_is_named(self):
    timer = profiling.PhaseTimer()
    with self.assertRaisesRegex(ValueError, "outside begin"):
      timer.phase("sample", jnp.ones(()))
    with self.assertRaisesRegex(ValueError, "without begin"):
      timer.end()
    timer.begin(0)
    with self.assertRaisesRegex(ValueError, r"before end\(\) of step 0"):
      timer.begin(1)
    timer.end()
    self.assertLen(timer.close(), 1)


if __name__ == "__main__":
  absltest.main()
