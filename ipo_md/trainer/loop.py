"""The Trainer: compiles the pure step with explicit shardings and loops.

It owns the side effects the step must not have: host batches, metrics
read-back one step late, the stage's evaluation (passed in), checkpoints, the
divergence guard's stop, and a clean stop on SIGTERM or SIGINT (a preempted
VM) that writes a checkpoint first.
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipo_md import checkpoints
from ipo_md import host_memory
from ipo_md import partitioning
from ipo_md import profiling
from ipo_md import types
from ipo_md.checkpoints import paths
from ipo_md.data import pipeline
from ipo_md.model import network as network_lib
from ipo_md.model import scoring
from ipo_md.trainer import metrics_log
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import step as step_lib
from ipo_md.trainer import stopping
from ipo_md.trainer import train_state as train_state_lib


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"LoopConfig.{name}={value!r} must be an int (e.g. "
                     f"{max(minimum, 1)}).")
  if value < minimum:
    raise ValueError(f"LoopConfig.{name}={value} must be >= {minimum}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
  """How a stage loops.

  Attributes:
    num_steps: total optimisation steps.
    log_every: steps between logged metrics.
    eval_every: steps between evaluations (0 = only at the start and end).
    num_microbatches: gradient accumulation.
    seed: the stage's base PRNG seed (and of a random initialisation).
    nonfinite: the divergence guard, "stop" (halt at the first non-finite
      loss, gradient or parameter, save the last finite state, exit with an
      error) or "skip" (drop such updates and count them).
    max_skipped: with "skip", how many dropped updates halt the run anyway.
    phase_timing: for an objective that samples (`step.has_phases`), compile
      its step as three programs, sample / preference / update, and log the
      device time of each and the host time (`timing/sample`,
      `timing/preference`, `timing/update`, `timing/host`: means over the
      steps finished since the previous line) without adding a device sync.
      False (the default) compiles the step as one program and logs its time
      (`timing/device`) and `timing/host`. Either way the same random numbers
      and the same update, and `timing/step` is the whole step. Three
      programs can cost speed: on a 2-core CPU the main job's IPO-MD step
      took about 260 ms in three against 200 ms in one (one program lets
      XLA schedule and fuse across the phases; the split was not analysed
      further).
  """

  num_steps: int
  log_every: int = 10
  eval_every: int = 0
  num_microbatches: int = 1
  seed: int = 0
  nonfinite: str = "stop"
  max_skipped: int = 10
  phase_timing: bool = False

  def __post_init__(self):
    if not isinstance(self.phase_timing, bool):
      raise ValueError(f"LoopConfig.phase_timing={self.phase_timing!r} must "
                       "be True or False.")
    _check_int("num_steps", self.num_steps, 0)
    _check_int("log_every", self.log_every, 1)
    _check_int("eval_every", self.eval_every, 0)
    _check_int("num_microbatches", self.num_microbatches, 1)
    _check_int("seed", self.seed, 0)
    self.guard  # pylint: disable=pointless-statement

  @property
  def guard(self) -> step_lib.GuardConfig:
    return step_lib.GuardConfig(nonfinite=self.nonfinite,
                                max_skipped=self.max_skipped)


class Diverged(RuntimeError):
  """A stage halted on a non-finite update (the message says what to do)."""


def abstract_train_state(net: network_lib.Transformer,
                         tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh, seed: int = 0):
  """The train state as ShapeDtypeStructs with their shardings, derived from
  the model's logical axes (no memory is allocated).

  Returns (abstract_state, state_shardings, param_shardings).
  """
  abstract_params, param_shardings = models_lib.param_shardings(net.config,
                                                                mesh)
  abstract_state = jax.eval_shape(
      lambda p: train_state_lib.create(p, tx, seed), abstract_params)
  rep = partitioning.replicated(mesh)
  state_shardings = train_state_lib.TrainState(
      step=rep, params=param_shardings,
      opt_state=partitioning.opt_state_shardings(
          tx, scoring.abstract_params(net), mesh),
      rng=rep, skipped=rep, nonfinite_step=rep, nonfinite_what=rep)
  return (checkpoints.abstract_with_shardings(abstract_state, state_shardings),
          state_shardings, param_shardings)


def check_batch(data: pipeline.DataConfig, loop: LoopConfig,
                mesh: jax.sharding.Mesh, where: str = "") -> None:
  """Raises if the (micro)batch does not split over the data axis; `where`
  prefixes the names in the message (e.g. the stage)."""
  partitioning.check_batch_size(data.batch_size, mesh,
                                f"{where}DataConfig.batch_size")
  if loop.num_microbatches > 1:
    if data.batch_size % loop.num_microbatches:
      raise ValueError(
          f"{where}batch_size={data.batch_size} must be divisible by "
          f"num_microbatches={loop.num_microbatches}.")
    partitioning.check_batch_size(data.batch_size // loop.num_microbatches,
                                  mesh, f"{where}batch_size / num_microbatches")


class Trainer:
  """Trains one stage (see pipeline.py) of one model in `directory`.

  Args:
    name: the stage name (console prefix).
    network: the trained model's network.
    objective: an `objectives.Objective`.
    tx, schedule: the optimizer and its learning-rate schedule.
    mesh: the device mesh.
    data, loop, checkpoint: the stage's configs.
    directory: the stage folder.
    frozen: the frozen models (`types.Frozen`), placed in their shardings.
    frozen_shardings: their shardings (a `types.Frozen`).
    init_params: a callable returning the starting params (called only when
      the stage has no checkpoint yet), or None for a random initialisation.
    evaluation: fn(params, frozen) -> {name: float}, or None.
    meta: extra JSON saved with every checkpoint (role, head, ...).
    rows_per_step: sampled rows per step (throughput on the console).
  """

  def __init__(self, *, name: str, network: network_lib.Transformer,
               objective: Any, tx: optax.GradientTransformation,
               schedule: optax.Schedule, mesh: jax.sharding.Mesh,
               data: pipeline.DataConfig, loop: LoopConfig,
               checkpoint: checkpoints.CheckpointConfig,
               directory, frozen: types.Frozen = types.Frozen(),
               frozen_shardings: types.Frozen = types.Frozen(),
               init_params: Callable[[], Any] | None = None,
               evaluation: Callable[[Any, Any], dict] | None = None,
               meta: dict | None = None, rows_per_step: int | None = None,
               profile_steps: tuple[int, int] | None = None):
    check_batch(data, loop, mesh)
    self.profile_steps = profile_steps
    self.name, self.network, self.mesh = name, network, mesh
    self.data, self.loop = data, loop
    self.directory = paths.as_path(directory)
    self.frozen, self.init_params = frozen, init_params
    self.tx, self.schedule, self.evaluation = tx, schedule, evaluation
    self.meta = dict(meta or {})
    self.checkpointer = checkpoints.Checkpointer(
        self.directory / "checkpoints", checkpoint,
        report=lambda line: print(f"[{name}] {line}", flush=True))
    (self.abstract_state, self.state_shardings,
     self.param_shardings) = abstract_train_state(network, tx, mesh, loop.seed)
    self.batch_sharding = partitioning.batch_sharding(mesh)
    rep = partitioning.replicated(mesh)
    micro = dict(objective=objective, num_microbatches=loop.num_microbatches)
    update = dict(tx=tx, schedule=schedule, guard=loop.guard)
    # Traced under the logical axis rules: the layers' activation
    # constraints take effect on the mesh.
    self._step_fn = partitioning.sharded_jit(
        functools.partial(step_lib.train_step, **micro, **update), mesh,
        in_shardings=(self.state_shardings, self.batch_sharding,
                      frozen_shardings),
        out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
    # The same step in three programs (step.sample_phase, label_phase,
    # update_phase), timed by profiling.PhaseTimer. The samples and labels
    # between them keep the shardings the compiler gave them.
    self.phased = loop.phase_timing and step_lib.has_phases(objective)
    if self.phased:
      self._sample_fn = partitioning.sharded_jit(
          functools.partial(step_lib.sample_phase, **micro), mesh)
      self._label_fn = partitioning.sharded_jit(
          functools.partial(step_lib.label_phase, **micro), mesh)
      self._update_fn = partitioning.sharded_jit(
          functools.partial(step_lib.update_phase, **micro, **update), mesh,
          out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
    self.batch_keys = None  # The features the step reads (set on first batch).
    self.log = metrics_log.MetricsLog(
        self.directory, name=name, total_steps=loop.num_steps,
        rows_per_step=rows_per_step or data.batch_size,
        enabled=jax.process_index() == 0)

  def _place(self, array: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, array)

  def initial_state(self) -> tuple[train_state_lib.TrainState, int]:
    """The latest checkpoint of this stage if any (resume), else a new state
    created directly in its shardings. Returns (state, data position)."""
    restored = self.checkpointer.restore_latest(
        self.abstract_state, check_meta=self._check_meta)
    if restored is not None:
      step, meta = restored.step, restored.meta
      print(f"[{self.name}] resumed from {self.checkpointer.directory}/"
            f"{step} (data position {meta['data_position']}).", flush=True)
      self.log.truncate_after(step)
      return restored.state, int(meta["data_position"])
    create = lambda p: train_state_lib.create(p, self.tx, self.loop.seed)
    if self.init_params is None:
      init = lambda: create(scoring.init_params(
          self.network, jax.random.PRNGKey(self.loop.seed)))
      state = jax.jit(init, out_shardings=self.state_shardings)()
    else:
      state = jax.jit(create, in_shardings=(self.param_shardings,),
                      out_shardings=self.state_shardings)(self.init_params())
    return state, 0

  def _check_meta(self, meta: dict) -> None:
    where = f"{self.checkpointer.directory}/{meta.get('step')}"
    check_same_model(meta, self.network.config, where)
    check_same_data(meta, self.data, where)

  def _save(self, state, data_position: int) -> None:
    step = int(state.step)
    if int(state.nonfinite_step) != train_state_lib.NOT_HALTED:
      # A halted state stopped advancing; its data position is its step (one
      # global batch per step). The halt belongs to this run, not to the
      # state: saved with it, a rerun (say with a lower learning rate) would
      # restore a state that refuses every update.
      data_position = step
      state = state.replace(nonfinite_step=self._not_halted(
          state.nonfinite_step), nonfinite_what=self._not_halted(
              state.nonfinite_what, 0))
    self.checkpointer.save(step, state, {
        **self.meta, "step": step, "data_position": data_position,
        "model_config": dataclasses.asdict(self.network.config),
        "data": data_stream(self.data)})

  def _not_halted(self, like: jax.Array,
                  value: int = train_state_lib.NOT_HALTED) -> jax.Array:
    """A replicated int32 scalar `value` (on every host, in `like`'s
    sharding), to clear a halted state's guard fields before saving."""
    return jax.jit(lambda x: jnp.full_like(x, value),
                   out_shardings=partitioning.replicated(self.mesh))(like)

  def evaluate(self, state) -> dict:
    if self.evaluation is None:
      return {}
    return self.evaluation(state.params, self.frozen)

  def _batch(self, it) -> dict:
    host = next(it)
    if self.batch_keys is None:
      self.batch_keys = tuple(sorted(host))
    return {k: self._place(host[k]) for k in self.batch_keys}

  def run(self) -> tuple[train_state_lib.TrainState, dict]:
    """Trains to `loop.num_steps` (or until a stop signal). Returns the final
    state and the last logged metrics (including "stopped_by"). Raises
    Diverged when the divergence guard halts the stage."""
    state, position = self.initial_state()
    it = pipeline.make_iterator(self.data, shard_index=jax.process_index(),
                                num_shards=jax.process_count(),
                                start_position=position)
    _print_truncation(self.name, it)
    step, last = int(state.step), {}
    if step == 0 and self.evaluation is not None and self.loop.num_steps > 0:
      last = self.evaluate(state)
      self.log.write(0, last)
    pending, previous = None, None
    timer = self._timer = profiling.PhaseTimer()
    self._first_step = step + 1
    trace = None
    if self.profile_steps is not None and jax.process_index() == 0:
      trace = profiling.TraceWindow(self.directory / "profile",
                                    *self.profile_steps)
    with stopping.StopSignals() as stop, _closing(trace), _closing(timer):
      while step < self.loop.num_steps and not self._stop_agreed(stop):
        batch = self._batch(it)
        if step + 1 == self._first_step:
          self._precompile(state, batch)
        if trace is not None:
          trace.before_step(step + 1)
        state, metrics = self._dispatch(timer, step + 1, state, batch)
        step += 1
        if trace is not None:
          trace.after_step(step, metrics)
          if trace.done:
            print(f"[{self.name}] profiler trace of steps "
                  f"{trace.start}-{trace.stop}: {trace.directory} (open with "
                  f"tensorboard --logdir {trace.directory}, or Perfetto)",
                  flush=True)
            trace = None
        if pending is not None:  # Read step n-1's metrics after dispatching n.
          last = self._write(*pending)
        if _halted(previous):  # Step n-1 halted; step n left the state as is.
          break
        previous = metrics
        pending = (step, metrics) if self._due(step, self.loop.log_every) else None
        if self._due(step, self.loop.eval_every) or step == self.loop.num_steps:
          train_metrics = {} if pending is None else self._host(*pending)
          pending = None
          last = {**train_metrics, **self.evaluate(state)}
          self.log.write(step, last)
        if self.checkpointer.should_save(step):
          self._save(state, it.position)
      if _halted(previous):
        self._halt(state)
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

  def _halt(self, state) -> None:
    """Saves the last finite state and raises Diverged."""
    good = int(state.step)
    bad = int(state.nonfinite_step)
    what = train_state_lib.describe_nonfinite(int(state.nonfinite_what))
    # A halted state never advanced past the failing step: it is the state
    # after `good` steps, and the data position equals the step.
    self._save(state, good)
    self.checkpointer.wait()
    skipped = int(state.skipped)
    extra = (f" ({skipped} earlier non-finite updates were skipped)"
             if skipped else "")
    raise Diverged(
        f"[{self.name}] the {what} became non-finite (NaN or Inf) at step "
        f"{bad + 1} of {self.loop.num_steps}{extra}. Nothing non-finite was "
        f"saved: the last finite state is checkpoint {good} in "
        f"{self.checkpointer.directory}, and a rerun resumes from it. Try a "
        "lower learning rate (OptimizerConfig.learning_rate), a warm-up, or "
        "LoopConfig.nonfinite='skip' to drop rare bad updates.")

  @staticmethod
  def _stop_agreed(stop: stopping.StopSignals) -> bool:
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

  def _precompile(self, state, batch) -> None:
    """Compiles the step before its first call and gives the host memory
    that compilation (and initialisation, and the first evaluation) freed
    back to the operating system, so that it does not add to the steps'
    peak (`ipo_md.host_memory`). In phase_timing mode the three programs
    compile at their first calls as before. On the CPU it first has glibc
    keep the steps' freed buffers for the next step
    (`host_memory.reuse_freed_memory`), in either mode."""
    if jax.default_backend() == "cpu":
      host_memory.reuse_freed_memory()
    if self.phased:
      return
    seconds = host_memory.precompile(self._step_fn, state, batch, self.frozen)
    print(f"[{self.name}] compiled the train step in {seconds:.1f} s",
          flush=True)

  def _dispatch(self, timer: profiling.PhaseTimer, step: int, state, batch):
    """Dispatches one step (no sync), its phases handed to the timer."""
    timer.begin(step)
    if self.phased:
      samples = self._sample_fn(state, batch, self.frozen)
      timer.phase("sample", samples)
      prepared, prep_metrics = self._label_fn(state, batch, self.frozen,
                                              samples)
      timer.phase("preference", prep_metrics)
      state, metrics = self._update_fn(state, prepared, prep_metrics,
                                       self.frozen)
      timer.phase("update", metrics)
    else:
      state, metrics = self._step_fn(state, batch, self.frozen)
      timer.phase("device", metrics)
    timer.end()
    return state, metrics

  def _host(self, step, metrics):
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    # The phase times of the steps up to this one (finished: its metrics are
    # on the host, so the wait is only for the timer's thread to stamp it).
    self._timer.wait(step)
    # The run's first step is left out of the means: its host time is the
    # compilation.
    timings = [t for t in self._timer.poll() if t["step"] != self._first_step]
    if timings:
      keys = [k for k in timings[0] if k != "step"]
      host.update({k: float(np.mean([t[k] for t in timings])) for k in keys})
    return host

  def _write(self, step, metrics):
    host = self._host(step, metrics)
    self.log.write(step, host)
    return host

  def close(self):
    self.checkpointer.close()
    self.log.close()


def check_same_model(meta: dict, config, where: str) -> None:
  """Raises unless a checkpoint's meta was written by a model of `config`."""
  saved = meta.get("model_config")
  current = dataclasses.asdict(config)
  if saved is None:
    return
  diff = {k: (saved.get(k), v) for k, v in current.items()
          if saved.get(k) != (list(v) if isinstance(v, tuple) else v)}
  if diff:
    raise ValueError(
        f"The checkpoint {where} was written by another model (saved vs "
        f"configured: {diff}). Use a fresh MODEL_DIR, or configure the model "
        "it was trained with.")


def data_stream(data: pipeline.DataConfig) -> dict:
  """What fixes the global order of a stage's batches (saved with each
  checkpoint). The data position counts global batches of this stream, so
  a resume continues the same order on any mesh or number of hosts, but
  not if one of these changed."""
  return {"task": data.task, "split": data.split, "seed": data.seed,
          "shuffle": data.shuffle, "batch_size": data.batch_size,
          "max_examples": data.max_examples}


def check_same_data(meta: dict, data: pipeline.DataConfig, where: str) -> None:
  """Raises unless a checkpoint's data stream is the one `data` yields
  (checkpoints written before it was recorded are not checked)."""
  saved = meta.get("data")
  if not isinstance(saved, dict):
    return
  current = data_stream(data)
  diff = {k: (saved.get(k), v) for k, v in current.items()
          if k in saved and saved[k] != v}
  if diff:
    raise ValueError(
        f"The checkpoint {where} was written reading another data stream "
        f"(saved vs configured: {diff}). Its data position counts global "
        "batches of that stream, so resuming would not continue its data "
        "order. Set DataConfig back to the saved values to resume (the mesh "
        "and the number of hosts may change), or train the new data in a "
        "new stage or a fresh MODEL_DIR.")


@contextlib.contextmanager
def _closing(closable):
  """Closes a profiler trace (or phase timer) when the loop ends or raises."""
  try:
    yield
  finally:
    if closable is not None:
      closable.close()


def _halted(metrics) -> bool:
  return metrics is not None and bool(float(metrics["guard/halted"]))


def _print_truncation(name: str, it) -> None:
  summary = getattr(it, "truncation_summary", None)
  if summary is not None and jax.process_index() == 0:
    text = summary()
    if text:
      print(f"[{name}] {text}", flush=True)
