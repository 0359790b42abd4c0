"""A run is a sequence of stages, e.g. SFT warm start, then online IPO-MD.

Each stage trains in `<model_dir>/<stage name>/` with its own checkpoints and
metrics. A stage starts from the previous stage's final policy (or the initial
checkpoint), and with `freeze_reference=True` that starting policy is also its
frozen reference, as in the paper (the SFT model initialises the policy and is
the reference). Re-running the same command skips finished stages and resumes
an interrupted one from its latest checkpoint.
"""

import dataclasses
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np

from ipo_md import checkpoints
from ipo_md import optim
from ipo_md import partitioning
from ipo_md.data import pipeline as data_pipeline
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.trainer import loop as loop_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
  """Adafactor (T5X defaults) with a learning-rate schedule."""

  learning_rate: float = 1e-4
  schedule: str = "constant"
  warmup_steps: int = 0
  decay_rate: float = 0.8
  clipping_threshold: float | None = 1.0

  def build(self):
    schedule = optim.make_schedule(self.schedule,
                                   base_learning_rate=self.learning_rate,
                                   warmup_steps=self.warmup_steps)
    tx = optim.adafactor_t5(schedule, decay_rate=self.decay_rate,
                            clipping_threshold=self.clipping_threshold)
    return tx, schedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
  """One training stage.

  Attributes:
    name: sub-folder of the model dir, and the console prefix.
    objective: called as objective(model=model) -> an objective of
      `ipo_md.trainer.objectives` (SFT, OnlinePairwise, ...).
    data: the training batches.
    loop: steps, logging, evaluation, microbatches, seed.
    optimizer: Adafactor and schedule.
    checkpoint: how often to save, how many to keep.
    freeze_reference: use the stage's starting policy as its frozen reference.
  """

  name: str
  objective: Callable[..., Any]
  data: data_pipeline.DataConfig
  loop: loop_lib.LoopConfig
  optimizer: OptimizerConfig = OptimizerConfig()
  checkpoint: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig()
  freeze_reference: bool = False
  samples_per_row: int = 1


def _final_params(trainer: loop_lib.Trainer, num_steps: int):
  """The params of a finished stage, or None if it has not finished."""
  if trainer.checkpointer.latest_step() != num_steps:
    return None
  trainer._check_same_model(num_steps)  # pylint: disable=protected-access
  state, _ = trainer.checkpointer.restore(num_steps, trainer.abstract_state)
  return state.params


def run(*, model_dir: str, model_config: config_lib.T5Config,
        stages: list[Stage], mesh: jax.sharding.Mesh, preference: Any = None,
        preference_params: Any = None, eval_data: data_pipeline.DataConfig |
        None = None, eval_sampling: sampling.SamplingConfig | None = None,
        initial_params: Any = None) -> dict:
  """Runs the stages in order; returns {stage name: last metrics}."""
  # Every stage's batch, before the first stage trains (not hours later).
  for stage in stages:
    loop_lib.check_batch(stage.data, stage.loop, mesh,
                         where=f"stage {stage.name!r}: ")
  if eval_data is not None:
    partitioning.check_batch_size(eval_data.batch_size, mesh,
                                  "eval DataConfig.batch_size")
  model = network.Transformer(model_config)
  eval_inputs = None
  if eval_data is not None:
    eval_inputs = data_pipeline.load_batch(eval_data,
                                           eval_data.batch_size)["inputs"]
  params, results = initial_params, {}
  for stage in stages:
    directory = pathlib.Path(model_dir) / stage.name
    tx, schedule = stage.optimizer.build()
    trainer_kwargs = dict(
        name=stage.name, model=model, tx=tx, schedule=schedule, mesh=mesh,
        data=stage.data, loop=stage.loop, checkpoint=stage.checkpoint,
        directory=directory, eval_inputs=eval_inputs,
        eval_sampling=eval_sampling, preference=preference,
        rows_per_step=stage.data.batch_size * stage.samples_per_row)
    if stage.freeze_reference and params is None:
      params = _random_params(model, mesh, stage.loop.seed)
    frozen = {"preference": preference_params}
    if stage.freeze_reference:
      frozen["ref"] = params
    trainer = loop_lib.Trainer(objective=stage.objective(model=model),
                               frozen=frozen, initial_params=params,
                               **trainer_kwargs)
    try:
      finished = _final_params(trainer, stage.loop.num_steps)
      if finished is not None:
        print(f"[{stage.name}] already finished in {directory}; skipping.",
              flush=True)
        params = finished
        continue
      start = time.time()
      state, last = trainer.run()
      results[stage.name] = last
      if last.get("stopped_by"):
        return results
      print(f"[{stage.name}] done: {stage.loop.num_steps} steps in "
            f"{time.time() - start:.0f}s.", flush=True)
      params = state.params
    finally:
      trainer.close()
  return results


def describe(*, model_config: config_lib.T5Config, stages: list[Stage],
             mesh: jax.sharding.Mesh) -> dict:
  """Shapes, shardings and sizes of every stage's train state, built
  abstractly (jax.eval_shape): checks a configuration without memory."""
  model = network.Transformer(model_config)
  out = {}
  for stage in stages:
    tx, _ = stage.optimizer.build()
    abstract_state, _, _ = loop_lib.abstract_train_state(
        model, tx, mesh, stage.loop.seed)
    leaves = jax.tree_util.tree_leaves(abstract_state.params)
    out[stage.name] = {
        "state": abstract_state,
        "num_params": sum(int(np.prod(x.shape)) for x in leaves),
        "param_bytes": sum(int(np.prod(x.shape)) * x.dtype.itemsize
                           for x in leaves),
    }
  return out


def _random_params(model, mesh, seed):
  from ipo_md.model import scoring  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  shardings = partitioning.param_shardings(scoring.abstract_params(model),
                                           mesh)
  return jax.jit(lambda: scoring.init_params(model, jax.random.PRNGKey(seed)),
                 out_shardings=shardings)()
