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

"""Reading the params (sub)tree of any Orbax PyTree checkpoint.

Shared by our params checkpoints (the whole tree), training checkpoints (the
`params` entry of the train state) and T5X's Orbax checkpoints (`target`):
the shapes come from the checkpoint's metadata without reading a tensor, and
the restore reads only the requested subtree, each array straight into its
target sharding and dtype (optimizer state is never read).
"""

import os
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from ipo_md.checkpoints import paths
from ipo_md.checkpoints import t5_layout

Shape = tuple[int, ...]


def _metadata_tree(path: epath.Path) -> Any:
  # The handler, not a Checkpointer: item folders (a train step's `state/`)
  # have no checkpoint-level metadata file to look for.
  metadata = ocp.PyTreeCheckpointHandler().metadata(path)
  return getattr(metadata, "tree", metadata)


def subtree_shapes(path: str | os.PathLike, subtree: str | None
                   ) -> dict[str, Shape]:
  """'/'-joined path -> shape of every array under `tree[subtree]` (or all)."""
  path = paths.as_path(path)
  tree = _metadata_tree(path)
  if subtree is not None:
    if not isinstance(tree, dict) or subtree not in tree:
      found = list(tree) if isinstance(tree, dict) else type(tree).__name__
      raise ValueError(
          f"{path} has no {subtree!r} entry at its top level (found {found}); "
          "it is not the kind of checkpoint expected here.")
    tree = tree[subtree]
  return {p: tuple(m.shape) for p, m in t5_layout.flatten(tree).items()}


def restore_subtree(path: str | os.PathLike, shapes: dict[str, Shape], dtype,
                    shardings: Any, subtree: str | None) -> dict[str, Any]:
  """Restores the arrays of `shapes` (from `subtree_shapes`), cast to `dtype`.

  Args:
    path: the Orbax checkpoint directory.
    shapes: path -> shape of the arrays to restore.
    dtype: their target dtype.
    shardings: None (first device), one Sharding, or a pytree matching the
      params; each array is restored directly into its sharding.
    subtree: top-level entry holding the params, or None for the whole tree.

  Returns:
    The nested (unboxed) params dict.
  """
  lookup = t5_layout.shardings_lookup(shardings)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = t5_layout.unflatten({
      p: jax.ShapeDtypeStruct(s, dtype, sharding=lookup(p) or default)
      for p, s in shapes.items()})
  if subtree is not None:
    target = {subtree: target}
  restore_args = jax.tree_util.tree_map(
      lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                     dtype=s.dtype), target)
  restored = ocp.PyTreeCheckpointer().restore(
      paths.as_path(path), args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args,
          partial_restore=subtree is not None))
  return restored if subtree is None else restored[subtree]
