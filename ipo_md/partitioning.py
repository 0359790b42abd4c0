"""Device mesh, the one logical-to-mesh rules table, and sharded jit.

Layers name dimensions with `ipo_md.axes`; this module alone maps them to the
mesh axes "data" and "model". Shardings of the train state are derived from
the abstract (eval_shape) parameters, never listed by hand, and a dimension
that cannot be split as the rules ask raises instead of silently replicating.

The layers' activation constraints (`layers.constrain`, i.e.
`nn.with_logical_constraint`) are no-ops unless logical axis rules and a
mesh are active while the model is traced. `sharded_jit` traces its function
under both, so every constraint reaches the compiled program; use it (or
`activation_sharding` inside the traced function) for every jitted function
that runs a model on a mesh. Optimizer-state shardings follow the parameters'
logical axes (`opt_state_shardings`).
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
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


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=LOGICAL_RULES):
  """Makes the layers' logical sharding constraints take effect.

  Enter it *inside* the function being traced (it sets the abstract mesh,
  which jax allows under jit, and flax's logical axis rules): constraints are
  recorded when the model is traced, and a function traced without it keeps
  none, even if later calls run inside it. `sharded_jit` does this for you.

  Args:
    mesh: the device mesh (axes "data" and "model").
    rules: the logical -> mesh axis rules (default LOGICAL_RULES).

  Yields:
    None.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
      nn.logical_axis_rules(rules):
    yield


_UNSET = object()


def sharded_jit(fn: Callable, mesh: Mesh, *, in_shardings=_UNSET,
                out_shardings=_UNSET, donate_argnums=(), static_argnums=(),
                rules=LOGICAL_RULES) -> Callable:
  """`jax.jit` with shardings, tracing `fn` under `activation_sharding`.

  Args:
    fn: the function to compile (e.g. a train step).
    mesh: the device mesh.
    in_shardings / out_shardings / donate_argnums / static_argnums: as for
      `jax.jit`; in_shardings / out_shardings left out: the arguments' own
      shardings / the compiler's choice.
    rules: the logical -> mesh axis rules (default LOGICAL_RULES).

  Returns:
    The jitted function; `.lower(...)` and `.trace(...)` work as usual. On a
    mesh of several devices, with in_shardings left out, arguments that are
    not committed to devices (numpy arrays, arrays on JAX's default device)
    are replicated on the mesh first (`_OnMesh`).
  """

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)

  # A functools.partial has no name of its own: the program (in compile
  # logs and profiles) is named after the function it wraps.
  if not hasattr(fn, "__name__") and hasattr(fn, "func"):
    traced.__name__ = getattr(fn.func, "__name__", traced.__name__)

  given = {k: v for k, v in (("in_shardings", in_shardings),
                              ("out_shardings", out_shardings))
           if v is not _UNSET}
  jitted = jax.jit(traced, donate_argnums=donate_argnums,
                   static_argnums=static_argnums,
                   compiler_options=compiler_options(mesh) or None, **given)
  if mesh.size == 1 or in_shardings is not _UNSET:
    return jitted
  return _OnMesh(jitted, mesh, static_argnums)


class _OnMesh:
  """A jitted function on a multi-device mesh whose uncommitted arguments
  (arrays on JAX's default device, numpy arrays) are first replicated on
  the mesh; committed arguments go as they are.

  With every argument uncommitted, jax.jit would compile for the default
  device alone, and a `jax.shard_map` over the mesh inside the function
  (rollouts' data-parallel sampler) then failed in XLA:CPU with "No
  registered implementation for ... xla.sdy.GlobalToLocalShape". `lower`
  and `trace` place their arguments the same way; every other attribute is
  the jitted function's.
  """

  def __init__(self, jitted, mesh: Mesh, static_argnums):
    self._jitted = jitted
    self._replicated = replicated(mesh)
    self._static = {static_argnums} if isinstance(static_argnums, int) else (
        set(static_argnums))
    functools.update_wrapper(self, jitted)

  def _leaf(self, x):
    if isinstance(x, np.ndarray) or (isinstance(x, jax.Array)
                                     and not x.committed):
      return jax.device_put(x, self._replicated)
    return x

  def _place(self, args, kwargs):
    args = tuple(a if i in self._static else jax.tree.map(self._leaf, a)
                 for i, a in enumerate(args))
    return args, jax.tree.map(self._leaf, kwargs)

  def __call__(self, *args, **kwargs):
    args, kwargs = self._place(args, kwargs)
    return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    args, kwargs = self._place(args, kwargs)
    return self._jitted.lower(*args, **kwargs)

  def trace(self, *args, **kwargs):
    args, kwargs = self._place(args, kwargs)
    return self._jitted.trace(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._jitted, name)


# XLA:CPU's default scheduler runs independent ops early, so a step holds
# many activations at once; its memory-optimised scheduler orders them to
# free buffers first. On the 2-core dev VM (jax 0.10.2), for the T5-small
# IPO update of bench/sampler_and_update.py, XLA's temporary buffers fell
# from 3.55 to 2.72 GiB and the step from 6.2 to 5.8 s (float32); sampling
# was unchanged.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def compiler_options(mesh: Mesh) -> dict[str, str]:
  """XLA options for programs compiled on `mesh`: CPU_COMPILER_OPTIONS when
  every device is a CPU, none otherwise."""
  if all(d.platform == "cpu" for d in mesh.devices.flat):
    return dict(CPU_COMPILER_OPTIONS)
  return {}


def _mesh_specs(boxed_abstract_params, mesh: Mesh, rules):
  """Mesh PartitionSpecs of the (unboxed) params, divisibility checked."""
  logical = nn.get_partition_spec(boxed_abstract_params)
  abstract = nn.unbox(boxed_abstract_params)

  def one(path, spec, leaf):
    mesh_spec = logical_to_mesh_spec(spec, rules)
    _check_divisible(jax.tree_util.keystr(path), leaf.shape, mesh_spec, mesh)
    return mesh_spec

  return jax.tree_util.tree_map_with_path(
      one, logical, abstract, is_leaf=lambda x: isinstance(x, PartitionSpec))


def _dropped_dim(field: str | None, param_shape, leaf_shape) -> int | None:
  """Which dimension of the parameter a statistic of `leaf_shape` dropped.

  Adafactor's factored second moments (optax FactoredState) keep a row
  statistic `v_row` without the parameter's largest dimension and a column
  statistic `v_col` without the second largest (ties in argsort order, as
  optax decides). For other fields, the unique dimension whose removal
  gives the leaf's shape, if there is one.
  """
  if len(leaf_shape) != len(param_shape) - 1:
    return None
  order = np.argsort(param_shape)
  named = {"v_row": order[-1], "v_col": order[-2]} if len(order) >= 2 else {}
  candidates = [d for d in range(len(param_shape))
                if tuple(np.delete(param_shape, d)) == tuple(leaf_shape)]
  if field in named and int(named[field]) in candidates:
    return int(named[field])
  return candidates[0] if len(candidates) == 1 else None


def opt_state_shardings(tx: optax.GradientTransformation,
                        boxed_abstract_params, mesh: Mesh,
                        rules=LOGICAL_RULES) -> Any:
  """NamedShardings of `tx.init(params)` from the parameters' logical axes.

  Every subtree of the optimizer state with the parameters' tree structure
  (optax keeps one per statistic: Adam's mu and nu, Adafactor's v_row, v_col
  and v) is sharded leaf by leaf like its parameter: a statistic of the
  parameter's shape takes the parameter's spec; a factored statistic, which
  lacks one dimension, takes the spec with that dimension's entry dropped
  (e.g. an (embed, mlp) kernel sharded (None, "model") has v_row (embed,) ->
  (None,) and v_col (mlp,) -> ("model",)). Anything else (step counters,
  the (1,) placeholders of unfactored statistics) is replicated.

  Args:
    tx: the optimizer.
    boxed_abstract_params: the model's boxed abstract parameters
      (`scoring.abstract_params(model)`).
    mesh: the device mesh.
    rules: the logical -> mesh axis rules (default LOGICAL_RULES).

  Returns:
    A tree of NamedSharding with the structure of `tx.init(params)`.
  """
  specs = _mesh_specs(boxed_abstract_params, mesh, rules)
  abstract = nn.unbox(boxed_abstract_params)
  params_def = jax.tree_util.tree_structure(abstract)
  abstract_state = jax.eval_shape(tx.init, abstract)
  flat_params = jax.tree_util.tree_leaves(abstract)
  flat_specs = jax.tree_util.tree_leaves(
      specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

  def is_params_like(node):
    return (not isinstance(node, jax.ShapeDtypeStruct)
            and jax.tree_util.tree_structure(node) == params_def)

  def stat(field, param, spec, leaf):
    if tuple(leaf.shape) == tuple(param.shape):
      return NamedSharding(mesh, spec)
    dropped = _dropped_dim(field, param.shape, leaf.shape)
    if dropped is None:
      return replicated(mesh)
    entries = list(spec) + [None] * (len(param.shape) - len(spec))
    del entries[dropped]
    return NamedSharding(mesh, PartitionSpec(*entries))

  def one(path, node):
    if not is_params_like(node):
      return replicated(mesh)
    last = path[-1] if path else None
    field = getattr(last, "name", None)
    leaves = [stat(field, p, s, l) for p, s, l in zip(
        flat_params, flat_specs, jax.tree_util.tree_leaves(node))]
    return jax.tree_util.tree_unflatten(params_def, leaves)

  return jax.tree_util.tree_map_with_path(one, abstract_state,
                                          is_leaf=is_params_like)
