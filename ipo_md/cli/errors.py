"""One clear message for every failure of a command, never a traceback.

A user's mistake (a bad value, a missing file, a stage that does not fit its
data) gets the message the library raised, which names the thing, its value
and the fix, and exit status 2. A diverged run gets exit status 3. Anything
else is a bug of ours: a one-line message, exit status 1. In every case the
full traceback goes to a log file, in `MODEL_DIR/logs/` once a command knows
its model dir (else the system's temporary folder), and the message gives its
path.
"""

import datetime
import os
import re
import sys
import tempfile
import traceback

# Errors that mean "the input is wrong": their message is the explanation.
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError,
               NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError)
# Raised on purpose with a message for the user (e.g. a locked MODEL_DIR).
USER_ERROR_NAMES = ("RunLockedError",)
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_BUG = 1
EXIT_INTERRUPTED = 130

_log_dir: str | None = None


def set_log_dir(path: str | os.PathLike | None) -> None:
  """Where later tracebacks go (e.g. MODEL_DIR/logs); None resets it."""
  global _log_dir
  _log_dir = None if path is None else os.fspath(path)


def _write_traceback(command: str) -> str | None:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  name = f"{command.replace(' ', '_')}-error-{stamp}-{os.getpid()}.log"
  for folder in (_log_dir, tempfile.gettempdir()):
    if not folder:
      continue
    try:
      os.makedirs(folder, exist_ok=True)
      path = os.path.join(folder, name)
      with open(path, "w", encoding="utf-8") as f:
        f.write(f"ipo-md {command}: {' '.join(sys.argv)}\n\n")
        f.write(traceback.format_exc())
      return path
    except OSError:
      continue
  return None


def _is_diverged(error: BaseException) -> bool:
  loop = sys.modules.get("ipo_md.trainer.loop")
  return loop is not None and isinstance(error, loop.Diverged)


def report(command: str, error: BaseException) -> int:
  """Prints one message for `error` (being handled) and returns the exit
  status; the traceback goes to a log file."""
  path = _write_traceback(command)
  where = f"\n(The full traceback is in {path}.)" if path else ""
  text = _without_gin_context(str(error)) or type(error).__name__
  if _is_diverged(error) or isinstance(error, FloatingPointError):
    print(f"ipo-md {command}: stopped: {text}{where}", file=sys.stderr)
    return EXIT_DIVERGED
  if (isinstance(error, USER_ERRORS)
      or type(error).__name__ in USER_ERROR_NAMES):
    print(f"ipo-md {command}: error: {text}{where}", file=sys.stderr)
    return EXIT_USER_ERROR
  print(f"ipo-md {command}: unexpected error ({type(error).__name__}: {text}). "
        f"This is a bug of ipo-md; please report it with the log file.{where}",
        file=sys.stderr)
  return EXIT_BUG


def _without_gin_context(message: str) -> str:
  """gin appends "In call to configurable ..." / "In file ..." lines to the
  messages of errors raised inside configurables; the message alone names
  the thing already. What those lines add is the gin scope of the value
  (sft/LoopConfig rather than LoopConfig): that is kept, as one tail."""
  lines = message.splitlines()
  kept = [line for line in lines
          if not line.strip().startswith(("In call to configurable",
                                          "In file ", "In bindings string"))]
  text = "\n".join(kept).strip()
  for line in lines:
    scoped = _SCOPED_CALL.match(line.strip())
    if scoped:
      name, scope = scoped.groups()
      return f"{text} (gin: {scope}/{name})"
  return text


# gin's context line of a call in a scope, e.g. "In call to configurable
# 'LoopConfig' (<class '...'>) in scope 'sft'".
_SCOPED_CALL = re.compile(
    r"^In call to configurable '([^']+)' \(.*\) in scope '([^']+)'$")


def run(command: str, fn, *args) -> int:
  """Runs a command's main, turning every failure into one message."""
  try:
    return int(fn(*args) or 0)
  except SystemExit as e:
    if isinstance(e.code, str):  # A message raised as SystemExit(message).
      print(f"ipo-md {command}: error: {e.code}", file=sys.stderr)
      return EXIT_USER_ERROR
    return 0 if e.code is None else int(e.code)
  except KeyboardInterrupt:
    print(f"\nipo-md {command}: interrupted.", file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:  # pylint: disable=broad-except
    return report(command, e)
