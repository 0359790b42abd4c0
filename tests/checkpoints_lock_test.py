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

"""The MODEL_DIR run lock: one holder, clear refusals, stale locks broken,
released on every exit path.

Real processes race for the lock (subprocesses started together, released
from a barrier file), die with SIGKILL, exit through atexit and stop on
SIGTERM; each subprocess costs a Python start, so they run concurrently.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

from absl.testing import absltest

from ipo_md.checkpoints import lock as lock_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]

# argv: model_dir, barrier file, mode. Prints one JSON line.
_CHILD = textwrap.dedent("""
    import json, os, pathlib, signal, sys, time
    from ipo_md.checkpoints import lock as lock_lib
    model_dir, barrier, mode = sys.argv[1:4]
    if mode == "sigterm":
      # As the trainer does: the handler turns SIGTERM into a normal exit.
      signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    pathlib.Path(f"{barrier}.ready-{os.getpid()}").write_text("")
    while not os.path.exists(barrier):
      time.sleep(0.005)
    lock = lock_lib.RunLock(model_dir)
    try:
      lock.acquire()
    except lock_lib.RunLockedError as e:
      print(json.dumps({"pid": os.getpid(), "got": False, "error": str(e)}))
      sys.exit(3)
    print(json.dumps({"pid": os.getpid(), "got": True}), flush=True)
    if mode == "race":
      time.sleep(1.5)
      lock.release()
    elif mode == "kill":
      os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "atexit":
      sys.exit(0)  # No release: atexit must remove the lock.
    elif mode == "sigterm":
      with lock:  # Already held: entering again is a no-op.
        time.sleep(60)
""")


def _start(model_dir, barrier, mode) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": str(_ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(model_dir), str(barrier), mode],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(proc: subprocess.Popen, timeout=60) -> dict:
  out, err = proc.communicate(timeout=timeout)
  lines = [line for line in out.splitlines() if line.startswith("{")]
  if not lines:
    raise AssertionError(f"child printed nothing; stderr:\n{err[-2000:]}")
  return json.loads(lines[-1])


class RunLockTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    """Starts every subprocess at once (a Python start each): two that race
    for one lock once both are ready, and one per exit path."""
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    root = pathlib.Path(cls._tmp.name)
    cls.race_dir, race_barrier = root / "race", root / "race-go"
    (root / "go").write_text("")
    cls.exit_dirs = {m: root / m for m in ("kill", "atexit", "sigterm")}
    cls.exit_procs = {m: _start(d, root / "go", m)
                      for m, d in cls.exit_dirs.items()}
    cls.race_procs = [_start(cls.race_dir, race_barrier, "race")
                      for _ in range(2)]
    deadline = time.time() + 60
    while len(list(root.glob("race-go.ready-*"))) < 2:
      if time.time() > deadline:
        raise AssertionError("the racing subprocesses did not start")
      time.sleep(0.01)
    race_barrier.write_text("")

  @classmethod
  def tearDownClass(cls):
    for proc in [*cls.exit_procs.values(), *cls.race_procs]:
      if proc.poll() is None:
        proc.kill()
      proc.communicate()
    cls._tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    self.dir = pathlib.Path(d.name) / "model_dir"
    self.lines = []

  def lock(self) -> lock_lib.RunLock:
    lock = lock_lib.RunLock(self.dir, report=self.lines.append)
    self.addCleanup(lock.release)
    return lock

  def test_holder_is_recorded_and_a_second_run_is_refused(self):
    first = self.lock().acquire()
    holder = json.loads((self.dir / "ipo_md.lock").read_text())
    self.assertEqual(holder["pid"], os.getpid())
    self.assertEqual(holder["host"], socket.gethostname())
    self.assertEqual(holder["command"].split()[0], sys.argv[0])
    self.assertRegex(holder["started"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
    with self.assertRaises(lock_lib.RunLockedError) as raised:
      self.lock().acquire()
    message = str(raised.exception)
    self.assertTrue(message.startswith(
        f"MODEL_DIR {self.dir} is in use by another run: PID {os.getpid()} on "
        f"host {socket.gethostname()!r}, started {holder['started']} (0 min "
        "ago), command: "), message)
    self.assertIn("It is still running on this host: wait for it, or stop "
                  "it first; or use another MODEL_DIR.", message)
    self.assertEqual(raised.exception.holder["token"], holder["token"])
    first.release()
    self.assertFalse((self.dir / "ipo_md.lock").exists())
    with self.lock():
      self.assertTrue((self.dir / "ipo_md.lock").exists())
    self.assertFalse((self.dir / "ipo_md.lock").exists())
    self.assertEqual(self.lines, [])

  def test_released_when_the_block_raises(self):
    with self.assertRaises(KeyError):
      with self.lock():
        raise KeyError("boom")
    self.assertFalse((self.dir / "ipo_md.lock").exists())

  def test_a_lock_held_on_another_host_names_the_file_to_delete(self):
    self.dir.mkdir()
    (self.dir / "ipo_md.lock").write_text(json.dumps({
        "host": "tpu-vm-7", "pid": 4242, "started": "2025-01-01T00:00:00+00:00",
        "command": "ipo-md train --gin_file=x.gin", "token": "t"}))
    with self.assertRaisesRegex(
        lock_lib.RunLockedError,
        r"in use by another run: PID 4242 on host 'tpu-vm-7', started "
        r"2025-01-01T00:00:00\+00:00 \(\d+ min ago\), command: ipo-md train "
        r"--gin_file=x.gin\. Two runs on one MODEL_DIR would interleave their "
        r"checkpoints and metrics\. If that run is gone \(its machine was "
        rf"preempted or killed\), delete {self.dir / 'ipo_md.lock'} and "
        "rerun; or use another MODEL_DIR."):
      self.lock().acquire()
    self.assertTrue((self.dir / "ipo_md.lock").exists())

  def test_an_unreadable_lock_is_not_broken(self):
    self.dir.mkdir()
    (self.dir / "ipo_md.lock").write_text("{not json")
    with self.assertRaisesRegex(
        lock_lib.RunLockedError,
        r"in use by another run: an unknown run \(the lock file is not "
        rf"readable\).*delete {self.dir / 'ipo_md.lock'} and rerun"):
      self.lock().acquire()

  def test_a_reused_pid_is_a_stale_lock(self):
    self.dir.mkdir()
    # This process is alive, but it started at another time than the
    # holder did: its PID was reused.
    (self.dir / "ipo_md.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "pid_start": "1",
        "started": "2025-01-01T00:00:00+00:00", "command": "old",
        "token": "t"}))
    lock = self.lock().acquire()
    self.assertTrue(lock.held)
    self.assertEqual(len(self.lines), 1)
    self.assertTrue(self.lines[0].startswith(
        f"Breaking the stale lock {self.dir / 'ipo_md.lock'}: PID "
        f"{os.getpid()} on host"), self.lines[0])

  def test_release_leaves_a_lock_that_is_no_longer_ours(self):
    lock = self.lock().acquire()
    (self.dir / "ipo_md.lock").write_text(json.dumps({
        "host": "h", "pid": 1, "started": "s", "command": "c", "token": "x"}))
    lock.release()
    self.assertTrue((self.dir / "ipo_md.lock").exists())
    self.assertEqual(self.lines, [
        f"Not removing {self.dir / 'ipo_md.lock'}: it now belongs to PID 1 "
        "on host 'h', started s, command: c."])

  def test_two_processes_racing_one_wins(self):
    results = [_result(p) for p in self.race_procs]
    winners = [r for r in results if r["got"]]
    losers = [r for r in results if not r["got"]]
    self.assertLen(winners, 1, results)
    self.assertLen(losers, 1, results)
    self.assertIn(f"in use by another run: PID {winners[0]['pid']} on host "
                  f"{socket.gethostname()!r}", losers[0]["error"])
    self.assertEqual(sorted(p.returncode for p in self.race_procs), [0, 3])
    self.assertFalse((self.race_dir / "ipo_md.lock").exists())

  def test_exit_paths_of_real_processes(self):
    dirs, procs = self.exit_dirs, self.exit_procs
    # SIGTERM, turned into an exit by the process's handler, releases it.
    line = procs["sigterm"].stdout.readline()
    self.assertTrue(json.loads(line)["got"])
    procs["sigterm"].send_signal(signal.SIGTERM)
    self.assertEqual(procs["sigterm"].wait(timeout=30), 143)
    self.assertFalse((dirs["sigterm"] / "ipo_md.lock").exists())
    # A normal exit without release: atexit removes it.
    self.assertTrue(_result(procs["atexit"])["got"])
    self.assertEqual(procs["atexit"].returncode, 0)
    self.assertFalse((dirs["atexit"] / "ipo_md.lock").exists())
    # SIGKILL leaves it; the next run on this host breaks it.
    killed = _result(procs["kill"])
    self.assertEqual(procs["kill"].returncode, -signal.SIGKILL)
    self.assertTrue((dirs["kill"] / "ipo_md.lock").exists())
    lock = lock_lib.RunLock(dirs["kill"], report=self.lines.append)
    self.addCleanup(lock.release)
    lock.acquire()
    self.assertEqual(json.loads((dirs["kill"] / "ipo_md.lock").read_text())[
        "pid"], os.getpid())
    self.assertRegex(
        self.lines[0],
        rf"^Breaking the stale lock {dirs['kill'] / 'ipo_md.lock'}: PID "
        rf"{killed['pid']} on host .*; that process is no longer running\.$")


if __name__ == "__main__":
  absltest.main()
