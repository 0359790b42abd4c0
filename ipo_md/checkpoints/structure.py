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

"""Does a saved train state fit the run's target tree and mesh?

Why: a checkpoint whose tree or shapes differ from the run's state is not
damaged, the configuration is wrong (another model size, another optimizer),
and the fix is the user's; setting such a checkpoint aside would hide good
work. Orbax's own errors for this case read like corruption, so the shapes
recorded in the checkpoint's metadata (read without touching a tensor) are
compared with the target first, and a target sharding that cannot hold a
shape (another mesh whose axis does not divide a dimension) is named before
any read. Dtypes may differ: Orbax casts on restore.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp

from ipo_md.checkpoints import finite
from ipo_md.checkpoints import paths

Shape = tuple[int, ...]
_SHOWN = 6


class CheckpointMismatchError(ValueError):
  """The checkpoint's tree or shapes differ from the target (configuration
  error, not damage), or the target mesh cannot hold a saved shape."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, (list, tuple)):
    items = enumerate(tree)
  else:
    return {} if tree is None else {prefix: tree}
  flat = {}
  for key, value in items:
    flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
  return flat


def saved_shapes(state_dir: paths.PathLike) -> dict[str, Shape]:
  """'/'-joined leaf path -> shape, from an Orbax PyTree item's metadata."""
  metadata = ocp.PyTreeCheckpointHandler().metadata(paths.as_path(state_dir))
  tree = getattr(metadata, "tree", metadata)
  return {p: tuple(m.shape) for p, m in _flatten(tree).items()}


def target_shapes(abstract_state: Any) -> dict[str, tuple[Shape, Any]]:
  """'/'-joined leaf path -> (shape, sharding or None) of the target."""
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract_state)
  return {finite.key_path_str(p): (tuple(x.shape), getattr(x, "sharding",
                                                           None))
          for p, x in flat}


def _listed(names: list[str]) -> str:
  more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
  return ", ".join(names[:_SHOWN]) + more


def check_fits(saved: dict[str, Shape], abstract_state: Any, *, where: str
               ) -> None:
  """Raises CheckpointMismatchError if `saved` (from `saved_shapes`) cannot
  be restored into `abstract_state`."""
  target = target_shapes(abstract_state)
  missing = sorted(set(target) - set(saved))
  extra = sorted(set(saved) - set(target))
  shapes = [f"{p} is {saved[p]} there, {target[p][0]} here"
            for p in sorted(set(saved) & set(target))
            if saved[p] != target[p][0]]
  problems = []
  if shapes:
    problems.append("shapes differ: " + _listed(shapes))
  if missing:
    problems.append("the run has entries the checkpoint lacks: "
                    + _listed(missing))
  if extra:
    problems.append("the checkpoint has entries the run lacks: "
                    + _listed(extra))
  if problems:
    raise CheckpointMismatchError(
        f"Checkpoint {where} does not fit this run's train state ("
        + "; ".join(problems) + "). This is a configuration difference, not "
        "damage: nothing was moved. Configure the model and optimizer it was "
        "trained with, or use a fresh MODEL_DIR.")
  _check_placeable(target, where)


def _check_placeable(target: dict[str, tuple[Shape, Any]], where: str
                     ) -> None:
  for path, (shape, sharding) in target.items():
    if sharding is None:
      continue
    try:
      sharding.shard_shape(shape)
    except ValueError as e:
      mesh = getattr(sharding, "mesh", None)
      axes = dict(mesh.shape) if mesh is not None else "its devices"
      spec = getattr(sharding, "spec", sharding)
      raise CheckpointMismatchError(
          f"Cannot restore {path} of {where} (shape {shape}) onto this "
          f"topology: sharding {spec} over mesh {axes} does not divide it. "
          "Choose mesh axis sizes that divide the dimension, or "
          "shard that dimension over another axis.") from e
