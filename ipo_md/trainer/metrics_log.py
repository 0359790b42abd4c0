"""Where metrics go: a concise console line, metrics.jsonl, TensorBoard.

The stage folder may be local or on a bucket (`gs://`): files go through
etils.epath; on a bucket, which cannot append, metrics.jsonl is rewritten
whole at each write (it is small).
"""

import json
import math
import sys
import time

from clu import metric_writers

from ipo_md.checkpoints import paths

# Shown on the console line when present, in this order (all go to the files).
_CONSOLE_KEYS = ("loss", "nll_per_token", "rewards/margin", "preference/mean",
                 "pm/accuracy", "rm/accuracy", "samples/length",
                 "eval/win_rate_vs_ref/gold", "eval/win_rate_vs_ref/pm",
                 "eval/accuracy", "eval/gold_agreement", "eval/gold_accuracy",
                 "eval/ece", "eval/policy/covered", "eval/policy/invented")

# The per-step device time of each phase and the host time (the Trainer's
# profiling.PhaseTimer), shown on the console line in milliseconds.
_PHASE_KEYS = ("timing/sample", "timing/preference", "timing/update",
               "timing/device", "timing/host")


class MetricsLog:
  """Writes each logged step to the console, metrics.jsonl and TensorBoard.

  With `enabled=False` (every host but the first of a multi-host run, whose
  metrics are the same global values) it writes nothing.
  """

  def __init__(self, directory, *, name: str, total_steps: int,
               rows_per_step: int, stream=sys.stdout, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.directory = paths.as_path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.name = name
    self.total_steps = total_steps
    self.rows_per_step = rows_per_step
    self.stream = stream
    self._path = self.directory / "metrics.jsonl"
    self._remote = paths.is_remote(self._path)
    self._lines = self._read_lines() if self._remote else None
    self._jsonl = None if self._remote else self._path.open("a")
    self._tb = metric_writers.SummaryWriter(str(self.directory /
                                                "tensorboard"))
    self._last = None  # (time, step) of the previous console line.

  def _read_lines(self) -> list[str]:
    if not self._path.exists():
      return []
    return self._path.read_text().splitlines()

  def truncate_after(self, step: int) -> None:
    """Drops metrics.jsonl lines of steps after `step` (a resume from that
    step's checkpoint writes them again, so each step appears once)."""
    if not self.enabled:
      return
    if self._jsonl is not None:
      self._jsonl.close()
    kept = []
    for line in self._read_lines():
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line)
      except json.JSONDecodeError:
        continue  # A line cut by a crash mid-write.
    tmp = self.directory / "metrics.jsonl.tmp"
    tmp.write_text("".join(k + "\n" for k in kept))
    tmp.replace(self._path)
    if self._remote:
      self._lines = kept
    else:
      self._jsonl = self._path.open("a")

  def _append(self, line: str) -> None:
    if self._remote:
      self._lines.append(line)
      self._path.write_text("".join(k + "\n" for k in self._lines))
    else:
      self._jsonl.write(line + "\n")
      self._jsonl.flush()

  def write(self, step: int, metrics: dict, *, console: bool = True) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    now = time.time()
    if self._last is not None and step > self._last[1]:
      rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)
      scalars["timing/steps_per_sec"] = rate
      scalars["timing/samples_per_sec"] = rate * self.rows_per_step
    self._append(json.dumps({"step": step, **scalars}))
    self._tb.write_scalars(step, scalars)
    if console:
      self._console(step, scalars)
    self._last = (now, step)

  def _console(self, step, scalars):
    parts = [f"[{self.name}] step {step:>6d}/{self.total_steps}"]
    for k in _CONSOLE_KEYS:
      if k in scalars and math.isfinite(scalars[k]):
        parts.append(f"{k.split('/')[-1] if k.startswith('eval/policy') else k}"
                     f"={scalars[k]:.4g}")
    phases = [(k.split("/")[1], scalars[k]) for k in _PHASE_KEYS
              if k in scalars]
    if phases:
      parts.append(" ".join(f"{name} {1e3 * v:.0f}ms" for name, v in phases))
    rate = scalars.get("timing/steps_per_sec")
    if rate:
      eta = (self.total_steps - step) / rate
      parts.append(f"{rate:.2f} steps/s {scalars['timing/samples_per_sec']:.1f}"
                   f" samples/s ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    print("  ".join(parts), file=self.stream, flush=True)

  def close(self):
    if not self.enabled:
      return
    if self._jsonl is not None:
      self._jsonl.close()
    self._tb.flush()
    self._tb.close()
