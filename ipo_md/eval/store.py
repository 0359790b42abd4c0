# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""On-disk caches of an evaluation: keys, atomic files, append-only logs.

Sampling a policy and asking an LLM judge are the slow, paid parts of an
evaluation, so both are cached and a rerun costs nothing. Two rules keep the
caches trustworthy when a run dies half-way (preemption, Ctrl-C, a judge that
stops answering):

* Whole files (samples, verdicts of a pair of policies) are written to a
  temporary file in the same folder and renamed into place, so a reader sees
  either the old file, the complete new one, or none.
* The LLM judge's cache is an append-only JSON-lines log: one complete line
  per successful verdict, written with a single `write` under a lock and
  flushed. A torn last line (a crash mid-write) is skipped on load, and the
  next append starts on a fresh line, so it never spoils later records.
  Failed calls write nothing.

Keys are SHA-256 digests of canonical JSON, so a key changes exactly when
something that determines the cached value changes.
"""

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import threading
from typing import Any

import jax
import numpy as np


def digest(value: Any) -> str:
  """Hex SHA-256 of `value` as canonical JSON (sorted keys)."""
  text = json.dumps(value, sort_keys=True, separators=(",", ":"),
                    default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(tree: Any) -> str:
  """A digest of a pytree of arrays: structure, shapes, dtypes and, per
  leaf, the float64 sum and sum of squares (one host read per leaf)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  summary = [str(treedef)]
  for leaf in leaves:
    x = np.asarray(jax.device_get(leaf))
    summary.append([list(x.shape), str(x.dtype),
                    float(np.sum(x, dtype=np.float64)),
                    float(np.sum(np.square(x, dtype=np.float64)))])
  return digest(summary)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
  """Writes `value` as JSON to `path` via a temporary file and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(value, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_jsonl_atomic(path: str | os.PathLike, rows: list[Any]) -> None:
  """Writes JSON lines to `path` via a temporary file and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def read_json(path: str | os.PathLike) -> Any | None:
  """The JSON value at `path`, or None when it is absent or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_jsonl(path: str | os.PathLike) -> list[Any] | None:
  """The rows of a JSON-lines file, or None when absent or not valid."""
  try:
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError):
    return None


class AppendLog:
  """An append-only JSON-lines log of records keyed by their "key" field.

  Thread-safe; see the module docstring for why a crash cannot corrupt it.
  """

  def __init__(self, path: str | os.PathLike | None):
    self.path = None if path is None else pathlib.Path(path)
    self._lock = threading.Lock()
    self._records: dict[str, dict] = {}
    self._needs_newline = False
    self.skipped_lines = 0
    if self.path is not None and self.path.exists():
      self._load()

  def _load(self) -> None:
    data = self.path.read_bytes()
    self._needs_newline = bool(data) and not data.endswith(b"\n")
    for number, line in enumerate(data.splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        self._records[str(record["key"])] = record
      except (ValueError, KeyError, TypeError):
        self.skipped_lines += 1
        logging.warning("%s: skipping unreadable line %d (a crash while "
                        "writing it?).", self.path, number)

  def __len__(self) -> int:
    return len(self._records)

  def get(self, key: str) -> dict | None:
    with self._lock:
      return self._records.get(key)

  def put(self, record: dict) -> None:
    """Appends `record` (which has a "key") as one line and flushes it."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with self._lock:
      self._records[str(record["key"])] = record
      if self.path is None:
        return
      self.path.parent.mkdir(parents=True, exist_ok=True)
      data = (("\n" if self._needs_newline else "") + line).encode("utf-8")
      fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      try:
        while data:  # One write() in practice; loop on a partial write.
          data = data[os.write(fd, data):]
      finally:
        os.close(fd)
      self._needs_newline = False
