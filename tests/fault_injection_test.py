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

"""Faults injected into training runs: nothing is lost, nothing is wrong.

* Divergence: a loss that turns NaN at a chosen step
  (tests/testdata/faults.py) stops the stage at that step with the message;
  only finite checkpoints exist and keep-K kept the newest; "skip" rides
  out rare spikes up to max_skipped; through the CLI the exit status is 3
  and the diverged SFT stage never becomes the next stage's reference.
* Damaged checkpoints at the trainer level: resume falls back to the
  previous one, reports and moves the damaged one aside, and ends
  bit-identical to an uninterrupted run.
* Another topology: a run checkpointed on a (4, 2) mesh of 8 devices
  resumes on 4 devices and on 1 with the same global data order and the same
  parameters within float tolerance.
* Signals and kills (the `ipo-md train` command): SIGTERM during an
  evaluation, during a checkpoint write, at start-up and between stages stop
  cleanly (exit 0, a message, no traceback) and the rerun resumes
  bit-identical; SIGKILL at a random moment (often during a checkpoint write:
  one is written every step) then a rerun ends bit-identical, with each step
  once in metrics.jsonl; a second run on the same MODEL_DIR meanwhile is
  refused and the first goes on.

The subprocess runs use conftest's 8 fake devices and share its JAX
compilation cache with the in-process runs, so a program is compiled once.
A soak kills the run more often (one subprocess pair per kill):

    IPO_MD_SOAK=10 python -m pytest tests/fault_injection_test.py -k sigkill

The two-process case of the topology resume (jax.distributed over gloo,
about 90 s of CPU) runs on request:

    IPO_MD_MULTIPROCESS_TEST=1 python -m pytest tests/fault_injection_test.py
"""

import contextlib
import io
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import gin
import jax
import numpy as np
import pytest

from ipo_md import checkpoints
from ipo_md import optim
from ipo_md import partitioning
from ipo_md.checkpoints import verify
from ipo_md.cli import main as cli_main
from ipo_md.data import pipeline as data_pipeline
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import pipeline
import ipo_md_tasks

from tests.testdata import faults

REPO = pathlib.Path(__file__).resolve().parents[1]
FAULTS_GIN = "--gin_file=tests/testdata/gin/micro_faults.gin"
SOAK = int(os.environ.get("IPO_MD_SOAK", "1"))

CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
NET = network.Transformer(CFG)
MODELS = models_lib.Models(policy=NET, reference=NET)
DATA = data_pipeline.DataConfig(task="synthetic_facts_sft", split="validation",
                                kind="sft", batch_size=8, seed=3,
                                feature_lengths={"inputs": 48, "targets": 12},
                                max_examples=32)


def _mesh(data=1, model=1):
  return partitioning.make_mesh(
      partitioning.MeshConfig(data=data, model=model),
      jax.devices()[:data * model])


def _trainer(directory, num_steps, *, nan=(), mesh=None, every=2, keep=5,
             nonfinite="stop", max_skipped=10) -> loop_lib.Trainer:
  """A tiny SFT stage whose loss is NaN at the 1-based steps `nan`."""
  tx = optim.adafactor_t5(1e-2)
  return loop_lib.Trainer(
      name="sft", network=NET, objective=faults.NaNAtSteps(
          models=MODELS, steps=tuple(nan)),
      tx=tx, schedule=optim.make_schedule(base_learning_rate=1e-2),
      mesh=mesh or _mesh(), data=DATA,
      loop=loop_lib.LoopConfig(num_steps=num_steps, log_every=1,
                               nonfinite=nonfinite, max_skipped=max_skipped),
      checkpoint=checkpoints.CheckpointConfig(every=every, keep=keep),
      directory=pathlib.Path(directory))


def _run(trainer):
  try:
    state, last = trainer.run()
  finally:
    trainer.close()
  return jax.device_get(state), last


def _steps_on_disk(directory) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(directory) /
                                      "checkpoints").iterdir()
                if p.name.isdigit())


def _logged_steps(directory) -> list[int]:
  lines = (pathlib.Path(directory) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]


def _assert_same(a, b, what="state"):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) and la, what
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


class _Batches:
  """Records the inputs of every batch the Trainers read."""

  def __init__(self, monkeypatch):
    self.seen: list[np.ndarray] = []
    self.configs: list[data_pipeline.DataConfig] = []
    make = data_pipeline.make_iterator

    def recording(cfg, **kw):
      self.configs.append(cfg)
      return _Recording(make(cfg, **kw), self)

    monkeypatch.setattr(loop_lib.pipeline, "make_iterator", recording)


class _Recording:
  """A BatchIterator that copies the inputs of each batch it yields."""

  def __init__(self, it, batches: _Batches):
    self._it, self._batches = it, batches

  def __next__(self):
    batch = next(self._it)
    self._batches.seen.append(batch["inputs"].copy())
    return batch

  def __getattr__(self, name):
    return getattr(self._it, name)


@pytest.mark.slow
@pytest.mark.skipif(SOAK < 2, reason="two more compilations (~30 s of CPU); "
                    "IPO_MD_SOAK=2 runs it")
def test_resume_from_a_4x2_mesh_onto_4_devices_and_onto_1(tmp_path,
                                                          monkeypatch):
  """Checkpointed after 2 steps on a (4, 2) mesh of 8 devices, resumed to 4
  steps on one device and on (2, 2) (4 devices): the same batches 3 and 4
  as the uninterrupted (4, 2) run, and its parameters within float
  tolerance (sums run in another order on another mesh). The default suite
  has the cheaper test_resume_onto_one_device."""
  batches = _Batches(monkeypatch)
  wide = _mesh(4, 2)
  full, _ = _run(_trainer(tmp_path / "full", 4, mesh=wide, every=0))
  want = batches.seen[:]
  assert len(want) == 4
  _run(_trainer(tmp_path / "split", 2, mesh=wide))
  for name, mesh in (("one", _mesh(1, 1)), ("four", _mesh(2, 2))):
    run = tmp_path / name
    shutil.copytree(tmp_path / "split", run)
    batches.seen.clear()
    trainer = _trainer(run, 4, mesh=mesh)
    kernel = trainer.abstract_state.params["decoder"]["layers_0"]["mlp"][
        "wi_0"]["kernel"]
    assert len(kernel.sharding.device_set) == mesh.size  # Really another.
    state, _ = _run(trainer)
    assert int(state.step) == 4
    _assert_same(batches.seen, want[2:], f"batches 3 and 4 on {name}")
    for a, b in zip(jax.tree_util.tree_leaves(state.params),
                    jax.tree_util.tree_leaves(full.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


# --- `ipo-md train`: signals, kills, concurrent runs, exit status. ----------
#
# In-process runs use conftest's 8 fake devices; signals go to this process
# only while the command's handlers are installed (`_signal`), so a test
# that goes wrong cannot kill pytest.


def _cli(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli_main.main(["train", *argv])
  finally:
    gin.clear_config()
    for register in ipo_md_tasks.REGISTER_FNS:
      register()
  return code, out.getvalue(), err.getvalue()


def _signal(sig=signal.SIGTERM) -> None:
  """Sends `sig` to this process, as a preempted VM or a Ctrl-C would, if
  the command's handlers are installed (else the test fails, not pytest)."""
  from ipo_md.trainer import stopping  # pylint: disable=g-import-not-at-top

  assert stopping.current() is not None, "no stop handler installed"
  os.kill(os.getpid(), sig)


def _saved_state(stage_dir: pathlib.Path, step: int) -> dict:
  """A saved train state as numpy arrays (read with its own shardings: the
  runs compared here all have 8 devices)."""
  import warnings  # pylint: disable=g-import-not-at-top

  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with ocp.PyTreeCheckpointer() as reader:
      tree = reader.restore(stage_dir / "checkpoints" / str(step) / "state")
  return jax.device_get(tree)


def _assert_clean(code, out, err, *, status=0):
  assert code == status, (code, out[-3000:], err[-3000:])
  assert "Traceback" not in out + err, out + err


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> pathlib.Path:
  """The micro SFT job with faults (tests/testdata/gin/micro_faults.gin), 8
  steps uninterrupted, checkpoints 2, 4, 6 and 8: its MODEL_DIR."""
  run = tmp_path_factory.mktemp("cli") / "reference"
  _assert_clean(*_cli([FAULTS_GIN, f"--gin.MODEL_DIR={run}",
                       "--gin.sft/checkpoints.CheckpointConfig.every=2",
                       "--gin.sft/checkpoints.CheckpointConfig.keep=5"]))
  assert _steps_on_disk(run / "sft") == [2, 4, 6, 8]
  return run


THREE_STAGES = "--gin.train_script.train.stages=[%SFT_STAGE, %PM_STAGE, " \
               "%IPO_MD_STAGE]"
EVERY_1 = "--gin.sft/checkpoints.CheckpointConfig.every=1"
EVERY_2 = "--gin.sft/checkpoints.CheckpointConfig.every=2"


def _run_cli(run, *flags, status=0) -> str:
  code, out, err = _cli([FAULTS_GIN, f"--gin.MODEL_DIR={run}", *flags])
  _assert_clean(code, out, err, status=status)
  assert not (run / "ipo_md.lock").exists(), "released on every exit path"
  return out if status == 0 else err


def _assert_as_reference(run, reference, step: int, what: str):
  """Checkpoint `step` of `run` is bit for bit the uninterrupted run's, and
  metrics.jsonl holds each step up to it once."""
  _assert_same(_saved_state(run / "sft", step),
               _saved_state(reference / "sft", step), what)
  assert _logged_steps(run / "sft") == list(range(step + 1)), (
      "each step once in metrics.jsonl")


def test_sigterm_during_an_evaluation_then_during_a_checkpoint_write(
    tmp_path, monkeypatch, cli_reference):
  """SIGTERM while the step-4 evaluation runs: saved step 4, exit 0. The
  rerun resumes there; SIGTERM while step 6's checkpoint is being written
  (asynchronously): it stops after step 6, exit 0, and that checkpoint is
  bit for bit the uninterrupted run's."""
  run = tmp_path / "run"
  evaluations = []

  def hook():
    evaluations.append(1)
    if len(evaluations) == 2:  # At step 4 (the first is at step 0).
      _signal()

  monkeypatch.setattr(faults.ParamNorm, "hook", staticmethod(hook))
  out = _run_cli(run)
  assert (f"[sft] SIGTERM received: saved step 4 to {run / 'sft'}/"
          "checkpoints; rerun the same command to resume.") in out, out
  assert re.search(r"Stopped \(sft interrupted\) after \d+s", out), out
  monkeypatch.undo()

  save = checkpoints.Checkpointer.save

  def save_then_signal(self, step, state, meta):
    save(self, step, state, meta)  # Orbax writes on its own threads now.
    if step == 6:
      _signal()

  monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_signal)
  out = _run_cli(run, EVERY_2)
  assert f"[sft] resumed from {run / 'sft'}/checkpoints/4 " in out, out
  assert "[sft] SIGTERM received: saved step 6 to" in out, out
  _assert_as_reference(run, cli_reference, 6, "stopped twice")


# --- Divergence through the command. -----------------------------------------


def test_nan_at_a_chosen_step_stops_the_run_with_exit_status_3(
    tmp_path, cli_reference):
  """NaN at step 3 of SFT, before the PM and IPO-MD stages (a checkpoint
  every 2 steps, keep 2): exit 3 with the step, the quantity, the last good
  checkpoint and what to try; only finite checkpoints; the later stages
  never start, so the diverged SFT model is nobody's reference. A rerun
  without the fault (say, a lower learning rate) resumes from step 2 and
  ends bit-identical to a run that never diverged: the saved state is the
  last finite one, not a halted one."""
  run = tmp_path / "run"
  err = _run_cli(run, THREE_STAGES, EVERY_2,
                 "--gin.faults.NaNAtSteps.steps=(3,)", status=3)
  assert re.fullmatch(
      r"ipo-md train: stopped: \[sft\] the loss and gradient( and "
      r"parameters)? became non-finite \(NaN or Inf\) at step 3 of 8\. "
      r"Nothing non-finite was saved: the last finite state is checkpoint 2 "
      rf"in {run / 'sft' / 'checkpoints'}, and a rerun resumes from it\. Try "
      r"a lower learning rate \(OptimizerConfig\.learning_rate\), a warm-up, "
      r"or LoopConfig\.nonfinite='skip' to drop rare bad updates\.\n\(The "
      rf"full traceback is in {run / 'logs'}/\S+\.log\.\)\n", err), err
  assert _steps_on_disk(run / "sft") == [2]
  saved = _saved_state(run / "sft", 2)
  assert int(saved["step"]) == 2
  assert int(saved["nonfinite_step"]) == -1, "saved as a plain state"
  for x in jax.tree_util.tree_leaves(saved["params"]):
    assert np.all(np.isfinite(x)), "checkpoint 2"
  assert not (run / "pm").exists() and not (run / "ipo_md").exists()
  out = _run_cli(run, "--gin.sft/loop.LoopConfig.num_steps=4")
  assert f"[sft] resumed from {run / 'sft'}/checkpoints/2 " in out, out
  _assert_as_reference(run, cli_reference, 4, "resumed after the fault")


def test_skip_rides_out_rare_spikes_up_to_max_skipped(tmp_path):
  """"skip" with max_skipped=2 and NaN at steps 2, 4 and 7: 6 steps drop
  the updates of steps 2 and 4 (the parameters stay as they were) and
  finish; continued to 8 steps, the third one stops the run (exit 3)."""
  run = tmp_path / "run"
  skip = ("--gin.sft/loop.LoopConfig.nonfinite='skip'",
          "--gin.sft/loop.LoopConfig.max_skipped=2",
          "--gin.faults.NaNAtSteps.steps=(2, 4, 7)",
          "--gin.sft/checkpoints.CheckpointConfig.keep=10")
  _run_cli(run, *skip, EVERY_1, "--gin.sft/loop.LoopConfig.num_steps=6")
  saved = {s: _saved_state(run / "sft", s) for s in range(1, 7)}
  _assert_same(saved[2]["params"], saved[1]["params"], "step 2 was dropped")
  _assert_same(saved[4]["params"], saved[3]["params"], "step 4 was dropped")
  for s in (3, 5, 6):
    assert not np.array_equal(
        saved[s]["params"]["decoder"]["decoder_norm"]["scale"],
        saved[s - 1]["params"]["decoder"]["decoder_norm"]["scale"]), s
  assert [int(saved[s]["skipped"]) for s in saved] == [0, 1, 1, 2, 2, 2]
  logged = [json.loads(line) for line in
            (run / "sft" / "metrics.jsonl").read_text().splitlines()][1:]
  assert [r["guard/nonfinite"] for r in logged] == [0, 1, 0, 1, 0, 0]
  assert logged[-1]["guard/skipped"] == 2
  err = _run_cli(run, *skip, status=3)
  assert re.search(r"at step 7 of 8 \(2 earlier non-finite updates were "
                   r"skipped\)\. Nothing non-finite was saved: the last "
                   r"finite state is checkpoint 6", err), err


# --- Damaged checkpoints at the trainer level, through the command. ---------


def _first_four_steps(reference, run) -> pathlib.Path:
  """A copy of the reference as it was after 4 steps: checkpoints 2 and 4,
  metrics of steps 0-4. Returns its checkpoints folder."""
  shutil.copytree(reference, run)
  folder = run / "sft" / "checkpoints"
  for step in ("6", "8"):
    shutil.rmtree(folder / step)
  log = run / "sft" / "metrics.jsonl"
  log.write_text("".join(line + "\n" for line in
                         log.read_text().splitlines()[:5]))
  return folder


def _first_tensor(step_dir: pathlib.Path) -> pathlib.Path:
  return sorted((step_dir / "state" / "d").iterdir())[0]


def _truncate(d):
  path = _first_tensor(d / "4")
  path.write_bytes(path.read_bytes()[:-7])


def _flip_a_byte(d):
  path = _first_tensor(d / "4")
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x55
  path.write_bytes(bytes(data))


def _garble_data_position(d):
  path = d / "4" / "meta" / "metadata"
  path.write_text(path.read_text().replace('"data_position": 4',
                                           '"data_position": "four"'))


# (id, damage of a checkpoints folder holding 2 and 4, the step the rerun
# resumes from, the reason reported.)
DAMAGE = [
    ("truncated_tensor", _truncate, 2, r"4: state/d/\w+ has \d+ bytes, its "
     r"ipo_md_manifest\.json says \d+ \(truncated\)"),
    ("overwritten_tensor", _flip_a_byte, 2, r"4: state/d/\w+ differs from its "
     r"ipo_md_manifest\.json \(same size, other SHA-256"),
    ("missing_metadata_file",
     lambda d: (d / "4" / "state" / "_METADATA").unlink(), 2,
     r"4: state/_METADATA is missing"),
    ("garbled_data_position", _garble_data_position, 2,
     r"4: meta/metadata (has \d+ bytes|differs)"),
    ("stray_empty_step_folder", lambda d: (d / "6").mkdir(), 4,
     r"6: is an empty folder"),
]


# The default suite tries one damage of the tensors and one stray folder; a
# soak (IPO_MD_SOAK >= 2) all of them (tests/checkpoints_checkpointer_test.py
# covers each at the Checkpointer level in the default suite).
DEFAULT_DAMAGE = ("truncated_tensor", "stray_empty_step_folder")


@pytest.mark.parametrize(
    "damage,resumes_from,reason",
    [d[1:] for d in DAMAGE if SOAK > 1 or d[0] in DEFAULT_DAMAGE],
    ids=[d[0] for d in DAMAGE if SOAK > 1 or d[0] in DEFAULT_DAMAGE])
def test_a_damaged_checkpoint_falls_back_and_ends_bit_identical(
    tmp_path, cli_reference, damage, resumes_from, reason):
  run = tmp_path / "run"
  folder = _first_four_steps(cli_reference, run)
  damage(folder)
  out = _run_cli(run, "--gin.sft/loop.LoopConfig.num_steps=6")
  assert re.search(rf"\[sft\] {folder}/{reason}.*; moved to "
                   rf"{folder / 'damaged'}/", out), out
  assert (f"[sft] resumed from {folder}/{resumes_from} (data position "
          f"{resumes_from}).") in out, out
  (moved,) = (folder / "damaged").iterdir()
  assert (moved / verify.REASON_FILE).exists(), "moved aside, not deleted"
  _assert_as_reference(run, cli_reference, 6, "after the fallback")


def test_no_checkpoint_restores_is_one_error_naming_each(tmp_path,
                                                         cli_reference):
  run = tmp_path / "run"
  folder = _first_four_steps(cli_reference, run)
  for step in ("2", "4"):
    _first_tensor(folder / step).write_bytes(b"")
  err = _run_cli(run, status=2)
  assert re.search(rf"No checkpoint in {folder} verifies and restores:\n  "
                   rf"{folder}/4: .*\n  {folder}/2: ", err), err
  assert "nothing was deleted" in err and "Rerun the same command" in err
  assert sorted(p.name.split("-")[0] for p in
                (folder / "damaged").iterdir()) == ["2", "4"]


@pytest.mark.parametrize("sig,where", [
    (signal.SIGINT, "tensorflow"), (signal.SIGTERM, "plan")])
def test_a_signal_during_start_up(tmp_path, monkeypatch, sig, where):
  """During TensorFlow's import (the first seconds) or while the run is
  planned: a message and exit 0, no traceback, nothing trained or locked."""
  if where == "tensorflow":
    target, name = cli_main, "_import_tensorflow_quietly"
  else:
    target, name = pipeline, "plan"
  original = getattr(target, name)

  def interrupted(*args, **kwargs):
    _signal(sig)
    return original(*args, **kwargs)

  monkeypatch.setattr(target, name, interrupted)
  run = tmp_path / "run"
  code, out, err = _cli([FAULTS_GIN, f"--gin.MODEL_DIR={run}"])
  _assert_clean(code, out, err)
  assert (f"ipo-md train: {signal.Signals(sig).name} received during "
          "start-up; stopped before any stage started") in out, out
  assert "Rerun the same command to start." in out, out
  assert not (run / "sft").exists() and not (run / "ipo_md.lock").exists()


def test_sigterm_between_stages(tmp_path, monkeypatch):
  """Just after `[sft] done`: the PM stage does not start, exit 0; the
  rerun finds SFT finished."""
  close = loop_lib.Trainer.close

  def close_then_signal(self):
    close(self)
    if self.name == "sft":
      _signal()

  monkeypatch.setattr(loop_lib.Trainer, "close", close_then_signal)
  run = tmp_path / "run"
  steps = "--gin.sft/loop.LoopConfig.num_steps=2"
  code, out, err = _cli([FAULTS_GIN, f"--gin.MODEL_DIR={run}", steps,
                         "--gin.train_script.train.stages=[%SFT_STAGE, "
                         "%PM_STAGE]"])
  _assert_clean(code, out, err)
  assert "[sft] done: 2 steps" in out, out
  assert ("[pm] SIGTERM received before this stage started; stopping. Rerun "
          "the same command to resume.") in out, out
  assert not (run / "pm").exists()
  monkeypatch.undo()
  code, out, err = _cli([FAULTS_GIN, f"--gin.MODEL_DIR={run}", steps])
  _assert_clean(code, out, err)
  assert f"[sft] already finished in {run / 'sft'}; skipping." in out, out


# --- SIGKILL and a second run, in subprocesses. -------------------------------


def _env() -> dict:
  """conftest's JAX settings and compilation cache, for subprocesses (the
  program the in-process reference compiled is read back, not rebuilt)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID"))}
  env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             JAX_NUMPY_RANK_PROMOTION="raise", TF_CPP_MIN_LOG_LEVEL="3",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
  return env


def _command(run, *flags) -> list[str]:
  return [sys.executable, "-m", "ipo_md.cli.main", "train", FAULTS_GIN,
          f"--gin.MODEL_DIR={run}", *flags]


class _Lines:
  """A subprocess's output lines, read on a thread (to wait with a
  deadline)."""

  def __init__(self, proc):
    self.lines: list[str] = []
    self._new = threading.Condition()
    threading.Thread(target=self._read, args=(proc,), daemon=True).start()

  def _read(self, proc):
    for line in proc.stdout:
      with self._new:
        self.lines.append(line)
        self._new.notify_all()
    with self._new:
      self.lines.append(None)
      self._new.notify_all()

  def wait_for(self, pattern: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with self._new:
      while True:
        if any(line is None for line in self.lines):
          raise AssertionError(f"exited before {pattern!r}:\n{self.text()}")
        if any(re.search(pattern, line) for line in self.lines):
          return
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} within {timeout}s:\n{self.text()}"
        self._new.wait(left)

  def text(self) -> str:
    return "".join(line for line in self.lines if line)[-6000:]


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(SOAK))
def test_sigkill_at_a_random_moment_then_resume(tmp_path, cli_reference,
                                                trial):
  """kill -9 after a random step (one checkpoint is written per step, so it
  often lands in a write), with a second run on the same MODEL_DIR refused
  meanwhile; the rerun breaks the dead run's lock, resumes and ends
  bit-identical to the uninterrupted run, each step once in metrics.jsonl.
  (The killed run is a subprocess; the rerun runs here, on the same 8
  devices: the same program gives the same bits in either.)"""
  rnd = random.Random(trial)
  run = tmp_path / "run"
  victim = subprocess.Popen(_command(run, EVERY_1), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
  try:
    lines = _Lines(victim)
    lines.wait_for(r"^\[sft\] step +1/8")
    code, out, err = _cli([FAULTS_GIN, f"--gin.MODEL_DIR={run}"])
    assert code == 2, (out, err)
    assert re.search(rf"MODEL_DIR {run} is in use by another run: PID "
                     rf"{victim.pid} on host .*It is still running on this "
                     r"host", err), err
    lines.wait_for(rf"^\[sft\] step +{rnd.randint(2, 6)}/8")
    time.sleep(rnd.uniform(0.0, 0.4))
    assert victim.poll() is None, lines.text()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
  finally:
    if victim.poll() is None:
      victim.kill()
      victim.wait()
  assert (run / "ipo_md.lock").exists(), "a killed run leaves its lock"
  # The rerun, in this process (the same program on the same 8 devices).
  out = _run_cli(run)
  assert f"Breaking the stale lock {run / 'ipo_md.lock'}" in out, out
  assert "[sft] resumed from" in out, out
  assert "[sft] done: 8 steps" in out, out
  _assert_as_reference(run, cli_reference, 8, "killed and resumed")


def _fewer_devices(monkeypatch, count: int) -> None:
  """Makes `ipo-md train` in this process build its mesh from the first
  `count` of conftest's 8 devices, as a run on a smaller machine would."""
  make = partitioning.make_mesh
  monkeypatch.setattr(partitioning, "make_mesh",
                      lambda cfg, devices=None: make(cfg,
                                                     jax.devices()[:count]))


# (id, devices, MeshConfig.model) of the resumed run; the default suite
# resumes on one device, a soak on a (2, 2) mesh of 4 devices too.
FEWER = [("one_device", 1, 1)] + ([("four_devices_2x2", 4, 2)] if SOAK > 1
                                  else [])


@pytest.mark.slow
@pytest.mark.parametrize("count,model", [f[1:] for f in FEWER],
                         ids=[f[0] for f in FEWER])
def test_resume_onto_fewer_devices(tmp_path, monkeypatch, cli_reference,
                                   count, model):
  """The reference's checkpoint 4, written on 8 devices (an (8, 1) mesh),
  resumed to 6 steps on fewer devices: batches 5 and 6 hold the rows of
  the uninterrupted run's, and the parameters equal its within float
  tolerance (sums run in another order)."""
  run = tmp_path / "run"
  _first_four_steps(cli_reference, run)
  batches = _Batches(monkeypatch)
  _fewer_devices(monkeypatch, count)
  out = _run_cli(run, "--gin.sft/loop.LoopConfig.num_steps=6",
                 f"--gin.partitioning.MeshConfig.model={model}")
  assert f"mesh {{'data': {count // model}, 'model': {model}}}" in out, out
  assert (f"[sft] resumed from {run / 'sft' / 'checkpoints'}/4 (data "
          "position 4).") in out, out
  (cfg,) = batches.configs
  seen = list(batches.seen)  # The reference iterator below records too.
  it = data_pipeline.make_iterator(cfg)
  want = [next(it)["inputs"] for _ in range(6)][4:]
  _assert_same(seen, want, "batches 5 and 6")
  got = _saved_state(run / "sft", 6)
  want = _saved_state(cli_reference / "sft", 6)
  assert int(got["step"]) == 6
  for a, b in zip(jax.tree_util.tree_leaves(got["params"]),
                  jax.tree_util.tree_leaves(want["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert _logged_steps(run / "sft") == list(range(7))


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IPO_MD_MULTIPROCESS_TEST") != "1",
                    reason="two JAX processes (~60 s of CPU); run with "
                    "IPO_MD_MULTIPROCESS_TEST=1")
def test_a_two_process_run_resumed_by_one_process(tmp_path, monkeypatch,
                                                  cli_reference):
  """4 steps by two processes (jax.distributed over gloo, one device each:
  a (2, 1) mesh, each process reading half of every batch), then resumed to
  6 steps by this one process on 8 devices: batches 5 and 6 hold the rows
  of the uninterrupted run's, the parameters equal its within float
  tolerance."""
  run, port = tmp_path / "run", _free_port()
  procs = []
  for i in (0, 1):
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen(
        _command(run, "--multihost", EVERY_2,
                 "--gin.sft/loop.LoopConfig.num_steps=4"),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  try:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i}:\n{out[-4000:]}"
  assert "mesh {'data': 2, 'model': 1}" in outputs[0], outputs[0]
  assert _steps_on_disk(run / "sft") == [2, 4]
  batches = _Batches(monkeypatch)
  out = _run_cli(run, "--gin.sft/loop.LoopConfig.num_steps=6")
  assert "mesh {'data': 8, 'model': 1}" in out, out
  assert (f"[sft] resumed from {run / 'sft' / 'checkpoints'}/4 (data "
          "position 4).") in out, out
  (cfg,) = batches.configs
  seen = list(batches.seen)  # The reference iterator below records too.
  it = data_pipeline.make_iterator(cfg)
  _assert_same(seen, [next(it)["inputs"] for _ in range(6)][4:],
               "batches 5 and 6")
  got = _saved_state(run / "sft", 6)["params"]
  want = _saved_state(cli_reference / "sft", 6)["params"]
  for a, b in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert _logged_steps(run / "sft") == list(range(7))
