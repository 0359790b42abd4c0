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

"""Tensor-at-a-time reading and writing of Hugging Face weight files.

Reading: `open_weights(directory)` opens `model.safetensors`, a sharded
`model.safetensors.index.json`, `pytorch_model.bin` or its sharded index, and
hands out one numpy tensor per `read(key)` call, so an import never holds more
than the tensor in flight besides what it has already converted. safetensors
files are parsed here (the header, then one seek and read per tensor) through
`etils.epath`, so a folder on `gs://` is read in place, with no torch and no
local copy; a truncated file is reported with the tensor it cuts. `.bin`
files need torch and are opened with `mmap=True` when local.

Writing: `write_safetensors` streams tensors into the safetensors format (an
8-byte little-endian header size, a JSON header of dtypes, shapes and byte
offsets, then the raw little-endian bytes), asking a callback for one tensor
at a time, so an export or a benchmark never materialises the whole model.
"""

import json
import math
import os
import struct
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import ml_dtypes
import numpy as np

from ipo_md.checkpoints import paths

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)

_ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}
_ST_READ = {
    **{code: dtype for dtype, code in _ST_DTYPES.items()},
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8), "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16), "U32": np.dtype(np.uint32),
}
_MAX_HEADER = 100 << 20


class WeightSource:
  """Named tensors of one checkpoint; `read` returns one numpy array."""

  def __init__(self, description: str, shapes: Mapping[str, tuple[int, ...]],
               reader: Callable[[str], np.ndarray], closer: Callable[[], None]):
    self.description = description
    self._shapes = dict(shapes)
    self._reader = reader
    self._closer = closer

  def keys(self) -> list[str]:
    return list(self._shapes)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._shapes[key]

  def read(self, key: str) -> np.ndarray:
    return self._reader(key)

  def __enter__(self) -> "WeightSource":
    return self

  def __exit__(self, *exc) -> None:
    self._closer()


def find_weight_file(directory: epath.Path) -> epath.Path | None:
  for name in WEIGHT_FILES:
    if (directory / name).is_file():
      return directory / name
  return None


def _shard_files(directory: epath.Path, index_name: str) -> list[epath.Path]:
  index = paths.read_json(directory / index_name, what="weight index")
  if "weight_map" not in index:
    raise ValueError(f"{directory / index_name} has no 'weight_map'.")
  files = sorted(set(index["weight_map"].values()))
  missing = [f for f in files if not (directory / f).is_file()]
  if missing:
    raise FileNotFoundError(
        f"{directory / index_name} lists shard files that are missing: "
        f"{missing}. Download the complete checkpoint.")
  return [directory / f for f in files]


def _read_header(path: epath.Path) -> tuple[dict[str, Any], int]:
  """(tensor name -> entry, byte offset of the data) of a safetensors file;
  every entry's dtype, shape and offsets are checked against the file size."""
  size = path.stat().length
  with path.open("rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise ValueError(f"{path} is not a safetensors file ({size} bytes).")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(size - 8, _MAX_HEADER):
      raise ValueError(f"{path} is not a safetensors file or is truncated: "
                       f"its header claims {length} bytes of {size}.")
    try:
      header = json.loads(f.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: the safetensors header is not JSON: {e}.") \
          from e
  header.pop("__metadata__", None)
  start = 8 + length
  for name, entry in header.items():
    if entry.get("dtype") not in _ST_READ:
      raise ValueError(f"{path}: tensor {name!r} has dtype "
                       f"{entry.get('dtype')!r}; readable: {sorted(_ST_READ)}.")
    begin, end = entry["data_offsets"]
    want = math.prod(entry["shape"]) * _ST_READ[entry["dtype"]].itemsize
    if end - begin != want:
      raise ValueError(f"{path}: tensor {name!r} spans {end - begin} bytes, "
                       f"but {entry['dtype']} {entry['shape']} needs {want}.")
    if start + end > size:
      raise ValueError(
          f"{path} is truncated: tensor {name!r} needs bytes up to "
          f"{start + end}, the file has {size}. Download it again.")
  return header, start


def _read_safetensor(path: epath.Path, entry: Mapping[str, Any], start: int
                     ) -> np.ndarray:
  # One open, seek and read per tensor: only the tensor in flight is held.
  begin, end = entry["data_offsets"]
  with path.open("rb") as f:
    f.seek(start + begin)
    data = f.read(end - begin)
  dtype = _ST_READ[entry["dtype"]].newbyteorder("<")
  return np.frombuffer(data, dtype=dtype).reshape(entry["shape"]).astype(
      dtype.newbyteorder("="), copy=False)


def _open_safetensors(files: Sequence[epath.Path], description: str
                      ) -> WeightSource:
  entries = {}
  for path in files:
    header, start = _read_header(path)
    for key, entry in header.items():
      entries[key] = (path, entry, start)
  shapes = {k: tuple(e["shape"]) for k, (_, e, _) in entries.items()}
  return WeightSource(description, shapes,
                      lambda k: _read_safetensor(*entries[k]), lambda: None)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _torch_load(path: epath.Path) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  if paths.is_local(path):
    return torch.load(os.fspath(path), map_location="cpu", mmap=True,
                      weights_only=True)
  with path.open("rb") as f:  # No mmap on a bucket: read through epath.
    return torch.load(f, map_location="cpu", weights_only=True)


def _open_torch(files: Sequence[epath.Path], description: str
                ) -> WeightSource:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(
        f"{description} is a PyTorch pickle; reading it needs torch (pip "
        "install 'ipo-md[hf]'), or save the model as model.safetensors.") from e
  tensors = {}
  for f in files:
    tensors.update(_torch_load(f))
  shapes = {k: tuple(v.shape) for k, v in tensors.items()}
  return WeightSource(description, shapes,
                      lambda k: _torch_to_numpy(tensors[k]), tensors.clear)


def open_weights(directory: str | os.PathLike) -> WeightSource:
  """Opens the weights of a Hugging Face model folder (see module doc)."""
  directory = paths.as_path(directory)
  path = find_weight_file(directory)
  if path is None:
    raise FileNotFoundError(
        f"No weights in {directory}: expected one of {list(WEIGHT_FILES)}.")
  if path.name == SAFETENSORS:
    return _open_safetensors([path], str(path))
  if path.name == SAFETENSORS_INDEX:
    return _open_safetensors(_shard_files(directory, path.name), str(path))
  if path.name == TORCH_BIN:
    return _open_torch([path], str(path))
  return _open_torch(_shard_files(directory, path.name), str(path))


def _header(specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
            metadata: Mapping[str, str] | None) -> bytes:
  header: dict[str, Any] = {}
  offset = 0
  for name, shape, dtype in specs:
    dtype = np.dtype(dtype)
    if dtype not in _ST_DTYPES:
      raise ValueError(f"Cannot write {name} as {dtype} in safetensors; use "
                       f"one of {[str(d) for d in _ST_DTYPES]}.")
    size = math.prod(shape) * dtype.itemsize
    header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  return blob + b" " * (-len(blob) % 8)  # Aligns the data to 8 bytes.


def write_safetensors(path: str | os.PathLike,
                      specs: Sequence[tuple[str, tuple[int, ...], Any]],
                      produce: Callable[[str], np.ndarray], *,
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes a safetensors file, one tensor in memory at a time.

  Args:
    path: the file to write (locally, to a temporary name, then renamed; on
      a bucket, as one object, which appears only once complete).
    specs: (name, shape, dtype) of every tensor, in file order.
    produce: name -> the tensor, called once per name in `specs` order; it
      must return exactly the declared shape and dtype.
    metadata: string -> string header metadata (transformers wants
      {"format": "pt"}).
  """
  header = _header(specs, metadata)
  path = paths.as_path(path)
  local = paths.is_local(path)
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}" if local else path
  with tmp.open("wb") as f:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for name, shape, dtype in specs:
      array = produce(name)
      if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise ValueError(
            f"write_safetensors: {name} was declared {tuple(shape)} "
            f"{np.dtype(dtype)} but produced {array.shape} {array.dtype}.")
      array = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                 copy=False)
      data = memoryview(array.reshape(-1).view(np.uint8))
      f.write(data if local else data.tobytes())  # gfile wants bytes.
  if tmp != path:
    tmp.replace(path)
