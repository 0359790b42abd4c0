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

"""One run per MODEL_DIR: a lock file naming its holder.

Why: two runs on one MODEL_DIR interleave their checkpoints and metrics, and
one of them dies later with a traceback far from the cause. The first run
writes `MODEL_DIR/ipo_md.lock` (host, PID, start time, command line); a
second run stops at once with a message that names the holder and how to
break the lock. A lock left by a killed run is broken automatically when its
holder was on this host and that process is gone (a reused PID is told apart
by its start time); otherwise the message names the file to delete.

Creation is atomic and exclusive on local and network file systems (the
content is written to a temporary file, then hard-linked to the lock name,
which fails if it exists). Buckets (`gs://`) offer no exclusive create
through epath: there the lock is written if absent and read back, which
leaves a window of one round trip in which two runs starting together could
both proceed. On several hosts only process 0 takes the lock, and every
process learns whether it did.
"""

import atexit
import datetime
import json
import os
import shlex
import socket
import sys
import time
import uuid
from typing import Any, Callable

from ipo_md.checkpoints import hosts
from ipo_md.checkpoints import paths

LOCK_FILE = "ipo_md.lock"


class RunLockedError(RuntimeError):
  """Another run holds the lock of this MODEL_DIR.

  Attributes:
    path: the lock file.
    holder: its parsed content (host, pid, started, command), or None.
  """

  def __init__(self, message: str, path: str, holder: dict | None):
    super().__init__(message)
    self.path, self.holder = path, holder


def _pid_start(pid: int) -> str | None:
  """The start time of `pid` in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  return fields[19] if len(fields) > 19 else None


def _is_running(pid: int, pid_start: str | None) -> bool:
  """Whether the process `pid` of this host is the one that took the lock."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Alive, owned by another user.
  if pid_start is not None:
    now = _pid_start(pid)
    if now is not None and now != pid_start:
      return False  # The PID was reused by a newer process.
  return True


def _describe(holder: dict) -> str:
  started = holder.get("started", "?")
  try:
    age = datetime.datetime.now(datetime.timezone.utc) - (
        datetime.datetime.fromisoformat(started))
    started += f" ({int(age.total_seconds() // 60)} min ago)"
  except (TypeError, ValueError):
    pass
  return (f"PID {holder.get('pid')} on host {holder.get('host')!r}, started "
          f"{started}, command: {holder.get('command')}")


class RunLock:
  """Context manager (or acquire/release) holding MODEL_DIR's run lock.

  Released on normal exit, on an exception leaving the `with` block, and at
  interpreter exit (atexit). A SIGTERM must be turned into a normal exit by
  the caller (the trainer's stop flag does); a SIGKILL leaves a stale lock,
  which the next run on the same host breaks automatically.

  Args:
    directory: MODEL_DIR (local or `gs://`); created if absent.
    report: called with one line when a stale lock is broken; default print.
  """

  def __init__(self, directory: paths.PathLike, *,
               report: Callable[[str], None] | None = None):
    self.directory = paths.as_path(directory)
    self.path = self.directory / LOCK_FILE
    self._report = report or (lambda line: print(line, flush=True))
    self._token: str | None = None

  def _content(self) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _pid_start(os.getpid()),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "command": shlex.join(sys.argv),
        "token": uuid.uuid4().hex,
    }

  def _create(self, content: dict[str, Any]) -> bool:
    """Writes the lock if it does not exist; whether this call did."""
    text = json.dumps(content, indent=2) + "\n"
    if paths.is_remote(self.path):
      if self.path.exists():
        return False
      self.path.write_text(text)
      return (self._read() or {}).get("token") == content["token"]
    tmp = self.directory / f".{LOCK_FILE}.{content['token']}"
    tmp.write_text(text)
    try:
      os.link(os.fspath(tmp), os.fspath(self.path))
      return True
    except FileExistsError:
      return False
    except OSError:  # No hard links here: exclusive create, then write.
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
      return True
    finally:
      tmp.unlink(missing_ok=True)

  def _read(self) -> dict | None:
    """The lock's content; None if absent or unreadable."""
    for _ in range(3):  # A lock being written by the no-hard-link path.
      try:
        return json.loads(self.path.read_text())
      except FileNotFoundError:
        return None
      except (json.JSONDecodeError, UnicodeDecodeError):
        time.sleep(0.2)
    return None

  def _is_stale(self, holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
      return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not _is_running(pid,
                                                    holder.get("pid_start"))

  def _take(self) -> None:
    content = self._content()
    for _ in range(3):
      if self._create(content):
        self._token = content["token"]
        atexit.register(self.release)
        return
      holder = self._read()
      if holder is not None and self._is_stale(holder):
        self._report(
            f"Breaking the stale lock {self.path}: {_describe(holder)}; that "
            "process is no longer running.")
        if (self._read() or {}).get("token") == holder.get("token"):
          self.path.unlink(missing_ok=True)
        continue
      if holder is None and not self.path.exists():
        continue  # Released meanwhile.
      raise self._held_error(holder)
    raise self._held_error(self._read())

  def _held_error(self, holder: dict | None) -> RunLockedError:
    if holder is None:
      who = "an unknown run (the lock file is not readable)"
    else:
      who = _describe(holder)
    here = holder is not None and holder.get("host") == socket.gethostname()
    fix = ("It is still running on this host: wait for it, or stop it first"
           if here else
           f"If that run is gone (its machine was preempted or killed), "
           f"delete {self.path} and rerun")
    return RunLockedError(
        f"MODEL_DIR {self.directory} is in use by another run: {who}. Two "
        "runs on one MODEL_DIR would interleave their checkpoints and "
        f"metrics. {fix}; or use another MODEL_DIR.", str(self.path), holder)

  def acquire(self) -> "RunLock":
    """Takes the lock (process 0); every process raises if it could not.

    Raises:
      RunLockedError: another run holds it.
    """
    if self.held:
      return self
    error = None
    if hosts.is_primary():
      self.directory.mkdir(parents=True, exist_ok=True)
      try:
        self._take()
      except RunLockedError as e:
        error = e
    if not hosts.broadcast_int(int(error is None)):
      raise error or RunLockedError(
          f"Process 0 could not lock MODEL_DIR {self.directory}; its output "
          "names the run that holds it.", str(self.path), None)
    return self

  def release(self) -> None:
    """Removes the lock if this object holds it (idempotent)."""
    if self._token is None:
      return
    token, self._token = self._token, None
    atexit.unregister(self.release)
    holder = self._read()
    if holder is not None and holder.get("token") == token:
      self.path.unlink(missing_ok=True)
    elif holder is not None:
      self._report(f"Not removing {self.path}: it now belongs to "
                   f"{_describe(holder)}.")

  @property
  def held(self) -> bool:
    return self._token is not None

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
