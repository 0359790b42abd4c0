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

"""An in-memory `gs://` filesystem for tests, plugged into `etils.epath`.

Why: code that must work on buckets is only proven to when its paths never
touch `pathlib`, `os.path` or `open()`. Inside `fake_gcs()`, every
`epath.Path("gs://...")` is served by `MemoryBackend` (a dict of bytes, with
GCS's implicit folders) instead of TensorFlow's GCS client, while
`pathlib`/`os` calls on such a string would go to a local relative folder
named `gs:`, which the context manager asserts was never created. TensorStore
(Orbax's tensor I/O) does not go through epath, so Orbax tensor files cannot
live here; see the tests for what does.
"""

import contextlib
import fnmatch
import io
import os
import posixpath
import tempfile
from typing import Iterator
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath
from etils.epath import stat_utils


class _File(io.BytesIO):
  """A writable buffer that stores its bytes in the backend on close."""

  def __init__(self, store: "MemoryBackend", path: str, initial: bytes):
    super().__init__(initial)
    self.seek(0, io.SEEK_END)
    self._store, self._path = store, path

  def close(self):
    if not self.closed:
      self._store.files[self._path] = self.getvalue()
    super().close()


class MemoryBackend(backend_lib.Backend):
  """GCS-like semantics: folders exist while they hold a file, or once
  created; renaming a folder renames every object under it."""

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.dirs: set[str] = set()

  @staticmethod
  def _norm(path) -> str:
    path = os.fspath(path)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest)}".rstrip("/")

  def _children(self, path: str) -> set[str]:
    prefix = path + "/"
    names = set()
    for p in list(self.files) + list(self.dirs):
      if p.startswith(prefix):
        names.add(p[len(prefix):].split("/", 1)[0])
    return names

  def _is_bucket(self, path: str) -> bool:
    return "/" not in path.split("://", 1)[1]

  def open(self, path, mode):
    path = self._norm(path)
    if "r" in mode:
      if path not in self.files:
        raise FileNotFoundError(f"{path} not found")
      data = self.files[path]
      return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())
    if self.isdir(path):
      raise IsADirectoryError(path)
    initial = self.files.get(path, b"") if "a" in mode else b""
    raw = _File(self, path, initial)
    self.files[path] = initial  # Visible (empty) from the first write on.
    if "b" in mode:
      return raw
    return io.TextIOWrapper(raw, encoding="utf-8", write_through=True)

  def exists(self, path) -> bool:
    path = self._norm(path)
    return path in self.files or self.isdir(path)

  def isdir(self, path) -> bool:
    path = self._norm(path)
    return (self._is_bucket(path) or path in self.dirs
            or bool(self._children(path)))

  def listdir(self, path) -> list[str]:
    path = self._norm(path)
    if not self.isdir(path):
      raise FileNotFoundError(f"{path} is not a folder")
    return sorted(self._children(path))

  def glob(self, path) -> list[str]:
    path = self._norm(path)
    return sorted(p for p in set(self.files) | self.dirs
                  if fnmatch.fnmatchcase(p, path))

  def walk(self, top, *, top_down=True, on_error=None
           ) -> Iterator[tuple[str, list[str], list[str]]]:
    del on_error
    top = self._norm(top)
    names = self.listdir(top)
    dirs = [n for n in names if self.isdir(f"{top}/{n}")]
    files = [n for n in names if n not in dirs]
    if top_down:
      yield top, dirs, files
    for d in dirs:
      yield from self.walk(f"{top}/{d}", top_down=top_down)
    if not top_down:
      yield top, dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None) -> None:
    del mode
    path = self._norm(path)
    if path in self.files:
      raise FileExistsError(f"{path} is a file")
    if self.isdir(path) and not exist_ok:
      raise FileExistsError(path)
    while not self._is_bucket(path):
      self.dirs.add(path)
      path = posixpath.dirname(path)

  def mkdir(self, path, *, exist_ok=False, mode=None) -> None:
    self.makedirs(path, exist_ok=exist_ok, mode=mode)

  def rmtree(self, path) -> None:
    path = self._norm(path)
    if not self.exists(path):
      raise FileNotFoundError(path)
    prefix = path + "/"
    self.files = {p: v for p, v in self.files.items()
                  if p != path and not p.startswith(prefix)}
    self.dirs = {p for p in self.dirs
                 if p != path and not p.startswith(prefix)}

  def remove(self, path) -> None:
    path = self._norm(path)
    if path not in self.files:
      if self.isdir(path) and not self._children(path):
        self.dirs.discard(path)
        return
      raise FileNotFoundError(path)
    del self.files[path]

  def _move(self, path: str, dst: str) -> None:
    if path in self.files:
      self.files[dst] = self.files.pop(path)
      return
    if not self.isdir(path):
      raise FileNotFoundError(path)
    prefix = path + "/"
    for p in [p for p in self.files if p.startswith(prefix)]:
      self.files[dst + p[len(path):]] = self.files.pop(p)
    for p in [p for p in self.dirs if p == path or p.startswith(prefix)]:
      self.dirs.discard(p)
      self.dirs.add(dst + p[len(path):])

  def rename(self, path, dst) -> None:
    path, dst = self._norm(path), self._norm(dst)
    if self.exists(dst):
      raise FileExistsError(f"{dst} exists")
    self._move(path, dst)

  def replace(self, path, dst) -> None:
    path, dst = self._norm(path), self._norm(dst)
    if self.isdir(dst):
      raise IsADirectoryError(dst)
    self._move(path, dst)

  def copy(self, path, dst, overwrite) -> None:
    path, dst = self._norm(path), self._norm(dst)
    if not overwrite and self.exists(dst):
      raise FileExistsError(dst)
    self.files[dst] = self.files[path]

  def stat(self, path) -> stat_utils.StatResult:
    path = self._norm(path)
    if path in self.files:
      return stat_utils.StatResult(is_directory=False,
                                   length=len(self.files[path]), mtime=0)
    if self.isdir(path):
      return stat_utils.StatResult(is_directory=True, length=0, mtime=0)
    raise FileNotFoundError(path)


@contextlib.contextmanager
def fake_gcs() -> Iterator[MemoryBackend]:
  """Serves every `gs://` epath from memory for the duration (see module doc).

  The current directory is a fresh temporary one, and on exit it must still
  be empty: a `pathlib`/`os` call on a `gs://` string would have created a
  local `gs:` folder there.
  """
  store = MemoryBackend()
  cwd = os.getcwd()
  backends = gpath._PREFIX_TO_BACKEND  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as scratch, \
      mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
      mock.patch.dict(backends, {"gs": store}):
    os.chdir(scratch)
    try:
      yield store
    finally:
      os.chdir(cwd)
      leaked = os.listdir(scratch)
    if leaked:
      raise AssertionError(
          f"Code under test wrote {leaked} to the local folder instead of "
          "the fake gs:// filesystem: a path went through pathlib/os.")
