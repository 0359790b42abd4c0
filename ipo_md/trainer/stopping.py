"""A clean stop on SIGTERM or SIGINT, wherever the run is.

A preempted VM gets a SIGTERM; a user presses Ctrl-C. Either may come during
start-up (compiling, reading data), between two stages or inside a stage's
loop. `StopSignals` turns the signal into a flag that the run checks at each
of those points: the loop finishes its step, saves a checkpoint and returns;
between stages and at start-up the run says where it stopped and exits with
status 0, so a rerun of the same command resumes. A second SIGINT while the
first is being honoured raises KeyboardInterrupt at once (an impatient user
must still be able to quit).
"""

import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_active: "StopSignals | None" = None


class StopSignals:
  """Context manager: installs the handlers, restores the previous ones.

  Nested uses share the outermost instance (`current()`), so the CLI can
  install it at start-up and every Trainer sees the same flag.
  """

  def __init__(self):
    self.signal: str | None = None
    self._previous = {}
    self._installed = False

  def __enter__(self) -> "StopSignals":
    global _active
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals reach the main thread only; nothing to install.
    if _active is not None:
      return _active
    for sig in _SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    self._installed = True
    _active = self
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = name

  @property
  def requested(self) -> bool:
    return self.signal is not None

  def __exit__(self, *exc):
    global _active
    if not self._installed:
      return
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._installed = False
    if _active is self:
      _active = None


def current() -> StopSignals | None:
  """The installed StopSignals, if any."""
  return _active


def reclaim() -> None:
  """Puts the installed StopSignals' handlers back in place.

  `jax.distributed.initialize` installs the coordination service's own
  SIGTERM handler (its preemption notifier), replacing ours; a SIGTERM would
  then no longer reach the run's flag. Call this after it. A signal already
  received stays received."""
  if _active is not None and _active._installed:  # pylint: disable=protected-access
    for sig in _SIGNALS:
      signal.signal(sig, _active._handle)  # pylint: disable=protected-access
