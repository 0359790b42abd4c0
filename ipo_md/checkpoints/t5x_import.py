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

"""Native T5X checkpoints -> the framework's params.

T5X saves its train state as `{'target': params, 'state': {'step',
'param_states'}}` in a `checkpoint_<step>/` folder, in one of two layouts:

* Orbax (current T5X): a PyTree checkpoint (`_METADATA`, OCDBT/TensorStore
  files). Only `target` is restored, each array directly in its sharding.
* Legacy: a msgpack file named `checkpoint` holding
  `{'version', 'optimizer': {'target': ..., 'state': ...}}`, in which each large
  array is replaced by a TensorStore spec (zarr, relative path such as
  `target.encoder.layers_0.attention.query.kernel`) and small ones are inline;
  checkpoints written by early Orbax put a `PLACEHOLDER://<name>` string there
  instead. Arrays are read one at a time with TensorStore.

T5X's parameter names are the framework's, so no renaming is needed; the
optimizer state is never read. A T5X checkpoint carries no model config (it
lives in gin), so the config is inferred from the shapes: everything is fixed
by them except the activation of a gated MLP (assumed gated-GELU, T5 v1.1; pass
`mlp_activations` otherwise) and the relative-position max distance (128).
"""

import copy
import os
import re
from typing import Any, Callable, Mapping

from etils import epath
from flax import serialization
import ml_dtypes
import numpy as np
import tensorstore as ts

from ipo_md.checkpoints import orbax_tree
from ipo_md.checkpoints import paths
from ipo_md.checkpoints import t5_layout
from ipo_md.model import config as config_lib

Shape = tuple[int, ...]
LEGACY_FILE = "checkpoint"
ORBAX_FILE = "_METADATA"
TARGET = "target"
_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_PLACEHOLDER = "PLACEHOLDER://"


def _is_step_dir(path: epath.Path) -> bool:
  return (path / ORBAX_FILE).is_file() or (path / LEGACY_FILE).is_file()


def find_checkpoint_dir(path: str | os.PathLike, step: int | None = None
                        ) -> epath.Path:
  """`path` itself if it is one checkpoint, else its `checkpoint_<step>`
  (the latest unless `step`)."""
  path = paths.as_path(path)
  if _is_step_dir(path) and step is None:
    return path
  steps = {}
  if path.is_dir():
    for child in path.iterdir():
      match = _STEP_DIR.fullmatch(child.name)
      if match and _is_step_dir(child):
        steps[int(match.group(1))] = child
  if not steps:
    raise FileNotFoundError(
        f"No T5X checkpoint in {path}: expected a '{LEGACY_FILE}' or "
        f"'{ORBAX_FILE}' file, or checkpoint_<step>/ folders holding one.")
  if step is None:
    return steps[max(steps)]
  if step not in steps:
    raise FileNotFoundError(f"No checkpoint_{step} in {path}; found steps "
                            f"{sorted(steps)}.")
  return steps[step]


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
  try:
    find_checkpoint_dir(path)
  except (FileNotFoundError, OSError):
    return False
  return True


def _is_spec(value: Any) -> bool:
  return isinstance(value, Mapping) and "driver" in value and (
      "kvstore" in value or "path" in value)


def _flatten_target(tree: Mapping[str, Any], prefix: str = ""
                    ) -> dict[str, Any]:
  """Like t5_layout.flatten, but TensorStore spec dicts are leaves."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) and not _is_spec(value):
      flat.update(_flatten_target(value, path + "/"))
    else:
      flat[path] = value
  return flat


def kvstore_spec(path: epath.Path) -> dict[str, Any]:
  """The TensorStore kvstore of `path` (local or `gs://`)."""
  if paths.is_local(path):
    return {"driver": "file", "path": os.fspath(path)}
  if paths.scheme(path) == "gs":
    bucket, _, key = os.fspath(path)[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": key}
  raise ValueError(
      f"Cannot read the TensorStore arrays of the legacy T5X checkpoint "
      f"{path}: TensorStore reads local paths and gs://, not "
      f"{paths.scheme(path)}://. Copy the checkpoint to a local folder.")


def _local_spec(spec: Mapping[str, Any], ckpt_dir: epath.Path
                ) -> dict[str, Any]:
  """A T5X spec with its relative path resolved under `ckpt_dir`, where the
  checkpoint is now (wherever T5X wrote it, e.g. another bucket)."""
  spec = copy.deepcopy(dict(spec))
  relative = (spec.pop("kvstore")["path"] if "kvstore" in spec
              else spec.pop("path"))  # tensorstore < 0.1.14: top level.
  spec["kvstore"] = kvstore_spec(ckpt_dir / relative)
  return spec


def _legacy_leaf(value: Any, path: str, ckpt_dir: epath.Path, version: int
                 ) -> tuple[Shape, Callable[[], np.ndarray]]:
  """(shape, reader) of one leaf of a legacy T5X msgpack target tree."""
  if isinstance(value, str) and value.startswith(_PLACEHOLDER):
    name = value[len(_PLACEHOLDER):] or f"{TARGET}.{path.replace('/', '.')}"
    value = {"driver": "zarr", "kvstore": {"path": name}}
  if _is_spec(value):
    store = ts.open(_local_spec(value, ckpt_dir), open=True).result()

    def read() -> np.ndarray:
      array = store.read().result()
      if version < 3 and array.dtype == np.uint16:
        array = array.view(ml_dtypes.bfloat16)  # v2 stored bf16 as uint16.
      return array

    return tuple(store.shape), read
  array = np.asarray(value)
  return array.shape, lambda: array


def _legacy_target(ckpt_dir: epath.Path
                   ) -> dict[str, tuple[Shape, Callable[[], np.ndarray]]]:
  state = serialization.msgpack_restore((ckpt_dir / LEGACY_FILE).read_bytes())
  version = int(state.get("version", 0)) if isinstance(state, dict) else 0
  root = state.get("optimizer", state) if isinstance(state, dict) else None
  if not isinstance(root, dict) or TARGET not in root:
    found = list(root) if isinstance(root, dict) else type(state).__name__
    raise ValueError(
        f"{ckpt_dir / LEGACY_FILE}: no 'optimizer/{TARGET}' (or '{TARGET}') "
        f"tree (found {found}); this is not a T5X checkpoint.")
  return {path: _legacy_leaf(leaf, path, ckpt_dir, version)
          for path, leaf in _flatten_target(root[TARGET]).items()}


def _count_layers(shapes: Mapping[str, Shape], stack: str) -> int:
  pattern = re.compile(rf"{stack}/layers_(\d+)/")
  found = {int(m.group(1)) for p in shapes if (m := pattern.match(p))}
  return max(found) + 1 if found else 0


def infer_config(shapes: Mapping[str, Shape], *,
                 mlp_activations: tuple[str, ...] | None = None,
                 param_dtype: str = "float32", source: str = "checkpoint"
                 ) -> config_lib.T5Config:
  """The T5Config implied by a T5X target tree's shapes (see module doc)."""

  def need(path: str) -> Shape:
    if path not in shapes:
      raise ValueError(
          f"{source}: cannot infer the model config: no tensor {path!r} (found "
          f"{sorted(shapes)[:6]}...). Is this a T5 encoder-decoder?")
    return shapes[path]

  vocab_size, emb_dim = need("token_embedder/embedding")
  num_heads, buckets = need("encoder/relpos_bias/rel_embedding")
  joined = need("encoder/layers_0/attention/query/kernel")[1]
  if joined % num_heads:
    raise ValueError(f"{source}: query width {joined} is not a multiple of "
                     f"{num_heads} heads (from rel_embedding).")
  gated = sorted(p for p in shapes
                 if re.fullmatch(r"encoder/layers_0/mlp/wi_\d+/kernel", p))
  first = gated[0] if gated else "encoder/layers_0/mlp/wi/kernel"
  default = ("gelu", "linear") if len(gated) == 2 else ("relu",)
  activations = tuple(mlp_activations or default)
  if len(activations) != max(len(gated), 1):
    raise ValueError(
        f"{source}: the MLP has {max(len(gated), 1)} input projections but "
        f"mlp_activations={activations} names {len(activations)}.")
  return config_lib.T5Config(
      vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads,
      head_dim=joined // num_heads, mlp_dim=need(first)[1],
      num_encoder_layers=_count_layers(shapes, "encoder"),
      num_decoder_layers=_count_layers(shapes, "decoder"),
      mlp_activations=activations,
      logits_via_embedding="decoder/logits_dense/kernel" not in shapes,
      relative_attention_num_buckets=buckets, param_dtype=param_dtype)


def _target_shapes(ckpt_dir: epath.Path) -> tuple[dict[str, Shape], Any]:
  """Shapes of the `target` tree, and the legacy leaf readers (None for an
  Orbax checkpoint, which is restored as a whole)."""
  if (ckpt_dir / ORBAX_FILE).is_file():
    return orbax_tree.subtree_shapes(ckpt_dir, TARGET), None
  leaves = _legacy_target(ckpt_dir)
  return {p: shape for p, (shape, _) in leaves.items()}, leaves


def load_t5x_config(path: str | os.PathLike, *, step: int | None = None,
                    mlp_activations: tuple[str, ...] | None = None,
                    param_dtype: str = "float32") -> config_lib.T5Config:
  """The config `load_t5x` infers, without reading a tensor."""
  ckpt_dir = find_checkpoint_dir(path, step)
  shapes, _ = _target_shapes(ckpt_dir)
  return infer_config(shapes, mlp_activations=mlp_activations,
                      param_dtype=param_dtype, source=str(ckpt_dir))


def load_t5x(path: str | os.PathLike, *, step: int | None = None,
             config: config_lib.T5Config | None = None,
             mlp_activations: tuple[str, ...] | None = None,
             param_dtype: str = "float32", shardings: Any = None
             ) -> tuple[dict[str, Any], config_lib.T5Config]:
  """Imports the params (`target`) of a native T5X checkpoint.

  Args:
    path: a `checkpoint_<step>` folder, or the folder holding several (the
      latest, or `step`, is read).
    step: which checkpoint_<step> when `path` holds several.
    config: the model config (checked against the shapes); inferred from the
      shapes when None.
    mlp_activations: overrides the inferred MLP activations (inference only).
    param_dtype: dtype of the imported params (inference only).
    shardings: None, one Sharding, or a pytree matching the params.

  Returns:
    (params, config).
  """
  ckpt_dir = find_checkpoint_dir(path, step)
  shapes, leaves = _target_shapes(ckpt_dir)
  if config is None:
    config = infer_config(shapes, mlp_activations=mlp_activations,
                          param_dtype=param_dtype, source=str(ckpt_dir))
  t5_layout.check_shapes(shapes, config, source=str(ckpt_dir))
  dtype = config.jnp_param_dtype
  if leaves is None:
    params = orbax_tree.restore_subtree(ckpt_dir, shapes, dtype, shardings,
                                        TARGET)
    return params, config
  lookup = t5_layout.shardings_lookup(shardings)
  flat = {p: t5_layout.place(read(), dtype, lookup(p))
          for p, (_, read) in leaves.items()}
  return t5_layout.unflatten(flat), config
