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

"""The one path type of the checkpoint code: `etils.epath.Path`.

Why: T5X users keep MODEL_DIR and checkpoints on `gs://`. Orbax, TFDS and
seqio take such paths through `etils.epath` (or `tf.io.gfile`), while
`pathlib`, `os.path` and `open()` silently treat `gs://b/x` as a local
relative folder `gs:/b/x`. Every path in `ipo_md.checkpoints` is made here
and only epath methods touch it; `is_local` tells the few callers that need a
real local file (TensorStore's file driver, mmap) which case they are in.
"""

import json
import os
from typing import Any, Mapping

from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
  """`path` as an epath.Path; local paths are made absolute (Orbax needs it),
  URIs (`gs://...`) are kept as they are."""
  path = epath.Path(path)
  return path if is_remote(path) else path.resolve()


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URI (`gs://`, `s3://`, ...) rather than local."""
  return "://" in os.fspath(path)


def is_local(path: PathLike) -> bool:
  return not is_remote(path)


def scheme(path: PathLike) -> str:
  """'gs', 's3', ... for a URI; 'file' for a local path."""
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else "file"


def write_json(path: PathLike, data: Mapping[str, Any]) -> None:
  """Writes JSON so that a reader never sees a partial file: a temporary
  name then a rename locally; one object write on a bucket (objects appear
  whole, and a rename there would be a copy)."""
  path = as_path(path)
  text = json.dumps(data, indent=2, sort_keys=True) + "\n"
  if is_remote(path):
    path.write_text(text)
    return
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(path)


def read_json(path: PathLike, *, what: str) -> Any:
  """Parsed JSON of `path`; FileNotFoundError / ValueError naming `what`."""
  path = as_path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No {what} at {path}.")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} ({what}) is not valid JSON: {e}.") from e
