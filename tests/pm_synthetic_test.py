"""gin/pm_synthetic.gin, whole, as a user runs it: the main job's preference
model trained longer on fresh pairs comes within a few points of the gold
oracle's own accuracy on the noisy labels.

About 35 minutes on a 2-core CPU (the SFT stage, then 4,000 PM steps of 128
pairs), so it runs only on request:

  IPO_MD_SLOW=1 python -m pytest -q tests/pm_synthetic_test.py
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("IPO_MD_SLOW") != "1",
    reason="about 35 minutes on CPU; set IPO_MD_SLOW=1 to run")

REPO = pathlib.Path(__file__).resolve().parents[1]
# Held-out accuracy on the noisy labels may trail the gold oracle's (the
# ceiling, 0.8765 on the 1,024 validation pairs) by at most this much.
# Measured: 0.8418, 3.5 points below (gold agreement 0.922).
PM_GAP = 0.04
# The same without the labels' sampling noise: the accuracy expected over the
# annotators' draws against its ceiling (0.8805). Measured: 0.8561, 2.4 points
# below.
PM_EXPECTED_GAP = 0.03


def _last(path: pathlib.Path) -> dict:
  records = [json.loads(line) for line in path.read_text().splitlines()]
  return {k: v for r in records for k, v in r.items()}


def test_pm_trained_on_fresh_pairs_comes_within_a_few_points(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             IPO_MD_COMPILATION_CACHE=str(tmp_path / "cache"))
  model_dir = tmp_path / "run"
  run = subprocess.run(
      [sys.executable, "-m", "ipo_md.cli.main", "train",
       "--gin_file=gin/pm_synthetic.gin", f"--gin.MODEL_DIR='{model_dir}'"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=4 * 3600,
      check=False)
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  pm = _last(model_dir / "pm" / "metrics.jsonl")
  assert pm["eval/gold_accuracy"] == pytest.approx(0.8765, abs=5e-4)
  assert pm["eval/gold_expected_accuracy"] == pytest.approx(0.8805, abs=5e-4)
  assert pm["eval/accuracy"] >= pm["eval/gold_accuracy"] - PM_GAP, pm
  assert (pm["eval/expected_accuracy"]
          >= pm["eval/gold_expected_accuracy"] - PM_EXPECTED_GAP), pm
