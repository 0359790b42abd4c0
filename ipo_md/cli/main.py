"""The `ipo-md` (alias `t5x`) command: dispatches to one module per subcommand.

Each subcommand lives in `ipo_md.cli.<module>` and exposes `main(argv)`. The
module is imported only when its subcommand runs, so `ipo-md theory` never
pays for TensorFlow and `ipo-md train` never pays for matplotlib.
"""

import contextlib
import importlib
import os
import sys

# subcommand -> (module under ipo_md.cli, one-line help).
SUBCOMMANDS = {
    "train": ("train", "Train a policy (SFT, online IPO, IPO-MD, ...) from gin files."),
    "theory": ("theory", "Tabular preference games: figures and numbers of the paper's propositions."),
    "data": ("data", "Inspect seqio tasks: decoded examples and length percentiles."),
    "convert": ("convert", "Import Hugging Face / T5X T5 checkpoints."),
    "export": ("export", "Export a trained policy to the Hugging Face layout."),
    "eval": ("eval", "Side-by-side evaluation of policies by judges (oracle, learned PM, LLM)."),
    "tournament": ("tournament", "Train every method with K seeds and compare them side by side (Table 2)."),
}


def _usage() -> str:
  lines = ["usage: ipo-md <command> [flags]", "", "commands:"]
  for name, (_, text) in SUBCOMMANDS.items():
    lines.append(f"  {name:<10}{text}")
  lines.append("")
  lines.append("Run `ipo-md <command> --help` for the flags of one command.")
  return "\n".join(lines)


# Subcommands that load TensorFlow (seqio, TFDS).
_NEEDS_TF = ("train", "data", "eval", "tournament")
# Subcommands that honour SIGTERM/SIGINT as a clean stop (ipo_md.trainer.
# stopping) rather than dying: the handlers go in before anything loads.
_STOPPABLE = ("train",)


@contextlib.contextmanager
def _native_stderr_silenced():
  """TensorFlow's C++ start-up notes (oneDNN, "could not find cuda drivers")
  are printed before any log level applies; the first import happens with
  file descriptor 2 pointed at /dev/null. Python errors still show."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _import_tensorflow_quietly() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    with _native_stderr_silenced():
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pass  # The subcommand's own import reports it.


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in SUBCOMMANDS:
    print(f"ipo-md: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
    return 2
  if name in _STOPPABLE:
    from ipo_md.trainer import stopping  # pylint: disable=g-import-not-at-top

    # Before TensorFlow's import (seconds): a SIGTERM or Ctrl-C from the
    # first moment stops the run cleanly (the command checks the flag).
    with stopping.StopSignals():
      return _dispatch(name, rest)
  return _dispatch(name, rest)


def _dispatch(name: str, rest: list[str]) -> int:
  if name in _NEEDS_TF:
    _import_tensorflow_quietly()
  from ipo_md.cli import errors  # pylint: disable=g-import-not-at-top

  def command():
    module = importlib.import_module(f"ipo_md.cli.{SUBCOMMANDS[name][0]}")
    return module.main(rest)

  return errors.run(name, command)


if __name__ == "__main__":
  sys.exit(main())
