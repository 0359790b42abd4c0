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

"""Where the time of a training step goes, without slowing the step down.

Two tools for the training loop:

* `TraceWindow`: a JAX profiler trace (TensorBoard / Perfetto, an
  `*.xplane.pb` under `directory/plugins/profile/`) of steps A..B, the
  `--profile_steps=A:B` flag of `ipo-md train`.
* `PhaseTimer`: the per-step split of an online step into its phases
  (sample / preference / update) and host time, measured without adding a
  device sync to the loop. The step is dispatched as separately jitted
  phases; the loop hands each phase's (small, never donated) output to the
  timer right after dispatching it, and a background thread blocks on
  those outputs in order and stamps when each becomes ready. Dispatch is
  asynchronous and each phase consumes the previous one's output, so the
  device runs them back to back: a phase's time is its ready time minus
  the previous phase's (or its own dispatch time, when the device was idle
  waiting for the host). "host" is the time the device waited for the
  host between steps. Results arrive one step (or more) late via `poll()`.
  Where a call returns only when its work is done (XLA:CPU with JAX's
  `jax_cpu_enable_async_dispatch=False`, which `ipo-md train` sets: see
  `ipo_md.cli.runtime.configure_cpu_dispatch`), the phase's output is ready
  when the loop hands it over, and the phase ran from the end of the loop's
  previous call (or the step's begin) to then.
"""

import collections
import dataclasses
import pathlib
import queue
import threading
import time
from typing import Any

from etils import epath
import jax

STEP_KEY = "timing/step"
HOST_KEY = "timing/host"


def parse_profile_steps(spec: str | None) -> tuple[int, int] | None:
  """"A:B" -> (A, B), the first and last step traced; None or "" -> None.

  Raises:
    ValueError: naming the value and the expected form.
  """
  if not spec:
    return None
  parts = spec.split(":")
  try:
    start, stop = (int(p) for p in parts)
  except ValueError:
    start = stop = None
  if len(parts) != 2 or start is None or not 0 <= start <= stop:
    raise ValueError(
        f"--profile_steps={spec!r} must be A:B with integers 0 <= A <= B "
        "(the first and the last step to trace), e.g. --profile_steps=10:12.")
  return start, stop


class TraceWindow:
  """Starts a JAX profiler trace before step `start`, stops it after `stop`.

  Call `before_step(step)` before dispatching a step and `after_step(step,
  outputs)` after; when the window closes it blocks on `outputs` (once, at
  the last traced step) so that the trace holds that step's device work.
  """

  def __init__(self, directory: str | pathlib.Path | epath.Path, start: int,
               stop: int):
    if not 0 <= start <= stop:
      raise ValueError(f"TraceWindow: need 0 <= start={start} <= stop={stop}.")
    self.directory = epath.Path(directory)  # Local or a bucket.
    self.start, self.stop = start, stop
    self.active = False
    self.done = False

  def before_step(self, step: int) -> None:
    if not self.active and not self.done and self.start <= step <= self.stop:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after_step(self, step: int, outputs: Any = None) -> None:
    if self.active and step >= self.stop:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active, self.done = False, True

  def close(self) -> None:
    """Stops a trace still running (e.g. the run ended inside the window)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active, self.done = False, True

  def trace_files(self) -> list[epath.Path]:
    return sorted(self.directory.glob("plugins/profile/*/*.xplane.pb"))


@dataclasses.dataclass
class _Step:
  step: int
  begin: float  # Host clock when the loop started dispatching the step.
  phases: list[tuple[str, float, Any, float, bool]] = dataclasses.field(
      default_factory=list)
  # (name, dispatch time, output, the earliest its call can have begun (the
  # previous phase's dispatch time, or begin), output ready at dispatch)


def _ready(output: Any) -> bool:
  """Whether every array of `output` is computed (non-arrays count as
  computed)."""
  return all(leaf.is_ready() for leaf in jax.tree.leaves(output)
             if hasattr(leaf, "is_ready"))


class PhaseTimer:
  """Per-step device time of each phase, and host time (see module doc).

  Usage in the loop (no sync added):

    timer = profiling.PhaseTimer()
    for step in ...:
      timer.begin(step)
      samples = sample_fn(state.params, frozen, batch, rng)
      timer.phase("sample", samples.tokens)
      labels = preference_fn(frozen, batch, samples)
      timer.phase("preference", labels)
      state, metrics = update_fn(state, frozen, batch, samples, labels)
      timer.phase("update", metrics["loss"])
      timer.end()
      for timing in timer.poll():   # earlier steps, as they finish
        log(timing["step"], {k: v for k, v in timing.items() if k != "step"})
    timer.close()

  Hand over outputs that are never donated (tokens, labels, metrics): a
  donated buffer may be deleted before the timer's thread blocks on it.
  """

  def __init__(self, max_pending: int = 8):
    self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
    self._results: collections.deque = collections.deque()
    self._timed = threading.Condition()
    self._last_step: int | None = None
    self._current: _Step | None = None
    self._last_ready: float | None = None
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._watch, daemon=True,
                                    name="ipo_md.PhaseTimer")
    self._thread.start()

  def begin(self, step: int) -> None:
    if self._current is not None:
      raise ValueError(f"PhaseTimer.begin({step}) before end() of step "
                       f"{self._current.step}.")
    self._current = _Step(step=step, begin=time.perf_counter())

  def phase(self, name: str, output: Any) -> None:
    """Records that phase `name` was dispatched and yields `output`."""
    if self._current is None:
      raise ValueError(f"PhaseTimer.phase({name!r}) outside begin()/end().")
    now = time.perf_counter()
    called = (self._current.phases[-1][1] if self._current.phases
              else self._current.begin)
    self._current.phases.append((name, now, output, called, _ready(output)))

  def end(self) -> None:
    """Hands the step to the watcher (blocks only if max_pending are late)."""
    if self._current is None:
      raise ValueError("PhaseTimer.end() without begin().")
    self._queue.put(self._current)
    self._current = None

  def poll(self) -> list[dict[str, float]]:
    """Timings of the steps finished since the last poll, oldest first."""
    if self._error is not None:
      raise RuntimeError("PhaseTimer's watcher failed") from self._error
    out = []
    while self._results:
      out.append(self._results.popleft())
    return out

  def wait(self, step: int, timeout: float = 60.0) -> None:
    """Waits until the watcher has timed every step up to `step`. Call it
    for a step whose outputs are known to be ready (e.g. after reading its
    metrics): then it waits only for the watcher, not for the device."""
    with self._timed:
      self._timed.wait_for(
          lambda: self._error is not None or (
              self._last_step is not None and self._last_step >= step),
          timeout=timeout)

  def close(self) -> list[dict[str, float]]:
    """Waits for the pending steps and returns their timings."""
    self._queue.put(None)
    self._thread.join()
    return self.poll()

  def _watch(self) -> None:
    try:
      while (item := self._queue.get()) is not None:
        timing = self._time(item)
        with self._timed:
          self._results.append(timing)
          self._last_step = item.step
          self._timed.notify_all()
    except BaseException as e:  # pylint: disable=broad-except
      with self._timed:
        self._error = e
        self._timed.notify_all()

  def _time(self, item: _Step) -> dict[str, float]:
    timing = {"step": item.step}
    previous = self._last_ready
    start = item.begin if previous is None else previous
    host = 0.0
    for name, dispatched, output, called, inline in item.phases:
      if inline:
        # The call returned with its work done: it ran since `called`.
        # (max: the watcher may have stamped the previous phase late.)
        begin = max(start, called)
        ready = max(dispatched, begin)
      else:
        jax.block_until_ready(output)
        ready = time.perf_counter()
        begin = max(start, dispatched)
      host += begin - start  # The device waited for this dispatch.
      timing[f"timing/{name}"] = ready - begin
      start = ready
    step_start = item.begin if previous is None else previous
    timing[HOST_KEY] = host
    timing[STEP_KEY] = start - step_start
    self._last_ready = start
    return timing
