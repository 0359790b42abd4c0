"""The README's main job (gin/ipo_md_tiny.gin), whole, as a user runs it:
the learned preference model comes within 8 points of the gold oracle's own
accuracy on the noisy labels (tests/pm_synthetic_test.py checks a few points
for a longer PM run), and IPO-MD against that model raises the gold win rate
against the SFT reference.

About 6 minutes on a 2-core CPU (SFT, PM and IPO-MD stages), so it
runs only on request:

  IPO_MD_SLOW=1 python -m pytest -q tests/main_job_test.py
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("IPO_MD_SLOW") != "1",
    reason="about 6 minutes on CPU; set IPO_MD_SLOW=1 to run")

REPO = pathlib.Path(__file__).resolve().parents[1]
# Held-out accuracy of the PM on the noisy labels may trail the gold
# oracle's (the ceiling, 0.8765 on the 1,024 validation pairs) by at most
# this much. Measured: 0.8047, 7.2 points below (gold agreement 0.838), after
# one pass over the pairs in about two minutes; the same PM trained for 35
# minutes on fresh pairs comes within 3.5 points (tests/pm_synthetic_test.py).
PM_GAP = 0.08
# The final gold win rate against the SFT reference must exceed this (0.5
# when the policy does not move; 256 prompts give a standard error of about
# 0.03 on one evaluation). Measured: 0.675 (the run is deterministic on one
# machine; another CPU rounds differently), so this is 1.8 errors below.
GOLD_WIN = 0.62


def _last(path: pathlib.Path) -> dict:
  records = [json.loads(line) for line in path.read_text().splitlines()]
  return {k: v for r in records for k, v in r.items()}


def test_main_job_pm_near_the_ceiling_and_gold_win_rate_rises(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             IPO_MD_COMPILATION_CACHE=str(tmp_path / "cache"))
  model_dir = tmp_path / "run"
  run = subprocess.run(
      [sys.executable, "-m", "ipo_md.cli.main", "train",
       "--gin_file=gin/ipo_md_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
      check=False)
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  pm = _last(model_dir / "pm" / "metrics.jsonl")
  ceiling, accuracy = pm["eval/gold_accuracy"], pm["eval/accuracy"]
  assert ceiling == pytest.approx(0.8765, abs=5e-4), ceiling
  assert accuracy >= ceiling - PM_GAP, (accuracy, ceiling)
  policy = _last(model_dir / "ipo_md" / "metrics.jsonl")
  assert policy["eval/win_rate_vs_ref/gold"] > GOLD_WIN, policy
  # Both judges are logged on the same evaluation (over-optimisation shows
  # as the learned model's verdict running ahead of the gold one's).
  assert "eval/win_rate_vs_ref/pm" in policy, policy
  assert "charsmap" not in run.stdout + run.stderr
