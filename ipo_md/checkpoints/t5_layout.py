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

"""The T5 parameter tree as data: names and shapes that a config implies.

Every importer and exporter checks a checkpoint against `param_shapes(config)`
*before* reading any tensor, so a wrong or truncated checkpoint fails with an
error naming the tensor and both shapes instead of deep inside Flax. The table
mirrors `ipo_md.model.network` (T5X names);
`tests/checkpoints_params_io_test.py` checks it against the network's own
abstract parameters.

Paths are '/'-joined, e.g. `encoder/layers_0/attention/query/kernel`.
"""

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from ipo_md.checkpoints import paths
from ipo_md.model import config as config_lib

Shape = tuple[int, ...]

_ATTENTION = ("query", "key", "value", "out")


def mlp_names(config: config_lib.T5Config) -> tuple[str, ...]:
  """Input projections of the MLP: `wi` (one activation) or `wi_0, wi_1..`."""
  n = len(config.mlp_activations)
  return ("wi",) if n == 1 else tuple(f"wi_{i}" for i in range(n))


def _attention_shapes(prefix: str, cfg: config_lib.T5Config
                      ) -> dict[str, Shape]:
  inner = cfg.num_heads * cfg.head_dim
  shapes = {f"{prefix}/{n}/kernel": (cfg.emb_dim, inner) for n in _ATTENTION}
  shapes[f"{prefix}/out/kernel"] = (inner, cfg.emb_dim)
  return shapes


def _mlp_shapes(prefix: str, cfg: config_lib.T5Config) -> dict[str, Shape]:
  shapes = {f"{prefix}/{n}/kernel": (cfg.emb_dim, cfg.mlp_dim)
            for n in mlp_names(cfg)}
  shapes[f"{prefix}/wo/kernel"] = (cfg.mlp_dim, cfg.emb_dim)
  return shapes


def param_shapes(config: config_lib.T5Config) -> dict[str, Shape]:
  """Every parameter path of the T5 network with its shape, in a fixed order."""
  e = (config.emb_dim,)
  relpos = (config.num_heads, config.relative_attention_num_buckets)
  shapes = {"token_embedder/embedding": (config.vocab_size, config.emb_dim),
            "encoder/relpos_bias/rel_embedding": relpos}
  for i in range(config.num_encoder_layers):
    p = f"encoder/layers_{i}"
    shapes[f"{p}/pre_attention_layer_norm/scale"] = e
    shapes.update(_attention_shapes(f"{p}/attention", config))
    shapes[f"{p}/pre_mlp_layer_norm/scale"] = e
    shapes.update(_mlp_shapes(f"{p}/mlp", config))
  shapes["encoder/encoder_norm/scale"] = e
  shapes["decoder/relpos_bias/rel_embedding"] = relpos
  for i in range(config.num_decoder_layers):
    p = f"decoder/layers_{i}"
    shapes[f"{p}/pre_self_attention_layer_norm/scale"] = e
    shapes.update(_attention_shapes(f"{p}/self_attention", config))
    shapes[f"{p}/pre_cross_attention_layer_norm/scale"] = e
    shapes.update(_attention_shapes(f"{p}/encoder_decoder_attention", config))
    shapes[f"{p}/pre_mlp_layer_norm/scale"] = e
    shapes.update(_mlp_shapes(f"{p}/mlp", config))
  shapes["decoder/decoder_norm/scale"] = e
  if not config.logits_via_embedding:
    shapes["decoder/logits_dense/kernel"] = (config.emb_dim, config.vocab_size)
  return shapes


def check_shapes(found: Mapping[str, Shape], config: config_lib.T5Config, *,
                 source: str) -> None:
  """Raises ValueError unless `found` has exactly the config's tensors/shapes.

  Args:
    found: path -> shape of what a checkpoint holds.
    config: the config the checkpoint claims to match.
    source: where `found` came from, for the message (a directory, a file).
  """
  expected = param_shapes(config)
  missing = [p for p in expected if p not in found]
  if missing:
    raise ValueError(
        f"{source}: missing tensor {missing[0]!r} (expected shape "
        f"{expected[missing[0]]}); {len(missing)} missing in all: "
        f"{missing[:8]}. The checkpoint is incomplete or was written for "
        "another architecture.")
  extra = [p for p in found if p not in expected]
  if extra:
    raise ValueError(
        f"{source}: unexpected tensors {extra[:8]} ({len(extra)} in all) that "
        f"a T5 with this config does not have (logits_via_embedding="
        f"{config.logits_via_embedding}, mlp_activations="
        f"{config.mlp_activations}). Check that the config matches.")
  for path, shape in expected.items():
    if tuple(found[path]) != shape:
      raise ValueError(
          f"{source}: tensor {path!r} has shape {tuple(found[path])}, but the "
          f"config implies {shape}. The checkpoint does not match its config "
          "(vocab_size, emb_dim, num_heads, head_dim, mlp_dim, ...).")


# Fields that do not change the parameters: a checkpoint may be loaded into a
# model that sets them differently.
RUNTIME_FIELDS = ("dtype", "param_dtype", "dropout_rate", "remat")


def check_compatible(found: config_lib.T5Config,
                     expected: config_lib.T5Config, *, source: str) -> None:
  """Raises ValueError unless the two configs describe the same parameters
  and computation (RUNTIME_FIELDS aside)."""
  diff = {f.name: (getattr(found, f.name), getattr(expected, f.name))
          for f in dataclasses.fields(config_lib.T5Config)
          if f.name not in RUNTIME_FIELDS
          and getattr(found, f.name) != getattr(expected, f.name)}
  if diff:
    shown = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}"
                      for k, (a, b) in diff.items())
    raise ValueError(
        f"{source} holds another architecture than the configured model "
        f"({shown}). Configure the model like the checkpoint (e.g. the gin "
        "file of its size) or point to a checkpoint of this model.")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + "/"))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def shardings_lookup(shardings) -> Callable[[str], Any]:
  """path -> Sharding or None, from a pytree matching the params or one
  Sharding for every tensor. Leaves may be Shardings or carry `.sharding`
  (e.g. jax.ShapeDtypeStruct)."""
  if shardings is None:
    return lambda path: None
  if isinstance(shardings, jax.sharding.Sharding):
    return lambda path: shardings
  flat = flatten(shardings)

  def lookup(path):
    if path not in flat:
      raise ValueError(
          f"shardings has no entry for parameter {path!r}; pass a pytree with "
          "the same structure as the params (or a single Sharding).")
    leaf = flat[path]
    return getattr(leaf, "sharding", leaf)

  return lookup


def place(array: np.ndarray, dtype, sharding) -> jax.Array:
  """Casts one host tensor and puts it on device(s), directly in `sharding`."""
  array = np.asarray(array, dtype=dtype)
  if sharding is None:
    return jax.device_put(array)
  return jax.device_put(array, sharding)


def config_to_dict(config: config_lib.T5Config) -> dict[str, Any]:
  return dataclasses.asdict(config)


def config_from_dict(data: Mapping[str, Any], *, source: str
                     ) -> config_lib.T5Config:
  """A T5Config from its `dataclasses.asdict` JSON, with clear errors."""
  fields = {f.name for f in dataclasses.fields(config_lib.T5Config)}
  unknown = sorted(set(data) - fields)
  if unknown:
    raise ValueError(
        f"{source}: unknown T5Config fields {unknown}; expected a subset of "
        f"{sorted(fields)}. Is this an ipo-md config (not a Hugging Face "
        "config.json)?")
  try:
    return config_lib.T5Config(**data)
  except TypeError as e:
    raise ValueError(f"{source}: incomplete T5Config: {e}.") from e


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
  """Writes JSON atomically, locally or on a bucket (see `paths`)."""
  paths.write_json(path, data)


def read_json(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
  data = paths.read_json(path, what=what)
  if not isinstance(data, dict):
    raise ValueError(f"{path} ({what}) is not a JSON object.")
  return data
