"""Runs a gin file whole with `ipo-md train`, as a user does, for the slow
tests of the built-in task's runs (tests/main_job_test.py,
tests/pm_synthetic_test.py)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def slow(minutes: int):
  """Marks a module's tests to run only with IPO_MD_SLOW=1."""
  return pytest.mark.skipif(
      os.environ.get("IPO_MD_SLOW") != "1",
      reason=f"about {minutes} minutes on CPU; set IPO_MD_SLOW=1 to run")


def train(gin_file: str, model_dir: pathlib.Path, cache: pathlib.Path, *,
          timeout: float) -> subprocess.CompletedProcess:
  """`ipo-md train --gin_file=<gin_file>` into `model_dir` on the CPU, in a
  fresh process (no XLA_FLAGS from the test session), with its compilation
  cache in `cache`; asserts that it exits 0 and returns the process."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             IPO_MD_COMPILATION_CACHE=str(cache))
  run = subprocess.run(
      [sys.executable, "-m", "ipo_md.cli.main", "train",
       f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
      check=False)
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  return run


def last_metrics(path: pathlib.Path) -> dict:
  """Every key of a stage's metrics.jsonl at its last logged value."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  return {k: v for r in records for k, v in r.items()}
