"""The Trainer: compiles the pure step with explicit shardings and loops.

It owns the side effects the step must not have: host batches, metrics
read-back one step late, evaluation, checkpoints, and a clean stop on SIGTERM
or SIGINT (a preempted VM) that writes a checkpoint first.
"""

import dataclasses
import functools
import pathlib
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from ipo_md import checkpoints
from ipo_md import partitioning
from ipo_md.data import pipeline
from ipo_md.decoding import sampling
from ipo_md.eval import win_rate
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.trainer import metrics_log
from ipo_md.trainer import step as step_lib
from ipo_md.trainer import train_state as train_state_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
  """num_steps: total optimisation steps; log_every / eval_every: in steps
  (eval 0 = only at the end); num_microbatches: gradient accumulation."""

  num_steps: int
  log_every: int = 10
  eval_every: int = 0
  num_microbatches: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.num_steps < 0 or self.log_every <= 0 or self.eval_every < 0:
      raise ValueError(
          f"LoopConfig(num_steps={self.num_steps}, log_every={self.log_every},"
          f" eval_every={self.eval_every}) must be >= 0 / > 0 / >= 0.")
    if self.num_microbatches <= 0:
      raise ValueError(
          f"num_microbatches={self.num_microbatches} must be >= 1.")


class _StopFlag:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def abstract_train_state(model: network.Transformer,
                         tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh, seed: int = 0):
  """The train state as ShapeDtypeStructs with their shardings, derived from
  the model's logical axes (no memory is allocated).

  Returns (abstract_state, state_shardings, param_shardings).
  """
  boxed = scoring.abstract_params(model)
  param_shardings = partitioning.param_shardings(boxed, mesh)
  abstract_params = nn.unbox(boxed)
  abstract_state = jax.eval_shape(
      lambda p: train_state_lib.create(p, tx, seed), abstract_params)
  rep = partitioning.replicated(mesh)
  state_shardings = train_state_lib.TrainState(
      step=rep, params=param_shardings,
      opt_state=partitioning.like_params_shardings(
          abstract_state.opt_state, param_shardings, abstract_params, mesh),
      rng=rep)
  return (checkpoints.abstract_with_shardings(abstract_state, state_shardings),
          state_shardings, param_shardings)


def check_batch(data: pipeline.DataConfig, loop: LoopConfig,
                mesh: jax.sharding.Mesh, where: str = "") -> None:
  """Raises if the (micro)batch does not split over the data axis; `where`
  prefixes the names in the message (e.g. the stage)."""
  partitioning.check_batch_size(data.batch_size, mesh,
                                f"{where}DataConfig.batch_size")
  if loop.num_microbatches > 1:
    partitioning.check_batch_size(data.batch_size // loop.num_microbatches,
                                  mesh, f"{where}batch_size / num_microbatches")
    if data.batch_size % loop.num_microbatches:
      raise ValueError(
          f"{where}batch_size={data.batch_size} must be divisible by "
          f"num_microbatches={loop.num_microbatches}.")


class Trainer:
  """Trains one stage (see pipeline.py) of a policy in `directory`."""

  def __init__(self, *, name: str, model: network.Transformer, objective: Any,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               mesh: jax.sharding.Mesh, data: pipeline.DataConfig,
               loop: LoopConfig, checkpoint: checkpoints.CheckpointConfig,
               directory: pathlib.Path, frozen: dict,
               initial_params: Any | None = None,
               eval_inputs: np.ndarray | None = None,
               eval_sampling: sampling.SamplingConfig | None = None,
               preference: Any = None, rows_per_step: int | None = None):
    check_batch(data, loop, mesh)
    self.name, self.model, self.mesh = name, model, mesh
    self.data, self.loop, self.directory = data, loop, directory
    self.frozen, self.initial_params = frozen, initial_params
    self.tx, self.schedule = tx, schedule
    self.checkpointer = checkpoints.Checkpointer(directory / "checkpoints",
                                                 checkpoint)
    self._build_shardings()
    self._step_fn = jax.jit(
        functools.partial(step_lib.train_step, objective=objective, tx=tx,
                          schedule=schedule,
                          num_microbatches=loop.num_microbatches),
        in_shardings=(self.state_shardings, self.batch_sharding,
                      self.frozen_shardings),
        out_shardings=(self.state_shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,))
    self._eval = self._build_eval(eval_inputs, eval_sampling, preference)
    self.log = metrics_log.MetricsLog(
        directory, name=name, total_steps=loop.num_steps,
        rows_per_step=rows_per_step or data.batch_size,
        enabled=jax.process_index() == 0)

  def _build_shardings(self):
    (self.abstract_state, self.state_shardings,
     self.param_shardings) = abstract_train_state(self.model, self.tx,
                                                  self.mesh, self.loop.seed)
    self.abstract_params = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        self.abstract_state.params)
    self.batch_sharding = partitioning.batch_sharding(self.mesh)
    self.frozen_shardings = {
        k: (self.param_shardings if k == "ref" else
            jax.tree_util.tree_map(lambda x: x.sharding, v))
        for k, v in self.frozen.items()}

  def _build_eval(self, eval_inputs, cfg, preference):
    if eval_inputs is None or cfg is None or preference is None:
      return None
    partitioning.check_batch_size(eval_inputs.shape[0], self.mesh,
                                  "number of evaluation prompts")
    fn = jax.jit(functools.partial(win_rate.evaluate, model=self.model,
                                   preference=preference, cfg=cfg))
    # Every host holds all the prompts: place them as the global array, not
    # as one host's slice (which would repeat them process_count times).
    inputs = jax.make_array_from_process_local_data(
        self.batch_sharding, eval_inputs, eval_inputs.shape)
    rng = jax.random.PRNGKey(self.loop.seed + 12345)
    return lambda params: fn(params, self.frozen, inputs, rng)

  def _place(self, array: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, array)

  def initial_state(self) -> tuple[train_state_lib.TrainState, int]:
    """The latest checkpoint of this stage if any (resume), else a new state
    created directly in its shardings. Returns (state, data position)."""
    latest = self.checkpointer.latest_step()
    if latest is not None:
      self._check_same_model(latest)
      state, meta = self.checkpointer.restore(latest, self.abstract_state)
      print(f"[{self.name}] resumed from {self.checkpointer.directory}/"
            f"{latest} (data position {meta['data_position']}).", flush=True)
      return state, int(meta["data_position"])
    create = lambda p: train_state_lib.create(p, self.tx, self.loop.seed)
    if self.initial_params is None:
      init = lambda: create(scoring.init_params(
          self.model, jax.random.PRNGKey(self.loop.seed)))
      state = jax.jit(init, out_shardings=self.state_shardings)()
    else:
      state = jax.jit(create, in_shardings=(self.param_shardings,),
                      out_shardings=self.state_shardings)(self.initial_params)
    return state, 0

  def _check_same_model(self, step: int) -> None:
    saved = self.checkpointer.restore_meta(step).get("model_config")
    current = dataclasses.asdict(self.model.config)
    if saved is not None and saved != current:
      diff = {k: (saved.get(k), v) for k, v in current.items()
              if saved.get(k) != (list(v) if isinstance(v, tuple) else v)}
      if diff:
        raise ValueError(
            f"The checkpoint {self.checkpointer.directory}/{step} was written "
            f"by another model (saved vs configured: {diff}). Use a fresh "
            "MODEL_DIR, or configure the model it was trained with.")

  def _save(self, state, data_position: int) -> None:
    step = int(state.step)
    self.checkpointer.save(step, state, {
        "step": step, "data_position": data_position,
        "model_config": dataclasses.asdict(self.model.config)})

  def evaluate(self, state) -> dict:
    return {} if self._eval is None else jax.device_get(self._eval(state.params))

  def run(self) -> tuple[train_state_lib.TrainState, dict]:
    """Trains to `loop.num_steps` (or until a stop signal). Returns the final
    state and the last logged metrics (including "stopped_by")."""
    state, position = self.initial_state()
    it = pipeline.make_iterator(self.data, shard_index=jax.process_index(),
                                num_shards=jax.process_count(),
                                start_position=position)
    step, last = int(state.step), {}
    if step == 0 and self._eval is not None and self.loop.num_steps > 0:
      last = self.evaluate(state)
      self.log.write(0, last)
    pending = None
    with _StopFlag() as stop:
      while step < self.loop.num_steps and not self._stop_agreed(stop):
        batch = jax.tree_util.tree_map(self._place, next(it))
        state, metrics = self._step_fn(state, batch, self.frozen)
        step += 1
        if pending is not None:  # Read step n-1's metrics after dispatching n.
          last = self._write(*pending)
        pending = (step, metrics) if self._due(step, self.loop.log_every) else None
        if self._due(step, self.loop.eval_every) or step == self.loop.num_steps:
          train_metrics = {} if pending is None else self._host(pending[1])
          pending = None
          last = {**train_metrics, **self.evaluate(state)}
          self.log.write(step, last)
        if self.checkpointer.should_save(step):
          self._save(state, it.position)
      if pending is not None:
        last = self._write(*pending)
      self._save(state, it.position)
      self.checkpointer.wait()
      if step < self.loop.num_steps:
        last["stopped_by"] = stop.signal or "a signal on another host"
    if last.get("stopped_by"):
      print(f"[{self.name}] {last['stopped_by']} received: saved step {step} to "
            f"{self.checkpointer.directory}; rerun the same command to resume.",
            flush=True)
    return state, last

  @staticmethod
  def _stop_agreed(stop: _StopFlag) -> bool:
    """Whether to stop now. On several hosts every host must stop at the same
    step (the final save is collective), so the hosts agree on it: a signal
    on any host stops them all after the same step. The check is one tiny
    all-gather per step, only when there is more than one process."""
    local = stop.signal is not None
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return bool(np.max(flags))

  def _due(self, step, every):
    return every > 0 and (step % every == 0 or step == self.loop.num_steps)

  def _host(self, metrics):
    return {k: float(v) for k, v in jax.device_get(metrics).items()}

  def _write(self, step, metrics):
    host = self._host(metrics)
    self.log.write(step, host)
    return host

  def close(self):
    self.checkpointer.close()
    self.log.close()
