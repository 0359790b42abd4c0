"""Gin at the edge: --gin_file, --gin.KEY=VALUE, --gin_bindings, search paths.

Everything here turns a user's mistake into one message that names the thing
and the fix, before any model is built.
"""

import argparse
import ast
import logging
import os
import pathlib

import gin

# The repository's gin/ folder (an editable install keeps it beside the code).
DEFAULT_SEARCH_PATHS = (
    str(pathlib.Path(__file__).resolve().parents[2] / "gin"),
    str(pathlib.Path(__file__).resolve().parents[2]),
)


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


def _resolve(gin_file: str, search_paths: list[str]) -> str:
  if os.path.isfile(gin_file):
    return gin_file
  for path in search_paths:
    candidate = os.path.join(path, gin_file)
    if os.path.isfile(candidate):
      return candidate
  raise SystemExit(
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
  files = [_resolve(f, search) for f in args.gin_file]
  if not files:
    raise SystemExit("No --gin_file given; e.g. --gin_file=gin/ipo_md_tiny.gin")
  bindings = list(args.gin_bindings) + dot_bindings
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, SyntaxError, ImportError, IOError) as e:
    raise SystemExit(
        f"Invalid gin configuration: {e}\nCheck the names in your gin files "
        "and --gin.* bindings (a configurable's path is module.function.arg; "
        "run with the file's `import` lines intact).") from e
