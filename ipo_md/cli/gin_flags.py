"""Gin at the edge: --gin_file, --gin.KEY=VALUE, --gin_bindings, search paths.

Everything here turns a user's mistake into one message that names the thing
and the fix, before any model is built.

Where the gin files are. The repository's `gin/` folder is installed as the
data package `ipo_md_gin` (see setup.py), so `gin_dir()` finds it in an
editable install (the repository itself), in a wheel or `pip install .`
(site-packages/ipo_md_gin) and from any working folder; `--gin_file` accepts
`ipo_md_tiny.gin`, `gin/ipo_md_tiny.gin` or any path.

Bindings of the task registrations. `ipo_md_tasks.register_tldr_tasks.sft_dir`
is registered with gin only by a gin file that imports `ipo_md_tasks` and
binds it (dynamic registration), so a command-line binding of it alone would
find "No configurable matching". Bindings of `ipo_md_tasks.*` are therefore
parsed with their own `from __gin__ import dynamic_registration` and `import
ipo_md_tasks` preamble (`TASK_BINDINGS_PREAMBLE`).
"""

import argparse
import ast
import difflib
import importlib.util
import logging
import os
import pathlib
import tokenize

import gin
from gin import config as gin_config

# The top-level package of the seqio task registrations (the tasks/ folder).
TASKS_PACKAGE = "ipo_md_tasks"
# The data package that holds the gin files (the gin/ folder).
GIN_PACKAGE = "ipo_md_gin"
# Lets a binding name the registration functions without a gin file.
TASK_BINDINGS_PREAMBLE = ("from __gin__ import dynamic_registration",
                          f"import {TASKS_PACKAGE}")


def gin_dir() -> str:
  """The folder of the shipped gin files, in any kind of install.

  The installed package `ipo_md_gin` when it exists (a non-editable install,
  or an editable one made after it was added), else the repository's gin/
  beside the `ipo_md` sources (an older editable install).
  """
  try:
    spec = importlib.util.find_spec(GIN_PACKAGE)
  except (ImportError, ValueError):
    spec = None
  for location in (spec.submodule_search_locations or []) if spec else []:
    if os.path.isfile(os.path.join(location, "runs", "train.gin")):
      return str(pathlib.Path(location).resolve())
  return str(pathlib.Path(__file__).resolve().parents[2] / "gin")


# Searched after --gin_search_paths: the gin files, then the folder above
# them (the repository root in a checkout, so "gin/x.gin" also resolves).
DEFAULT_SEARCH_PATHS = (gin_dir(), str(pathlib.Path(gin_dir()).parent))


class _QuietSearch(logging.Filter):
  """gin logs an error for every search path that lacks an included file,
  even when a later path has it; those lines only confuse users."""

  def filter(self, record):
    return not str(record.msg).startswith("Path not found:")


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="A gin file; repeatable, later files override.")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="A gin binding 'KEY=VALUE'; repeatable.")
  parser.add_argument("--gin_search_paths", default="",
                      help="Comma-separated folders to look for gin files "
                      "and their includes (the repo's gin/ is always last).")


def split_gin_dot_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Pulls `--gin.KEY=VALUE` out of argv; returns (rest, bindings)."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        raise SystemExit(
            f"Flag {arg!r} has no value; write --gin.KEY=VALUE, e.g. "
            "--gin.MODEL_DIR=\"/tmp/run\".")
      key, value = body.split("=", 1)
      bindings.append(f"{key}={_quote_if_bare(value)}")
    else:
      rest.append(arg)
  return rest, bindings


def _quote_if_bare(value: str) -> str:
  """Leaves gin syntax alone; quotes a bare path or word so that
  --gin.MODEL_DIR=/tmp/run works as users expect."""
  v = value.strip()
  if v.startswith(("@", "%", "'", '"', "[", "(", "{")):
    return v
  try:
    ast.literal_eval(v)
    return v
  except (ValueError, SyntaxError):
    return repr(v)


def _is_remote(path: str) -> bool:
  return "://" in str(path)


def _remote_is_file(path: str) -> bool:
  """Whether `path` is a file on a filesystem epath serves (gs://, ...)."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  return _is_remote(path) and epath.Path(path).is_file()


def _remote_open(path: str):
  from etils import epath  # pylint: disable=g-import-not-at-top

  return epath.Path(path).open("r")


# gin opens local files itself; a gin file (or an `include`) on a bucket is
# read through epath, as every other path of a run is.
gin_config.register_file_reader(_remote_open, _remote_is_file)


def _is_file(path: str) -> bool:
  return _remote_is_file(path) if _is_remote(path) else os.path.isfile(path)


def resolve(gin_file: str, search_paths: list[str]) -> str:
  """The path of `gin_file`: as given, else under a search path; a leading
  "gin/" also matches the shipped gin folder (`gin/ipo_md_tiny.gin` works
  from any folder and in a non-editable install). Paths may be local or on
  a filesystem etils.epath serves (e.g. gs://bucket/exp.gin)."""
  if _is_file(gin_file):
    return gin_file
  if _is_remote(gin_file):
    raise FileNotFoundError(
        f"gin file {gin_file!r} not found. Check the path and your access to "
        "it (e.g. `gsutil ls` it).")
  names = [gin_file]
  parts = pathlib.PurePath(gin_file).parts
  if len(parts) > 1 and parts[0] == "gin":
    names.append(os.path.join(*parts[1:]))
  for path in search_paths:
    for name in names:
      candidate = (path.rstrip("/") + "/" + name if _is_remote(path)
                   else os.path.join(path, name))
      if _is_file(candidate):
        return candidate
  raise FileNotFoundError(
      f"gin file {gin_file!r} not found (looked in the current folder and "
      f"{search_paths}). Check the spelling, or add its folder with "
      "--gin_search_paths.")


def parse(args: argparse.Namespace, dot_bindings: list[str]) -> None:
  """Parses files then bindings; exits with a clear message on mistakes."""
  search = [p for p in args.gin_search_paths.split(",") if p]
  search += list(DEFAULT_SEARCH_PATHS)
  logging.getLogger().addFilter(_QuietSearch())
  for path in search:
    gin.add_config_file_search_path(path)
  try:
    files = [resolve(f, search) for f in args.gin_file]
  except FileNotFoundError as e:
    raise SystemExit(str(e)) from None
  if not files:
    raise SystemExit("No --gin_file given; e.g. --gin_file=gin/ipo_md_tiny.gin")
  bindings = list(args.gin_bindings) + dot_bindings
  try:
    parse_files_and_bindings(files, bindings)
  except (ValueError, KeyError, SyntaxError, ImportError, IOError,
          NameError) as e:  # NameError: a module used but not imported.
    raise SystemExit(
        f"Invalid gin configuration: {e}\nCheck the names in your gin files "
        "and --gin.* bindings (a configurable's path is module.function.arg; "
        "run with the file's `import` lines intact).") from e
  except tokenize.TokenError as e:  # An unclosed bracket or quote.
    raise SystemExit(
        f"Invalid gin configuration: a binding or gin file ends inside an "
        f"unclosed bracket or string ({e.args[0]}). Close it, e.g. "
        "--gin.losses.ipo_loss.tau=1.0 or --gin.X=\"(1, 2)\".") from None
  check_unused_macros(bindings)


def is_task_binding(binding: str) -> bool:
  """Whether `binding` ("[scope/]name.param = value") binds a function of
  the task package, e.g. ipo_md_tasks.register_tldr_tasks.sft_dir."""
  key = binding.split("=", 1)[0].strip()
  return key.rsplit("/", 1)[-1].startswith(TASKS_PACKAGE + ".")


def parse_files_and_bindings(files: list[str], bindings: list[str]) -> None:
  """Parses gin files, then bindings, without finalizing the config.

  Bindings of `ipo_md_tasks.*` are parsed after the rest, behind
  `TASK_BINDINGS_PREAMBLE`, so that they work with no gin file that binds
  the same function (see the module docstring).

  Raises:
    Whatever gin raises for a bad file or binding (ValueError, KeyError,
    SyntaxError, ImportError, IOError).
  """
  lines = [line for b in bindings for line in b.splitlines() if line.strip()]
  tasks = [b for b in lines if is_task_binding(b)]
  rest = [b for b in lines if not is_task_binding(b)]
  gin.parse_config_files_and_bindings(files, rest, finalize_config=False)
  if tasks:
    gin.parse_config(list(TASK_BINDINGS_PREAMBLE) + tasks)


# --- What the parsed configuration refers to. --------------------------------


def _references(value):
  """The config keys ((scope, selector)) of the references in a bound
  value (`@f()`, `%MACRO`, `%gin.REQUIRED`), containers included."""
  if isinstance(value, gin_config.ConfigurableReference):
    yield value.config_key
  elif isinstance(value, dict):
    for k, v in value.items():
      yield from _references(k)
      yield from _references(v)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      yield from _references(v)


def _macros() -> tuple[dict, set]:
  """({macro: bound value}, names of the macros some binding refers to)."""
  # pylint: disable=protected-access
  config = gin_config._CONFIG
  # pylint: enable=protected-access
  defined = {scope: params.get("value")
             for (scope, selector), params in config.items()
             if selector == "gin.macro"}
  used = {scope for params in config.values() for v in params.values()
          for scope, selector in _references(v) if selector == "gin.macro"}
  return defined, used


def _is_required(value) -> bool:
  return (isinstance(value, gin_config.ConfigurableReference)
          and value.config_key == ("gin.REQUIRED", "gin.constant"))


def unset_required_macros() -> list[str]:
  """The macros still bound to %gin.REQUIRED that a binding uses (e.g.
  MODEL_DIR, INITIAL_CHECKPOINT): all of them, so that one message can
  name every value the user must pass."""
  defined, used = _macros()
  return sorted(name for name, value in defined.items()
                if name in used and _is_required(value))


def check_unused_macros(bindings: list[str]) -> None:
  """Refuses a command-line macro (`--gin.NAME=value`) that no binding
  uses: gin takes `--gin.VOCAB_SIZ=64` as a new macro and the run would go
  on with the gin file's VOCAB_SIZE."""
  _, used = _macros()
  for line in (l for b in bindings for l in b.splitlines() if l.strip()):
    key = line.split("=", 1)[0].strip()
    if "." in key or "/" in key or not key.isidentifier() or key in used:
      continue
    close = difflib.get_close_matches(key, sorted(used), n=1)
    hint = (f"Did you mean {close[0]}? " if close else "") + (
        f"The macros the gin files use: {sorted(used)}.")
    raise SystemExit(
        f"--gin.{key}={line.split('=', 1)[1].strip()} sets the macro {key}, "
        f"which no gin file or binding uses, so it would change nothing. "
        f"{hint}")
