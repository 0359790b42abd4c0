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

"""Params-only checkpoints: what `ipo-md convert` writes, training starts from.

Layout of a params checkpoint directory:

  DIR/config.json   the T5Config as JSON (`dataclasses.asdict`)
  DIR/params/       an Orbax (StandardCheckpointer) checkpoint of the unboxed
                    params dict, T5X names (`encoder/layers_0/...`)

`load_initial_params` is the one entry point for an initial checkpoint of a
policy, reference or preference model: it accepts such a directory, a Hugging
Face T5 folder, a native T5X checkpoint or a training run's checkpoints, tells
them apart by their files, and places every tensor directly in its sharding.
"""

import os
from typing import Any

from etils import epath
import flax.core.meta
import jax
import numpy as np
import orbax.checkpoint as ocp

from ipo_md.checkpoints import hf
from ipo_md.checkpoints import orbax_tree
from ipo_md.checkpoints import paths
from ipo_md.checkpoints import t5_layout
from ipo_md.checkpoints import t5x_import
from ipo_md.checkpoints import verify
from ipo_md.model import config as config_lib

CONFIG_FILE = "config.json"
PARAMS_ITEM = "params"
# A training run: <stage>/checkpoints/<step>/{state,meta} (ipo_md.checkpoints).
TRAIN_CHECKPOINTS = "checkpoints"
TRAIN_STATE_ITEM = "state"
TRAIN_META_ITEM = "meta"


def save_params(directory: str | os.PathLike, params: Any,
                config: config_lib.T5Config) -> None:
  """Writes `params` (boxed or unboxed) and `config` as a params checkpoint.

  Raises:
    ValueError: the params do not match the config, or `directory` exists and
      is not empty.
  """
  directory = paths.as_path(directory)
  params = flax.core.meta.unbox(params)
  flat = t5_layout.flatten(params)
  t5_layout.check_shapes({k: np.shape(v) for k, v in flat.items()}, config,
                         source="save_params(params)")
  if directory.exists() and any(directory.iterdir()):
    raise ValueError(
        f"{directory} already exists and is not empty; choose a new directory "
        "or delete it first.")
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_ITEM, params)
    checkpointer.wait_until_finished()
  # config.json last: its presence marks a complete checkpoint.
  t5_layout.write_json(directory / CONFIG_FILE,
                       t5_layout.config_to_dict(config))


def load_config(directory: str | os.PathLike) -> config_lib.T5Config:
  """The T5Config of a params checkpoint directory."""
  path = paths.as_path(directory) / CONFIG_FILE
  data = t5_layout.read_json(path, what="params-checkpoint config")
  return t5_layout.config_from_dict(data, source=str(path))


def is_params_dir(path: str | os.PathLike) -> bool:
  path = paths.as_path(path)
  return (path / CONFIG_FILE).is_file() and (path / PARAMS_ITEM).is_dir()


def load_params(directory: str | os.PathLike, *, shardings: Any = None
                ) -> tuple[dict, config_lib.T5Config]:
  """Restores a params checkpoint written by `save_params`.

  Args:
    directory: the checkpoint directory (config.json + params/).
    shardings: None (default device), one `jax.sharding.Sharding` for all
      tensors, or a pytree matching the params of Shardings (or of
      ShapeDtypeStructs with shardings); each tensor is restored directly into
      its sharding. Tensors are cast to `config.param_dtype`.

  Returns:
    (params, config).
  """
  directory = paths.as_path(directory)
  if not is_params_dir(directory):
    raise FileNotFoundError(
        f"{directory} is not a params checkpoint: expected {CONFIG_FILE} and "
        f"a {PARAMS_ITEM}/ Orbax directory (written by `ipo-md convert` or "
        "save_params).")
  config = load_config(directory)
  params = _restore_tree(directory / PARAMS_ITEM, config, shardings,
                         subtree=None)
  return params, config


def _restore_tree(path: epath.Path, config: config_lib.T5Config,
                  shardings: Any, *, subtree: str | None) -> dict:
  """Restores the params (or `tree[subtree]`) of an Orbax PyTree checkpoint,
  checked against the config before any tensor is read."""
  shapes = orbax_tree.subtree_shapes(path, subtree)
  t5_layout.check_shapes(shapes, config, source=str(path))
  return orbax_tree.restore_subtree(path, shapes, config.jnp_param_dtype,
                                    shardings, subtree)


def _train_step_dir(path: epath.Path, step: int | None) -> epath.Path:
  """The <step> folder of a training run, from a stage, its checkpoints/
  folder or the step folder itself (the latest step unless `step`). Once a
  run seals its checkpoints (ipo_md.checkpoints.verify), only sealed steps
  count: an unsealed one is an unfinished save."""
  if (path / TRAIN_STATE_ITEM).is_dir():
    return path
  if (path / TRAIN_CHECKPOINTS).is_dir():
    path = path / TRAIN_CHECKPOINTS
  found = [p for p in path.iterdir()
           if p.name.isdigit() and (p / TRAIN_STATE_ITEM).is_dir()
           ] if path.is_dir() else []
  sealed = [p for p in found if verify.has_manifest(p)]
  steps = sorted(int(p.name) for p in (sealed or found))
  if not steps:
    children = path.iterdir() if path.is_dir() else ()
    stages = sorted(p.name for p in children
                    if (p / TRAIN_CHECKPOINTS).is_dir())
    hint = (f" It holds the stages {stages}: pass {path}/<stage>."
            if stages else "")
    raise FileNotFoundError(
        f"No training checkpoint in {path}: expected <step>/{TRAIN_STATE_ITEM}"
        f" folders (or a {TRAIN_CHECKPOINTS}/ folder of them).{hint}")
  if step is None:
    return path / str(steps[-1])
  if step not in steps:
    raise FileNotFoundError(f"No step {step} in {path}; found steps {steps}.")
  return path / str(step)


def is_train_dir(path: str | os.PathLike) -> bool:
  try:
    _train_step_dir(paths.as_path(path), None)
  except (FileNotFoundError, OSError):
    return False
  return True


def _verified_step_dir(path: str | os.PathLike, step: int | None
                       ) -> epath.Path:
  """`_train_step_dir`, checked against its manifest when it has one
  (presence and size of every file, which catches truncation and missing
  files without reading the whole optimizer state back)."""
  step_dir = _train_step_dir(paths.as_path(path), step)
  if verify.has_manifest(step_dir):
    damage = verify.check(step_dir, contents=False)
    if damage is not None:
      raise ValueError(
          f"Training checkpoint {damage.line()}. Pass an older step folder "
          f"({step_dir.parent}/<step>) explicitly, or rerun that stage so it "
          "rewrites its checkpoint.")
  return step_dir


def load_train_config(path: str | os.PathLike, *, step: int | None = None
                      ) -> config_lib.T5Config:
  """The model config of a training checkpoint (its step's `meta` JSON)."""
  step_dir = _verified_step_dir(path, step)
  meta_dir = step_dir / TRAIN_META_ITEM
  if not meta_dir.is_dir():
    raise FileNotFoundError(
        f"{meta_dir} is missing: cannot tell the model config of {step_dir}.")
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)
  if not isinstance(meta, dict) or "model_config" not in meta:
    raise ValueError(f"{meta_dir} has no 'model_config' entry.")
  return t5_layout.config_from_dict(meta["model_config"], source=str(meta_dir))


def load_train_params(path: str | os.PathLike, *, step: int | None = None,
                      shardings: Any = None
                      ) -> tuple[dict, config_lib.T5Config]:
  """The policy params of a training checkpoint (no optimizer state is read).

  Args:
    path: a stage directory (MODEL_DIR/<stage>), its `checkpoints/` folder or
      one `checkpoints/<step>` folder.
    step: which step (default: the latest).
    shardings: as in `load_params`.

  Returns:
    (params, config); the config comes from the step's `meta` JSON.
  """
  step_dir = _verified_step_dir(path, step)
  config = load_train_config(step_dir)
  params = _restore_tree(step_dir / TRAIN_STATE_ITEM, config, shardings,
                         subtree="params")
  return params, config


def _loader(path: epath.Path, shardings: Any, param_dtype: str,
            expected: config_lib.T5Config | None):
  """(config, load) for the checkpoint kind at `path`; `load()` returns
  (params, config). Only config files and tensor shapes are read here."""
  if is_params_dir(path):
    return load_config(path), lambda: load_params(path, shardings=shardings)
  if hf.is_hf_dir(path):
    return (hf.load_hf_config(path, param_dtype=param_dtype),
            lambda: hf.load_hf(path, shardings=shardings,
                               param_dtype=param_dtype))
  if t5x_import.is_t5x_checkpoint(path):
    # T5X records no config: shapes fix all but the gated activation and the
    # relative-position max distance, which the configured model supplies.
    config = t5x_import.load_t5x_config(path, param_dtype=param_dtype)
    if expected is not None:
      config = config.replace(
          mlp_activations=expected.mlp_activations,
          relative_attention_max_distance=(
              expected.relative_attention_max_distance))
    return config, lambda: t5x_import.load_t5x(path, config=config,
                                               shardings=shardings)
  if is_train_dir(path):
    return (load_train_config(path),
            lambda: load_train_params(path, shardings=shardings))
  raise FileNotFoundError(
      f"{path} is not a checkpoint this framework can read. Expected one of: "
      f"a params checkpoint ({CONFIG_FILE} + {PARAMS_ITEM}/), a Hugging Face "
      "T5 folder (config.json + model.safetensors or pytorch_model.bin), a "
      "T5X checkpoint (checkpoint_<step>/ or a folder with a 'checkpoint' or "
      "'_METADATA' file), or a training stage folder (checkpoints/<step>/).")


def load_initial_params(path: str | os.PathLike, *, shardings: Any = None,
                        expected_config: config_lib.T5Config | None = None
                        ) -> tuple[dict, config_lib.T5Config]:
  """Params and config of any supported checkpoint, detected by its files.

  Accepts, in this order: a params checkpoint (config.json + params/), a
  Hugging Face T5 folder (config.json + model.safetensors or
  pytorch_model.bin, possibly sharded), a native T5X checkpoint (Orbax or
  legacy msgpack + TensorStore), or a training run (MODEL_DIR/<stage> or its
  checkpoints; the latest step).

  Args:
    path: the checkpoint directory.
    shardings: None, one Sharding, or a pytree matching the params; each
      tensor is placed directly in its sharding.
    expected_config: the configured model. When given, the checkpoint's
      architecture is checked against it before any tensor is read, and the
      params are returned in its `param_dtype`.

  Returns:
    (params, config): config is the checkpoint's (with the expected
    param_dtype when `expected_config` is given).
  """
  path = paths.as_path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Initial checkpoint {path} is not a directory.")
  param_dtype = "float32" if expected_config is None else (
      expected_config.param_dtype)
  config, load = _loader(path, shardings, param_dtype, expected_config)
  if expected_config is None:
    return load()
  t5_layout.check_compatible(config, expected_config, source=str(path))
  params, config = load()
  if config.param_dtype != param_dtype:
    dtype = expected_config.jnp_param_dtype
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
    config = config.replace(param_dtype=param_dtype)
  return params, config


def check_initial_checkpoint(path: str | os.PathLike,
                             expected_config: config_lib.T5Config) -> None:
  """Raises unless `path` is a readable checkpoint of `expected_config`'s
  architecture; reads config files and tensor shapes only (no tensor), so a
  run can check every checkpoint it will need before it trains."""
  path = paths.as_path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Initial checkpoint {path} is not a directory.")
  config, _ = _loader(path, None, expected_config.param_dtype, expected_config)
  t5_layout.check_compatible(config, expected_config, source=str(path))
