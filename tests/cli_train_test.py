"""`ipo-md train` as a user meets it: mistakes fail fast with a message that
names the thing and the fix, and the micro job (tests/testdata/gin/micro.gin)
trains, stops cleanly on SIGTERM, resumes and skips finished stages.

The in-process tests use conftest's 8 fake CPU devices; the subprocess runs use
one device, `jax_disable_most_optimizations` and a compilation cache shared by
the runs of one test (a resume then compiles nothing twice).
"""

import json
import math
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import gin
import pytest

from ipo_md.cli import main as cli_main
from ipo_md.cli import train as train_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
MICRO = "tests/testdata/gin/micro.gin"
# Time allowed to a mistake that must be caught before any model is built.
FAST_S = 30


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _fails(argv, error=SystemExit):
  """Runs `ipo-md train argv` in-process; returns (message, seconds)."""
  start = time.monotonic()
  with pytest.raises(error) as info:
    train_cli.main(argv)
  return str(info.value), time.monotonic() - start


def _env(cache_dir: pathlib.Path | None = None) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID"))}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _train_cmd(model_dir, *flags):
  return [sys.executable, "-m", "ipo_md.cli.main", "train",
          f"--gin_file={MICRO}", f"--gin.MODEL_DIR={model_dir}", *flags]


# --- Mistakes: one clear message, before any long computation. -------------


@pytest.mark.parametrize("flag,expected", [
    ("--gin_file=tests/testdata/gin/mikro.gin",
     r"gin file 'tests/testdata/gin/mikro.gin' not found .*Check the "
     r"spelling, or add its folder with --gin_search_paths"),
    ("--gin.losses.ipo_loss.taux=1",
     r"Configurable 'losses.ipo_loss' doesn't have a parameter named 'taux'"
     r"(.|\n)*Check the names in your gin files and --gin.\* bindings"),
    ("--gin.losses.ipo_los.tau=1",
     r"No configurable matching 'losses.ipo_los'(.|\n)*Check the names"),
    ("--profile_steps=5",
     r"--profile_steps='5' must be A:B with integers 0 <= A <= B .*e\.g\. "
     r"--profile_steps=10:12"),
])
def test_gin_mistakes_name_the_thing_and_the_fix(tmp_path, flag, expected):
  model_dir = tmp_path / "run"
  files = [] if flag.startswith("--gin_file") else [f"--gin_file={MICRO}"]
  message, seconds = _fails([*files, flag, f"--gin.MODEL_DIR={model_dir}"])
  assert re.search(expected, message), message
  assert seconds < FAST_S
  assert not model_dir.exists(), "nothing may be written before the check"


def test_missing_model_dir_says_how_to_set_it():
  message, seconds = _fails([f"--gin_file={MICRO}"])
  assert "MODEL_DIR is not set" in message, message
  assert "--gin.MODEL_DIR=" in message, message
  assert seconds < FAST_S


def test_unwritable_model_dir(tmp_path):
  # Tests run as root, which chmod does not stop: a path under a file does.
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  message, seconds = _fails([f"--gin_file={MICRO}",
                             f"--gin.MODEL_DIR={blocker / 'run'}"])
  assert f"MODEL_DIR='{blocker / 'run'}' is not writable" in message, message
  assert "--gin.MODEL_DIR=" in message, message
  assert seconds < FAST_S
  assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("stage", ["sft", "pm", "ipo_md"])
def test_batch_the_data_axis_does_not_divide_fails_before_training(
    tmp_path, stage):
  """8 devices, batch 6: caught for every stage before the first one trains
  (the second stage's batch must not wait for the first stage's hours)."""
  model_dir = tmp_path / "run"
  message, seconds = _fails(
      [f"--gin_file={MICRO}", f"--gin.MODEL_DIR={model_dir}",
       f"--gin.{stage}/data_pipeline.DataConfig.batch_size=6"], ValueError)
  assert (f"stage '{stage}': DataConfig.batch_size=6 must be divisible by the "
          "data mesh size 8; set it to a multiple of 8") in message, message
  assert seconds < FAST_S
  assert not (model_dir / "sft").exists(), "no stage may start"


# --- Commands. ---------------------------------------------------------------


def test_usage_and_the_t5x_alias(capsys):
  assert cli_main.main([]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: ipo-md <command> [flags]")
  assert re.search(r"^  train +Train a policy", out, re.M)
  bin_dir = pathlib.Path(sys.executable).parent
  if not (bin_dir / "t5x").exists():
    pytest.skip("console scripts not installed beside this Python")
  env = _env()
  usage = subprocess.run([str(bin_dir / "ipo-md")], capture_output=True,
                         text=True, env=env, timeout=120, check=False)
  assert usage.returncode == 0, usage.stderr
  assert usage.stdout == out
  helped = subprocess.run([str(bin_dir / "t5x"), "train", "--help"],
                          capture_output=True, text=True, env=env,
                          timeout=120, check=False)
  assert helped.returncode == 0, helped.stderr
  for flag in ("--gin_file", "--gin_bindings", "--gin_search_paths",
               "--dry_run", "--multihost"):
    assert flag in helped.stdout, helped.stdout


# --- The micro job end to end. -----------------------------------------------


class _Output:
  """A subprocess's output lines, read on a thread so that the test can wait
  for one with a deadline."""

  def __init__(self, proc: subprocess.Popen):
    self.lines: list[str] = []
    self.done = threading.Event()  # Set when the output has ended.
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, args=(proc,), daemon=True).start()

  def _read(self, proc):
    for line in proc.stdout:
      self.lines.append(line)
      self._queue.put(line)
    self._queue.put(None)
    self.done.set()

  def wait_for(self, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
      try:
        line = self._queue.get(timeout=left)
      except queue.Empty:
        break
      if line is None:
        raise AssertionError(f"exited before {pattern!r}:\n{self.text()}")
      if match := re.search(pattern, line):
        return match
    raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text()}")

  def text(self) -> str:
    return "".join(self.lines)[-6000:]


def _steps(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _checkpoint_steps(stage_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (stage_dir / "checkpoints").iterdir()
                if p.name.isdigit())


@pytest.mark.slow
def test_micro_job_sigterm_resume_outputs_and_rerun(tmp_path, capsys):
  model_dir, env = tmp_path / "run", _env(tmp_path / "jax_cache")
  long_run = 1000

  # 1. SIGTERM once the IPO-MD stage has logged a step: it saves and exits 0.
  steps_flag = f"--gin.ipo_md/loop.LoopConfig.num_steps={long_run}"
  with subprocess.Popen(
      _train_cmd(model_dir, steps_flag),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) as proc:
    output = _Output(proc)
    try:
      output.wait_for(rf"^\[ipo_md\] step +[1-9]\d*/{long_run}\b",
                      timeout=400)
      proc.send_signal(signal.SIGTERM)
      assert proc.wait(timeout=120) == 0, output.text()
      output.done.wait(timeout=10)
    finally:
      if proc.poll() is None:
        proc.kill()
  stop = re.search(r"\[ipo_md\] SIGTERM received: saved step (\d+) to "
                   r"(\S+); rerun the same command to resume\.", output.text())
  assert stop, output.text()
  stopped_at = int(stop.group(1))
  assert 0 < stopped_at < long_run
  assert _checkpoint_steps(model_dir / "ipo_md") == [stopped_at]
  assert _checkpoint_steps(model_dir / "sft") == [3]
  assert _checkpoint_steps(model_dir / "pm") == [2]

  # 2. Rerun (with fewer steps): SFT and the PM are skipped, IPO-MD resumes
  # and finishes, with a profiler trace of its two steps.
  final = stopped_at + 2
  resumed = subprocess.run(
      _train_cmd(model_dir, f"--gin.ipo_md/loop.LoopConfig.num_steps={final}",
                 f"--profile_steps={stopped_at + 1}:{final}"),
      cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
      check=False)
  out = resumed.stdout
  assert resumed.returncode == 0, out + resumed.stderr[-4000:]
  assert f"[sft] already finished in {model_dir / 'sft'}; skipping." in out
  assert f"[pm] already finished in {model_dir / 'pm'}; skipping." in out
  assert (f"[ipo_md] resumed from {model_dir / 'ipo_md' / 'checkpoints'}/"
          f"{stopped_at} (data position {stopped_at}).") in out, out
  assert f"[ipo_md] done: {final} steps" in out, out
  profile = model_dir / "ipo_md" / "profile"
  assert (f"[ipo_md] profiler trace of steps {stopped_at + 1}-{final}: "
          f"{profile}") in out, out
  assert list(profile.glob("plugins/profile/*/*.xplane.pb")), "no trace"
  for stage in ("sft", "pm", "ipo_md"):
    assert f"checkpoints {model_dir / stage / 'checkpoints'}" in out, out
    assert f"metrics     {model_dir / stage / 'metrics.jsonl'}" in out, out
    assert f"TensorBoard {model_dir / stage / 'tensorboard'}" in out, out
  assert f"operative config: {model_dir / 'config.gin'}" in out, out
  assert "final eval  {" in out and "'eval/win_rate_vs_ref/gold'" in out, out
  assert "'eval/win_rate_vs_ref/pm'" in out, out

  # Outputs: the operative config, metrics of every step once, event files,
  # checkpoints of both stages.
  config = (model_dir / "config.gin").read_text()
  assert "losses.ipo_loss.tau = 0.05" in config, config
  assert f"ipo_md/loop.LoopConfig.num_steps = {final}" in config, config
  sft_log = _steps(model_dir / "sft" / "metrics.jsonl")
  assert [r["step"] for r in sft_log] == [0, 1, 2, 3]
  ipo_log = _steps(model_dir / "ipo_md" / "metrics.jsonl")
  assert [r["step"] for r in ipo_log] == list(range(final + 1)), (
      "each step logged once across the stop and the resume")
  for record in sft_log[1:] + ipo_log[1:]:
    assert math.isfinite(record["loss"]), record
  for record in (ipo_log[0], ipo_log[-1]):
    for judge in ("gold", "pm"):
      assert 0.0 <= record[f"eval/win_rate_vs_ref/{judge}"] <= 1.0, record
  pm_log = _steps(model_dir / "pm" / "metrics.jsonl")
  assert [r["step"] for r in pm_log] == [0, 1, 2]
  for key in ("eval/accuracy", "eval/log_loss", "eval/ece",
              "eval/gold_agreement", "eval/gold_accuracy",
              "eval/gold_log_loss"):
    assert math.isfinite(pm_log[-1][key]), pm_log[-1]
  assert (model_dir / "pm" / "reliability.png").stat().st_size > 0
  for stage in ("sft", "pm", "ipo_md"):
    events = list((model_dir / stage / "tensorboard").glob("events.out.*"))
    assert events and all(e.stat().st_size > 0 for e in events), stage
  assert _checkpoint_steps(model_dir / "sft") == [3]
  assert _checkpoint_steps(model_dir / "ipo_md") == [final]

  # 3. The same command again skips both stages at once (in-process, on
  # conftest's 8 devices: the checkpoints restore onto another mesh).
  start = time.monotonic()
  assert train_cli.main([
      f"--gin_file={MICRO}", f"--gin.MODEL_DIR={model_dir}",
      f"--gin.ipo_md/loop.LoopConfig.num_steps={final}"]) == 0
  assert time.monotonic() - start < FAST_S
  out = capsys.readouterr().out
  for stage in ("sft", "pm", "ipo_md"):
    assert f"[{stage}] already finished in {model_dir / stage}" in out, out
  assert not re.search(r"\] step +\d+/", out), "nothing may train"
  assert len(_steps(model_dir / "ipo_md" / "metrics.jsonl")) == final + 1

  # 4. Another model size in the same MODEL_DIR: a clear error, no training.
  gin.clear_config()
  message, seconds = _fails(
      [f"--gin_file={MICRO}", f"--gin.MODEL_DIR={model_dir}",
       "--gin.config.t5_1_1.mlp_dim=256"], ValueError)
  assert (f"The checkpoint {model_dir / 'sft' / 'checkpoints' / '3'} was "
          "written by another model") in message, message
  assert "{'mlp_dim': (128, 256)}" in message, message
  assert "Use a fresh MODEL_DIR" in message, message
  assert seconds < FAST_S
  assert _checkpoint_steps(model_dir / "ipo_md") == [final]
