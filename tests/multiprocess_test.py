"""Two JAX processes on this CPU train like one process with the same global
batch: `ipo-md train --multihost` joined through jax.distributed (gloo
collectives), each process with one fake device and its own data shard.

The processes run tests/testdata/multiprocess_train.py, which is the
`ipo-md` command plus a record of each process's data shard and final
parameters. The reference is the same command in this process, on conftest's
8 fake devices, run while the two processes compile.

The parity test costs about 95 s of CPU (three JAX programs compiled, two
processes importing TensorFlow), over the default suite's budget on 2 cores,
so it runs on request (the SIGTERM test below is cheaper and always runs):

    IPO_MD_MULTIPROCESS_TEST=1 python -m pytest tests/multiprocess_test.py
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import gin
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "testdata" / "multiprocess_train.py"
GIN = "tests/testdata/gin/micro_sft.gin"
NUM_STEPS = 2  # sft/loop.LoopConfig.num_steps in micro_sft.gin.
ON_REQUEST = pytest.mark.skipif(
    os.environ.get("IPO_MD_MULTIPROCESS_TEST") != "1",
    reason="~95 s of CPU; run with IPO_MD_MULTIPROCESS_TEST=1")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID"))}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
  return env


def _start(record_dir, model_dir, env, *flags):
  return subprocess.Popen(
      [sys.executable, str(SCRIPT), str(record_dir), "train",
       f"--gin_file={GIN}", f"--gin.MODEL_DIR={model_dir}", *flags],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _params(path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _metrics(path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@ON_REQUEST
def test_two_processes_equal_one_process_with_the_same_global_batch(
    tmp_path, monkeypatch):
  # Imported here: a skipped test costs no TensorFlow import.
  # pylint: disable=g-import-not-at-top
  from ipo_md.cli import train as train_cli
  from tests.testdata import multiprocess_train
  # pylint: enable=g-import-not-at-top

  port = _free_port()
  procs = [
      _start(tmp_path / "rec", tmp_path / "run",
             _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
             "--multihost")
      for i in (0, 1)]
  outputs = []
  try:
    multiprocess_train.install_recorders(tmp_path / "ref", monkeypatch.setattr)
    gin.clear_config()
    try:
      assert train_cli.main([f"--gin_file={GIN}",
                             f"--gin.MODEL_DIR={tmp_path / 'ref_run'}"]) == 0
    finally:
      gin.clear_config()
    for proc in procs:
      outputs.append(proc.communicate(timeout=500)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f"process {i}:\n{out[-5000:]}"

  # The two configurations really differ: two processes vs one.
  seen = [json.loads((tmp_path / "rec" / f"process_{i}.json").read_text())
          for i in (0, 1)]
  ref_seen = json.loads((tmp_path / "ref" / "process_0.json").read_text())
  assert [(s["process_index"], s["process_count"]) for s in seen] == [(0, 2),
                                                                      (1, 2)]
  assert ref_seen["process_count"] == 1
  # Each process read its own half of the global batch, the reference all.
  shards = [s["shards"][0] for s in seen]
  assert [(s["shard_index"], s["num_shards"]) for s in shards] == [(0, 2),
                                                                   (1, 2)]
  assert all(len(s["first_rows"]) == 4 for s in shards)
  assert not set(shards[0]["first_rows"]) & set(shards[1]["first_rows"])
  assert (shards[0]["first_rows"] + shards[1]["first_rows"]
          == ref_seen["shards"][0]["first_rows"])

  # The same parameters: bit-identical replicas across the two processes,
  # and the single-process values up to float reassociation (8 devices
  # there, so sums run in another order).
  p0, p1 = (_params(tmp_path / "rec" / f"sft_params_{i}.npz") for i in (0, 1))
  ref = _params(tmp_path / "ref" / "sft_params_0.npz")
  assert p0.keys() == p1.keys() == ref.keys() and len(p0) > 10
  for key in p0:
    np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
    np.testing.assert_allclose(p0[key], ref[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)

  # One set of metrics (process 0 writes, process 1 only trains), equal to the
  # reference's, evaluation included; the last step really updated.
  run_log = _metrics(tmp_path / "run" / "sft" / "metrics.jsonl")
  ref_log = _metrics(tmp_path / "ref_run" / "sft" / "metrics.jsonl")
  assert [r["step"] for r in run_log] == list(range(NUM_STEPS + 1))
  assert run_log[-1]["update_norm"] > 0
  for got, want in zip(run_log, ref_log):
    for key in want:
      if not key.startswith("timing/"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5,
                                   err_msg=f"step {want['step']} {key}")
  assert "[sft] step" in outputs[0] and "[sft] step" not in outputs[1]
  assert (tmp_path / "run" / "sft" / "checkpoints" / str(NUM_STEPS)).is_dir()


@pytest.mark.slow
def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path):
  """A preempted host's signal is agreed by all hosts: both stop after the
  same step and write one checkpoint there together, each exiting 0.
  (About 30 s: one small program, so it runs in the default suite.)"""
  port = _free_port()
  long_run = 1000
  flags = ("--multihost", f"--gin.sft/loop.LoopConfig.num_steps={long_run}",
           "--gin.sft/loop.LoopConfig.log_every=1",
           "--gin.sft/loop.LoopConfig.eval_every=0")
  procs = [
      _start(tmp_path / "rec", tmp_path / "run",
             _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)), *flags)
      for i in (0, 1)]
  seen = []
  try:
    for line in procs[0].stdout:  # Only process 0 prints the step lines.
      seen.append(line)
      if line.startswith("[sft] step") and " 0/" not in line:
        break
    procs[1].send_signal(15)  # SIGTERM to the other host only.
    rest = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  out0, out1 = "".join(seen) + rest[0], rest[1]
  assert procs[0].returncode == 0, out0[-4000:]
  assert procs[1].returncode == 0, out1[-4000:]
  steps = sorted(int(p.name) for p in
                 (tmp_path / "run" / "sft" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert len(steps) == 1 and 0 < steps[0] < long_run, steps
  stopped = steps[0]
  assert (f"[sft] a signal on another host received: saved step {stopped}"
          in out0), out0[-4000:]
  assert f"[sft] SIGTERM received: saved step {stopped}" in out1, out1[-4000:]
