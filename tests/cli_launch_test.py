"""launch/*.sh: they parse, print usage, assemble the `ipo-md train` flags
they document, and tpu_pod.sh's --preemptible loop reruns until the run has
finished (against a fake `gcloud` that plays preemptions and failures)."""

import os
import pathlib
import shlex
import subprocess
import sys
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ("local_cpu.sh", "gpu_single.sh", "gpu_multihost.sh", "tpu_pod.sh")


def _run(script, *args, env=None, cwd=None):
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(["bash", str(LAUNCH / script), *args],
                        capture_output=True, text=True, env=full_env,
                        cwd=cwd or REPO, timeout=300, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_parses_and_prints_usage(script):
  path = LAUNCH / script
  assert os.access(path, os.X_OK), f"{script} is not executable"
  text = path.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in text
  parsed = subprocess.run(["bash", "-n", str(path)], capture_output=True,
                          text=True, check=False)
  assert parsed.returncode == 0, parsed.stderr
  missing = _run(script)
  assert missing.returncode == 2
  assert missing.stderr.startswith(f"usage: launch/{script}"), missing.stderr
  helped = _run(script, "--help")
  assert helped.returncode == 0
  assert helped.stdout == missing.stderr


def _printed(result) -> list[str]:
  assert result.returncode == 0, result.stderr
  return shlex.split(result.stdout)


def test_single_host_scripts_assemble_the_cli_flags():
  env = {"PRINT_ONLY": "1", "PYTHON": "/opt/py"}
  assert _printed(_run("local_cpu.sh", "/runs/a b", "--gin.x=1",
                       env=env)) == [
      "env", "JAX_PLATFORMS=cpu", "/opt/py", "-m", "ipo_md.cli.main",
      "train", "--gin_file=ipo_md_tiny.gin", "--gin.MODEL_DIR=/runs/a b",
      "--gin.x=1"]
  # An unset (or empty) JAX_PLATFORMS means cuda: no silent CPU fall back.
  env = {**env, "GIN_FILE": "ipo_md_large.gin", "GPU": "3",
         "JAX_PLATFORMS": ""}
  assert _printed(_run("gpu_single.sh", "/runs/b", env=env)) == [
      "env", "JAX_PLATFORMS=cuda", "CUDA_VISIBLE_DEVICES=3", "/opt/py", "-m",
      "ipo_md.cli.main", "train", "--gin_file=ipo_md_large.gin",
      "--gin.MODEL_DIR=/runs/b"]


def test_gpu_multihost_exports_what_multihost_reads():
  env = {"PRINT_ONLY": "1", "JAX_PLATFORMS": ""}
  assert _printed(_run("gpu_multihost.sh", "10.0.0.2:1234", "4", "3",
                       "/shared/run", "--gin.y=2", env=env)) == [
      "env", "JAX_COORDINATOR_ADDRESS=10.0.0.2:1234", "JAX_NUM_PROCESSES=4",
      "JAX_PROCESS_ID=3", "JAX_PLATFORMS=cuda", "python3", "-m",
      "ipo_md.cli.main", "train", "--multihost",
      "--gin_file=ipo_md_tiny.gin", "--gin.MODEL_DIR=/shared/run",
      "--gin.y=2"]
  # The names are the ones `ipo-md train --multihost` passes on.
  train_py = (REPO / "ipo_md" / "cli" / "train.py").read_text()
  assert '"JAX_NUM_PROCESSES": "num_processes"' in train_py
  assert '"JAX_PROCESS_ID": "process_id"' in train_py
  bad = _run("gpu_multihost.sh", "10.0.0.2:1234", "4", "4", "/shared/run")
  assert bad.returncode == 2
  assert "PROCESS_ID=4 in [0, NUM_PROCESSES)" in bad.stderr
  bad = _run("gpu_multihost.sh", "10.0.0.2", "4", "0", "/shared/run")
  assert bad.returncode == 2 and "must be host:port" in bad.stderr


@pytest.mark.slow
def test_local_cpu_runs_the_cli(tmp_path):
  """The real command, built abstractly (--dry_run): the flags the script
  assembles are ones the CLI accepts, from any folder."""
  result = _run("local_cpu.sh", str(tmp_path / "run"), "--dry_run",
                env={"PYTHON": sys.executable,
                     "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                     "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  # gin/ipo_md_tiny.gin: T5 1.1 tiny with the synthetic 64-piece vocabulary.
  assert "[sft] trains the policy (from initial): 0.2M parameters" in result.stdout, result.stdout
  assert "[ipo_md] trains the policy (from sft): 0.2M parameters" in result.stdout, result.stdout
  assert not (tmp_path / "run").exists(), "a dry run writes nothing"


# The fake gcloud logs each call (one shell-quoted line) and, for the trainer,
# plays the next outcome of FAKE_OUTCOMES: finished, stopped (the trainer's
# SIGTERM message, exit 0) or lost (ssh dropped, exit 255).
_FAKE_GCLOUD = r"""#!/usr/bin/env bash
printf '%q ' "$@" >> "$FAKE_LOG"; echo >> "$FAKE_LOG"
next() { local v; v=$(head -n1 "$1"); sed -i 1d "$1"; echo "$v"; }
case "$*" in
  *" describe "*) next "$FAKE_STATES" ;;
  *" scp "*) cp "$5" "$FAKE_ARCHIVE" ;;
  *"ipo_md.cli.main train"*)
    case $(next "$FAKE_OUTCOMES") in
      finished) echo "[ipo_md] done: 10 steps in 5s." ;;
      stopped) echo "[ipo_md] SIGTERM received: saved step 7 to /x;" \
                 "rerun the same command to resume." ;;
      *) echo "Connection closed by remote host" >&2; exit 255 ;;
    esac ;;
esac
"""


def _fake_gcloud(tmp_path, outcomes, states=()):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(_FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "outcomes").write_text("".join(f"{o}\n" for o in outcomes))
  (tmp_path / "states").write_text("".join(f"{s}\n" for s in states))
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}",
          "FAKE_LOG": str(tmp_path / "log"),
          "FAKE_OUTCOMES": str(tmp_path / "outcomes"),
          "FAKE_STATES": str(tmp_path / "states"),
          "FAKE_ARCHIVE": str(tmp_path / "shipped.tar.gz"),
          "RETRY_SLEEP": "0"}


def _calls(tmp_path) -> list[list[str]]:
  return [shlex.split(line)
          for line in (tmp_path / "log").read_text().splitlines()]


def _remote(call) -> list[str]:
  (command,) = [a[len("--command="):] for a in call
                if a.startswith("--command=")]
  return shlex.split(command)


needs_git = pytest.mark.skipif(not (REPO / ".git").exists(),
                               reason="tpu_pod.sh ships `git archive HEAD`")


@needs_git
def test_tpu_pod_preemptible_loop_reruns_until_finished(tmp_path):
  env = _fake_gcloud(tmp_path, ["stopped", "lost", "finished"],
                     states=["PREEMPTED", "READY", "READY"])
  env.update(ACCELERATOR_TYPE="v4-32", RUNTIME_VERSION="tpu-ubuntu2204-base",
             PROJECT="proj")
  result = _run("tpu_pod.sh", "--preemptible", "my-pod", "us-central2-b",
                "/mnt/shared/run", "--gin.losses.ipo_loss.tau=0.5", env=env)
  assert result.returncode == 0, result.stderr
  assert "finished after 3 attempt(s)" in result.stderr
  calls = _calls(tmp_path)
  verbs = [c[3] for c in calls]
  # A preempted slice is recreated as Spot, then each attempt installs and
  # trains on every worker.
  assert verbs == ["describe", "delete", "create", "scp", "ssh", "ssh",
                   "describe", "scp", "ssh", "ssh",
                   "describe", "scp", "ssh", "ssh"]
  assert "--spot" in calls[2] and "--accelerator-type=v4-32" in calls[2]
  for call in calls:
    assert call[:3] == ["compute", "tpus", "tpu-vm"]
    assert "--zone=us-central2-b" in call and "--project=proj" in call
    if call[3] in ("scp", "ssh"):
      assert "--worker=all" in call
  install, train = _remote(calls[4]), _remote(calls[5])
  assert "pip" in install and "jax[tpu]" in install
  assert train == [
      "cd", "~/ipo-md", "&&", "python3", "-m", "ipo_md.cli.main", "train",
      "--multihost", "--gin_file=ipo_md_tiny.gin",
      "--gin.MODEL_DIR=/mnt/shared/run", "--gin.losses.ipo_loss.tau=0.5"]
  assert all(_remote(calls[i]) == train for i in (9, 13)), "same command"
  with tarfile.open(tmp_path / "shipped.tar.gz") as shipped:
    names = shipped.getnames()
  assert "setup.py" in names and "ipo_md/cli/train.py" in names


@needs_git
def test_tpu_pod_without_preemptible_runs_once(tmp_path):
  env = _fake_gcloud(tmp_path, ["stopped", "finished"])
  result = _run("tpu_pod.sh", "my-pod", "z", "/mnt/run", env=env)
  assert result.returncode == 3
  assert "rerun this script to resume" in result.stderr
  assert [c[3] for c in _calls(tmp_path)] == ["scp", "ssh", "ssh"]


@needs_git
def test_tpu_pod_gives_up_after_max_attempts(tmp_path):
  env = _fake_gcloud(tmp_path, ["lost", "lost", "finished"])
  env["MAX_ATTEMPTS"] = "2"
  result = _run("tpu_pod.sh", "--preemptible", "my-pod", "z", "/mnt/run",
                env=env)
  assert result.returncode == 1
  assert "giving up after 2 attempts (last status 255)" in result.stderr
  assert [c[3] for c in _calls(tmp_path)].count("ssh") == 4


def test_tpu_pod_wants_a_shared_absolute_model_dir():
  result = _run("tpu_pod.sh", "my-pod", "z", "runs/relative")
  assert result.returncode == 2
  assert "must be an absolute path that every worker sees" in result.stderr
