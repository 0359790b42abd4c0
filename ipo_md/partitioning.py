"""Device mesh, the one logical-to-mesh rules table, and sharded jit.

Layers name dimensions with `ipo_md.axes`; this module alone maps them to the
mesh axes "data" and "model". Shardings of the train state are derived from
the abstract (eval_shape) parameters, never listed by hand, and a dimension
that cannot be split as the rules ask raises instead of silently replicating.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipo_md import axes

DATA = "data"
MODEL = "model"

# logical axis -> mesh axis (None = replicated). Batch on data; the wide
# dimensions of every matrix on model (Megatron-style tensor parallelism).
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    (axes.BATCH, DATA),
    (axes.VOCAB, MODEL),
    (axes.MLP, MODEL),
    (axes.HEADS, MODEL),
    (axes.JOINED_KV, MODEL),
    (axes.EMBED, None),
    (axes.KV, None),
    (axes.LENGTH, None),
    (axes.KV_LENGTH, None),
    (axes.RELPOS_BUCKETS, None),
    (axes.MLP_ACTIVATIONS, None),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """Mesh shape. `data=-1` takes all devices left after `model`."""

  data: int = -1
  model: int = 1

  def shape(self, num_devices: int) -> tuple[int, int]:
    if self.model <= 0 or num_devices % self.model:
      raise ValueError(
          f"MeshConfig.model={self.model} must be a positive divisor of the "
          f"{num_devices} available devices."
      )
    data = num_devices // self.model if self.data == -1 else self.data
    if data <= 0 or data * self.model != num_devices:
      raise ValueError(
          f"Mesh (data={self.data}, model={self.model}) does not use the "
          f"{num_devices} devices; set data * model = {num_devices} (or "
          "data=-1)."
      )
    return data, self.model


def make_mesh(cfg: MeshConfig = MeshConfig(),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.shape(len(devices))
  return Mesh(np.asarray(devices).reshape(shape), (DATA, MODEL))


def logical_to_mesh_spec(logical: PartitionSpec,
                         rules=LOGICAL_RULES) -> PartitionSpec:
  return nn.logical_to_mesh_axes(tuple(logical), rules)


def _check_divisible(path: str, shape, spec: PartitionSpec, mesh: Mesh):
  for dim, mesh_axis in zip(shape, tuple(spec)):
    if mesh_axis is None:
      continue
    names = mesh_axis if isinstance(mesh_axis, tuple) else (mesh_axis,)
    size = int(np.prod([mesh.shape[n] for n in names]))
    if dim % size:
      raise ValueError(
          f"Cannot shard {path}: shape {tuple(shape)}, a dimension of size "
          f"{dim} is not divisible by mesh axis {mesh_axis!r} of size {size}. "
          "Change the model size or the mesh shape (MeshConfig)."
      )


def param_shardings(boxed_abstract_params, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for (unboxed) params from their boxed abstract values."""
  logical = nn.get_partition_spec(boxed_abstract_params)
  abstract = nn.unbox(boxed_abstract_params)

  def one(path, spec, leaf):
    mesh_spec = logical_to_mesh_spec(spec, rules)
    _check_divisible(jax.tree_util.keystr(path), leaf.shape, mesh_spec, mesh)
    return NamedSharding(mesh, mesh_spec)

  return jax.tree_util.tree_map_with_path(
      one, logical, abstract,
      is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension on the data axis; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size"):
  n = mesh.shape[DATA]
  if batch_size % n:
    raise ValueError(
        f"{what}={batch_size} must be divisible by the data mesh size {n}; "
        f"set it to a multiple of {n} (or change MeshConfig)."
    )


def like_params_shardings(abstract_tree: Any, params_shardings: Any,
                          abstract_params: Any, mesh: Mesh) -> Any:
  """Shardings for a tree (e.g. optimizer state) whose leaves mirror params.

  A leaf whose key path ends with a parameter's path and has that parameter's
  shape gets the parameter's sharding; everything else (counters, factored
  Adafactor statistics, which are small) is replicated.
  """
  by_path = {}
  for (path, shard), leaf in zip(
      jax.tree_util.tree_flatten_with_path(params_shardings)[0],
      jax.tree_util.tree_leaves(abstract_params)):
    by_path[tuple(str(k) for k in path)] = (tuple(leaf.shape), shard)

  def one(path, leaf):
    keys = tuple(str(k) for k in path)
    for n in range(len(keys)):
      hit = by_path.get(keys[n:])
      if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
        return hit[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, abstract_tree)
