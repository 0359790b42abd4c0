"""Where metrics go: a concise console line, metrics.jsonl, TensorBoard."""

import json
import math
import pathlib
import sys
import time

from clu import metric_writers

# Shown on the console line when present, in this order (all go to the files).
_CONSOLE_KEYS = ("loss", "nll_per_token", "rewards/margin", "preference/mean",
                 "pm/accuracy", "rm/accuracy", "samples/length",
                 "eval/win_rate_vs_ref/gold", "eval/win_rate_vs_ref/pm",
                 "eval/accuracy", "eval/gold_agreement", "eval/gold_accuracy",
                 "eval/ece", "eval/policy/covered", "eval/policy/invented")


class MetricsLog:
  """Writes each logged step to the console, metrics.jsonl and TensorBoard.

  With `enabled=False` (every host but the first of a multi-host run, whose
  metrics are the same global values) it writes nothing.
  """

  def __init__(self, directory: pathlib.Path, *, name: str, total_steps: int,
               rows_per_step: int, stream=sys.stdout, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.directory = directory
    directory.mkdir(parents=True, exist_ok=True)
    self.name = name
    self.total_steps = total_steps
    self.rows_per_step = rows_per_step
    self.stream = stream
    self._jsonl = open(directory / "metrics.jsonl", "a", encoding="utf-8")
    self._tb = metric_writers.SummaryWriter(str(directory / "tensorboard"))
    self._last = None  # (time, step) of the previous console line.

  def truncate_after(self, step: int) -> None:
    """Drops metrics.jsonl lines of steps after `step` (a resume from that
    step's checkpoint writes them again, so each step appears once)."""
    if not self.enabled:
      return
    self._jsonl.close()
    path = self.directory / "metrics.jsonl"
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line)
      except json.JSONDecodeError:
        continue  # A line cut by a crash mid-write.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    tmp.replace(path)
    self._jsonl = open(path, "a", encoding="utf-8")

  def write(self, step: int, metrics: dict, *, console: bool = True) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    now = time.time()
    if self._last is not None and step > self._last[1]:
      rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)
      scalars["timing/steps_per_sec"] = rate
      scalars["timing/samples_per_sec"] = rate * self.rows_per_step
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
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
    rate = scalars.get("timing/steps_per_sec")
    if rate:
      eta = (self.total_steps - step) / rate
      parts.append(f"{rate:.2f} steps/s {scalars['timing/samples_per_sec']:.1f}"
                   f" samples/s ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    print("  ".join(parts), file=self.stream, flush=True)

  def close(self):
    if not self.enabled:
      return
    self._jsonl.close()
    self._tb.flush()
    self._tb.close()
