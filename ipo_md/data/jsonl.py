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

"""Eager, validated reading of JSON-lines files (local or any tf.io.gfile path).

Data files are read and checked in a plain Python pass before any tf.data
pipeline exists, so a bad line fails when the iterator is created, with the
file, the line number, the field and the fix, instead of deep inside tf.data
mid-training. With `on_bad_example="skip"` bad lines are dropped and counted,
with one warning per file.
"""

from collections.abc import Callable, Mapping
import json
from typing import Any

from absl import logging
from ipo_md.data import errors
import tensorflow as tf

RAISE = "raise"
SKIP = "skip"
ON_BAD_EXAMPLE = (RAISE, SKIP)
_SKIP_HINT = ("fix or delete the line, or drop bad lines with a warning: "
              "on_bad_example='skip' (gin: ipo_md_tasks.register_tldr_tasks."
              "on_bad_example = 'skip')")


class BadRecordError(errors.DataError):
  """One field of one record is unusable."""

  def __init__(self, field: str, problem: str):
    super().__init__(f"field {field!r} {problem}")
    self.field = field
    self.problem = problem


def check_on_bad_example(value: str) -> None:
  if value not in ON_BAD_EXAMPLE:
    raise errors.DataError(
        f"on_bad_example={value!r} must be one of {ON_BAD_EXAMPLE}.")


def get_field(record: Mapping[str, Any], field: str) -> Any:
  """The value at dotted `field` ("info.post"); BadRecordError if absent."""
  value = record
  for i, key in enumerate(field.split(".")):
    if not isinstance(value, Mapping):
      parent = ".".join(field.split(".")[:i])
      raise BadRecordError(parent, f"is {type(value).__name__}, not an object")
    if key not in value:
      raise BadRecordError(field, "is missing")
    value = value[key]
  return value


def get_text(record: Mapping[str, Any], field: str) -> str:
  """A non-empty string field; BadRecordError if missing, not text or empty."""
  return check_text(get_field(record, field), field)


def check_text(value: Any, field: str) -> str:
  """`value` if it is a non-empty string, else BadRecordError on `field`."""
  if not isinstance(value, str):
    raise BadRecordError(
        field, f"is {type(value).__name__} {str(value)[:40]!r}, not a string")
  if not value.strip():
    raise BadRecordError(field, "is empty")
  return value


def read_records(
    path: str,
    parse: Callable[[Mapping[str, Any]], dict[str, Any] | None],
    *,
    on_bad_example: str = RAISE,
    missing_hint: str = "",
) -> list[dict[str, Any]]:
  """Parses every line of a JSON-lines file with `parse`, eagerly.

  Args:
    path: the file, local or `gs://...`.
    parse: JSON object -> record, or None to leave it out on purpose (e.g.
      another split); raises BadRecordError for an unusable line.
    on_bad_example: "raise" (the default) or "skip".
    missing_hint: appended to the error when the file does not exist or is
      empty, e.g. where to download it.

  Returns:
    The parsed records, in file order.

  Raises:
    MissingDataError: the file does not exist.
    DataError: the file has no JSON line, or (with "raise") a line is not
      UTF-8, not a JSON object or not what `parse` accepts.
  """
  check_on_bad_example(on_bad_example)
  if not tf.io.gfile.exists(path):
    raise errors.MissingDataError(
        f"{path}: no such file. {missing_hint}".strip())
  if tf.io.gfile.isdir(path):
    raise errors.DataError(
        f"{path} is a folder, not a JSON-lines file. {missing_hint}".strip())
  records, bad, num_lines = [], [], 0
  # Bytes, decoded line by line, so that a non-UTF-8 line is reported with
  # its number instead of failing the whole read.
  with tf.io.gfile.GFile(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      num_lines += 1
      try:
        record = parse(_load_object(raw))
      except BadRecordError as e:
        message = f"{path}, line {line_number}: {e}"
        if on_bad_example == RAISE:
          raise errors.DataError(f"{message}; {_SKIP_HINT}.") from None
        bad.append(message)
        continue
      if record is not None:
        records.append(record)
  if not num_lines:
    raise errors.DataError(
        f"{path} is empty: it has no JSON lines. Point the task at the "
        f"complete file. {missing_hint}".strip())
  if bad:
    logging.warning("Skipped %d bad lines of %s (on_bad_example='skip'); "
                    "the first: %s", len(bad), path, bad[0])
  return records


def _load_object(raw: bytes) -> Mapping[str, Any]:
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadRecordError(
        "<line>", f"is not UTF-8 (byte {raw[e.start:e.start + 1]!r} at "
        f"column {e.start + 1}); re-encode the file as UTF-8 (e.g. `iconv "
        "-f latin1 -t utf-8`)") from None
  try:
    value = json.loads(line)
  except json.JSONDecodeError as e:
    raise BadRecordError("<line>", f"is not valid JSON ({e.msg} at column "
                         f"{e.colno})") from None
  if not isinstance(value, Mapping):
    raise BadRecordError("<line>", f"is a JSON {type(value).__name__}, not "
                         "an object")
  return value
