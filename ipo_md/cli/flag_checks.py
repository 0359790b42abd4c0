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

"""Checks of command-line values, made before a command does any work.

A command that converts a checkpoint or runs the theory lab for a minute must
not fail at its last step because `--to` lies under a regular file: every
flag is checked first, and a mistake is one line naming the flag, its value
and the fix, with exit status 2 (`UsageError`, or argparse's own errors for
the `type=` functions below).
"""

import argparse
import math
import os

from etils import epath


class UsageError(ValueError):
  """A bad command-line value; the message names the flag and the fix."""


def _number(text: str, kind, flag_hint: str):
  try:
    value = kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not {flag_hint}") from None
  if isinstance(value, float) and not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"{text!r} is not {flag_hint}")
  return value


def int_at_least(minimum: int):
  """An argparse type: an integer >= `minimum` (no fractions, no signs
  below it)."""

  def parse(text: str) -> int:
    value = _number(text, int, f"an integer >= {minimum}")
    if value < minimum:
      raise argparse.ArgumentTypeError(
          f"{value} is not an integer >= {minimum}")
    return value

  parse.__name__ = f"int >= {minimum}"
  return parse


def positive_float(text: str) -> float:
  """An argparse type: a finite float > 0."""
  value = _number(text, float, "a finite number > 0")
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{value} is not a finite number > 0")
  return value


def open_unit_float(text: str) -> float:
  """An argparse type: a float strictly between 0 and 1."""
  value = _number(text, float, "a number in (0, 1)")
  if not 0.0 < value < 1.0:
    raise argparse.ArgumentTypeError(f"{value} is not a number in (0, 1)")
  return value


def _is_remote(path: str) -> bool:
  return "://" in path


def input_dir(path: str, flag: str, what: str) -> epath.Path:
  """`path` as an existing folder, else UsageError naming `flag`."""
  if not path:
    raise UsageError(f"{flag} is empty; give the folder of {what}.")
  p = epath.Path(path)
  if not p.exists():
    raise UsageError(f"{flag} {path}: no such folder; give the folder of "
                     f"{what}.")
  if not p.is_dir():
    raise UsageError(f"{flag} {path} is a file, not a folder; give the folder "
                     f"of {what}.")
  return p


def output_dir(path: str, flag: str, *, must_be_empty: bool) -> epath.Path:
  """Checks that `path` can become the output folder, before any work.

  Args:
    path: the folder to write (created later, with its parents).
    flag: the flag's name for the message, e.g. "--to".
    must_be_empty: refuse an existing folder that holds anything (a command
      that would mix its files with another's).

  Returns:
    The path.

  Raises:
    UsageError: the path is empty, is a file, lies under a file, is a
      non-empty folder (with must_be_empty) or is not writable.
  """
  if not path:
    raise UsageError(f"{flag} is empty; give a folder to write, e.g. "
                     f"{flag} /tmp/out.")
  p = epath.Path(path)
  if p.exists():
    if not p.is_dir():
      raise UsageError(f"{flag} {path} is a file; give a folder path (a new "
                       "one, or delete the file).")
    if must_be_empty and any(p.iterdir()):
      raise UsageError(f"{flag} {path} already exists and is not empty; "
                       "choose a new folder or delete it first.")
  if _is_remote(path):
    return p
  ancestor = os.path.abspath(path)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise UsageError(f"{flag} {path} lies under {ancestor}, which is a file, "
                     "not a folder; choose a path under a folder.")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise UsageError(f"{flag} {path}: cannot write in {ancestor} (permission "
                     "denied); choose a folder you can write.")
  return p
