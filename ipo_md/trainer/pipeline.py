"""A run is a sequence of stages over the models it declares by role.

Each stage trains one role (`trains`: the policy, the preference model or the
reward model) in `<model_dir>/<stage name>/` with its own checkpoints and
metrics, and reads other roles frozen (`frozen`: role -> source). A source is
an earlier stage's name (its final parameters, read back from its last
checkpoint, so a later stage sees exactly what was saved) or `"initial"` (the
role's initial checkpoint). The trained model starts from `init`: by default
the latest earlier stage that trained the same role, else the role's initial
checkpoint, else a random initialisation. The paper's pipeline in miniature:

  sft     trains policy                                (random or a checkpoint)
  pm      trains preference, init from sft
  ipo_md  trains policy from sft, frozen {reference: sft, preference: pm}

Before any stage trains (and under --dry_run), `plan` builds every stage's
objective and evaluation and checks them against their data kind, task,
models, sources, batch sizes and optimizer, and traces each train step
abstractly (jax.eval_shape: no memory, no compilation), so a mistake in the
last stage is reported in seconds. Re-running the same command skips finished
stages and resumes an interrupted one from its latest checkpoint.
"""

import dataclasses
import math
import time
from typing import Any, Callable, Mapping

from etils import epath
import jax
import numpy as np

from ipo_md import checkpoints
from ipo_md import optim
from ipo_md import partitioning
from ipo_md import types
from ipo_md.data import feature_converters
from ipo_md.data import pipeline as data_pipeline
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import step as step_lib
from ipo_md.trainer import stopping

INITIAL = models_lib.INITIAL


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
  """Adafactor (T5X defaults) with a learning-rate schedule."""

  learning_rate: float = 1e-4
  schedule: str = "constant"
  warmup_steps: int = 0
  # "warmup_cosine": the step where the rate reaches 0 (0: the stage's
  # LoopConfig.num_steps).
  decay_steps: int = 0
  decay_rate: float = 0.8
  clipping_threshold: float | None = 1.0
  # None: no first moment (T5X's Adafactor); else its decay, e.g. 0.9.
  momentum: float | None = None

  def __post_init__(self):
    lr = self.learning_rate
    if (isinstance(lr, bool) or not isinstance(lr, (int, float))
        or not 0 < lr < math.inf):
      raise ValueError(
          f"OptimizerConfig.learning_rate={lr!r} must be a finite float > 0 "
          "(e.g. 1e-4, the paper's).")
    if self.schedule not in optim.SCHEDULES:
      raise ValueError(
          f"OptimizerConfig.schedule={self.schedule!r}; choose one of "
          f"{optim.SCHEDULES}.")
    if (isinstance(self.warmup_steps, bool)
        or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
      raise ValueError(
          f"OptimizerConfig.warmup_steps={self.warmup_steps!r} must be an int "
          ">= 0.")
    if (isinstance(self.decay_steps, bool)
        or not isinstance(self.decay_steps, int) or self.decay_steps < 0):
      raise ValueError(
          f"OptimizerConfig.decay_steps={self.decay_steps!r} must be an int "
          ">= 0 (0: the stage's num_steps).")
    m = self.momentum
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float))
                          or not 0 < m < 1):
      raise ValueError(
          f"OptimizerConfig.momentum={m!r} must be None (no first moment, "
          "T5X's default) or a decay in (0, 1), e.g. 0.9.")
    # The remaining checks live in optim (the stage's length is not known
    # here; Stage checks decay_steps against it).
    self.build(num_steps=max(self.decay_steps, self.warmup_steps + 1))

  def build(self, num_steps: int):
    """(tx, schedule) for a stage of `num_steps` steps."""
    schedule = optim.make_schedule(self.schedule,
                                   base_learning_rate=self.learning_rate,
                                   warmup_steps=self.warmup_steps,
                                   decay_steps=self.decay_steps or num_steps)
    tx = optim.adafactor_t5(schedule, decay_rate=self.decay_rate,
                            clipping_threshold=self.clipping_threshold,
                            momentum=self.momentum)
    return tx, schedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
  """One training stage.

  Attributes:
    name: sub-folder of the model dir, and the console prefix.
    objective: called as objective(models=Models) -> an objective of
      `ipo_md.trainer.objectives` (SFT, OnlinePairwise, ...).
    data: the training batches.
    loop: steps, logging, evaluation interval, microbatches, seed, guard.
    trains: the role trained: 'policy', 'preference' or 'reward'.
    init: where the trained model starts: an earlier stage's name,
      'initial' (the role's initial checkpoint, else random), or None (the
      latest earlier stage that trained this role, else 'initial').
    frozen: role -> source of the frozen models the stage reads, e.g.
      {'reference': 'sft', 'preference': 'pm'}.
    evaluation: called as evaluation(models=Models) -> an evaluation of
      `ipo_md.trainer.evaluation`, or None.
    optimizer: Adafactor and schedule.
    checkpoint: how often to save, how many to keep.
  """

  name: str
  objective: Callable[..., Any]
  data: data_pipeline.DataConfig
  loop: loop_lib.LoopConfig
  trains: str = models_lib.POLICY
  init: str | None = None
  frozen: Mapping[str, str] = dataclasses.field(default_factory=dict)
  evaluation: Callable[..., Any] | None = None
  optimizer: OptimizerConfig = OptimizerConfig()
  checkpoint: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig()

  def __post_init__(self):
    object.__setattr__(self, "frozen", dict(self.frozen or {}))


@dataclasses.dataclass(frozen=True)
class PlannedStage:
  """A stage with its sources resolved and its objective built."""

  stage: Stage
  init: str                  # an earlier stage's name or INITIAL
  frozen: dict[str, str]     # role -> an earlier stage's name or INITIAL
  network: Any               # the trained model's network
  objective: Any
  evaluation: Any
  tx: Any
  schedule: Any


class StageError(ValueError):
  """A configuration mistake in one stage (the message names it)."""


def _fail(stage: Stage, message: str):
  raise StageError(f"stage {stage.name!r}: {message}")


def _check_name(stage: Stage, seen: dict) -> None:
  name = stage.name
  if not isinstance(name, str) or not name or "/" in name or name in (
      INITIAL, ".", ".."):
    raise StageError(
        f"Stage name {name!r} must be a non-empty folder name other than "
        f"{INITIAL!r}.")
  if name in seen:
    _fail(stage, "two stages have this name; give each a unique name.")


def _resolve_init(stage: Stage, trained_by: dict, specs) -> str:
  if stage.init is None:
    earlier = [s for s, role in trained_by.items() if role == stage.trains]
    return earlier[-1] if earlier else INITIAL
  if stage.init == INITIAL:
    return INITIAL
  if stage.init not in trained_by:
    _fail(stage, f"init={stage.init!r} is not an earlier stage (earlier: "
          f"{list(trained_by)}); name one, or {INITIAL!r}.")
  source_role = trained_by[stage.init]
  mine = models_lib.config_of(stage.trains, specs)
  theirs = models_lib.config_of(source_role, specs)
  # Dropout, activation dtype and remat may differ (a bf16 or dropout PM
  # from a float32 SFT model): they do not change the parameters.
  diff = mine.parameter_differences(theirs)
  if diff:
    _fail(stage, f"init={stage.init!r} trained the {source_role} model, whose "
          f"architecture differs from the {stage.trains} model's ({diff}); "
          "give both the same config or start from 'initial'.")
  return stage.init


def _resolve_frozen(stage: Stage, trained_by: dict, specs) -> dict:
  out = {}
  for role, source in stage.frozen.items():
    if role not in models_lib.FROZEN:
      _fail(stage, f"frozen role {role!r} is not one of {models_lib.FROZEN}.")
    want = models_lib.TRAINED_AS[role]
    if source == INITIAL:
      if not _initial_checkpoint(role, specs):
        _fail(stage, f"reads the {role} model from {INITIAL!r}, but "
              f"models[{role!r}] has no initial_checkpoint; set one, or read "
              f"it from an earlier stage that trains the {want} (e.g. "
              f"frozen={{{role!r}: 'sft'}}).")
    elif source not in trained_by:
      _fail(stage, f"reads the {role} model from {source!r}, which is not an "
            f"earlier stage (earlier: {list(trained_by)}) nor {INITIAL!r}; no "
            "stage or checkpoint provides it.")
    elif trained_by[source] != want:
      _fail(stage, f"reads the {role} model from stage {source!r}, which "
            f"trains the {trained_by[source]} model, not the {want}.")
    if role in (models_lib.PREFERENCE, models_lib.REWARD) and role not in specs:
      _fail(stage, f"reads the {role} model, but the run declares no "
            f"models[{role!r}] (its config and head).")
    out[role] = source
  return out


def _initial_checkpoint(role: str, specs) -> str | None:
  spec = specs.get(role)
  if spec is None and role == models_lib.REFERENCE:
    spec = specs[models_lib.POLICY]
  return None if spec is None else spec.initial_checkpoint


def _build(stage: Stage, built: models_lib.Models, what: str, factory):
  try:
    return factory(models=built)
  except (ValueError, TypeError) as e:
    _fail(stage, f"building its {what}: {e}")


def _check_data(stage: Stage, objective) -> None:
  data = stage.data
  kind = getattr(objective, "batch_kind", None)
  if kind != data.kind:
    _fail(stage, f"its objective {type(objective).__name__} reads {kind!r} "
          f"batches but its data is kind {data.kind!r} (task {data.task!r}); "
          f"bind a {kind!r} task and set DataConfig.kind={kind!r}.")
  task = data_pipeline.get_task(data.task)
  task_kind = getattr(data_pipeline, "task_kind", None)
  if task_kind is not None:
    found = task_kind(data.task)
    if found is not None and found != data.kind:
      _fail(stage, f"task {data.task!r} is a {found!r} task, but the stage "
            f"reads {data.kind!r} batches ({type(objective).__name__}); bind "
            f"a {data.kind!r} task.")
  feature_converters.batch_lengths(data.kind, data.feature_lengths,
                                   task.output_features, data.task)


def _readers(stage: Stage, frozen: dict, specs) -> dict[str, int]:
  """role -> vocab_size of every model that reads the stage's tokens: the
  trained one and the frozen ones."""
  roles = [stage.trains] + [r for r in frozen if r != stage.trains]
  return {r: models_lib.config_of(r, specs).vocab_size for r in roles}


def _data_vocabulary(stage: Stage, what: str, cfg, readers: dict,
                     noted: set | None):
  """Checks a DataConfig against its task (split, vocabulary size) without
  reading an example; returns the task's vocabulary, or None when it cannot
  be read in a dry run (`noted`: the tasks already said so, None outside a
  dry run)."""
  role, size = min(readers.items(), key=lambda kv: kv[1])
  try:
    data_pipeline.task_vocabulary(cfg.task)
  except ValueError as e:
    if noted is None:
      _fail(stage, f"{what}: {e}")
    task = data_pipeline.get_task(cfg.task)
    if cfg.split not in task.splits:
      _fail(stage, f"{what}: task {cfg.task!r} has no split {cfg.split!r}; "
            f"it has {tuple(task.splits)}. Set DataConfig.split to one of "
            "them.")
    if cfg.task not in noted:
      noted.add(cfg.task)
      print(f"[{stage.name}] note: the vocabulary of task {cfg.task!r} "
            "cannot be read here, so its size and the signals' vocabulary "
            f"were not checked in this dry run ({e})", flush=True)
    return None
  try:
    data_pipeline.validate_config(cfg)
  except ValueError as e:
    _fail(stage, f"{what}: {e}")
  try:  # Only the size can fail now.
    return data_pipeline.validate_config(cfg, vocab_size=size)
  except ValueError as e:
    _fail(stage, f"{what}, read by the {role} model: {e}")


def signals_of(obj) -> dict[str, Any]:
  """The preference or reward signals an objective or evaluation uses, by
  name: `signals()` where defined (an evaluation's judges), else its
  `signal` and `gold` attributes. Names of learned models resolve to them."""
  found = {}
  signals = getattr(obj, "signals", None)
  if callable(signals):
    found.update(signals())
  for attr in ("signal", "gold"):
    try:
      value = getattr(obj, attr, None)
    except ValueError:  # A learned model the run lacks: reported elsewhere.
      value = None
    if value is not None and not isinstance(value, str):
      found.setdefault(attr, value)
  return found


def _vocabulary_hook(signal):
  """The object whose `check_vocabulary` speaks for `signal`: the signal,
  or what it wraps (a ScoreReward's scorer)."""
  for candidate in (signal, getattr(signal, "scorer", None)):
    if callable(getattr(candidate, "check_vocabulary", None)):
      return candidate
  return None


def _check_signals(stage: Stage, what: str, obj, vocabulary, task: str):
  for name, signal in signals_of(obj).items():
    hook = _vocabulary_hook(signal)
    if hook is None:
      continue
    try:
      hook.check_vocabulary(vocabulary)
    except ValueError as e:
      which = "signal" if name == "signal" else f"signal {name!r}"
      _fail(stage, f"its {what} {which} ({type(signal).__name__}) does not "
            f"fit task {task!r}: {e}")


def _check_vocabularies(stage: Stage, objective, evaluation, frozen: dict,
                        specs, noted: set | None) -> None:
  """Every task a stage reads (training and evaluation data) fits every
  model that reads it, and every signal that judges it."""
  readers = _readers(stage, frozen, specs)
  vocabulary = _data_vocabulary(stage, "its data", stage.data, readers,
                                noted)
  if vocabulary is not None:
    _check_signals(stage, "objective's", objective, vocabulary,
                   stage.data.task)
  data = getattr(evaluation, "data", None)
  if evaluation is None or data is None:
    return
  vocabulary = _data_vocabulary(stage, "its evaluation data", data, readers,
                                noted)
  if vocabulary is not None:
    _check_signals(stage, "evaluation's", evaluation, vocabulary, data.task)


def _check_evaluation_batch(stage: Stage, evaluation, mesh) -> None:
  data = getattr(evaluation, "data", None)
  if data is None:
    return
  try:
    partitioning.check_batch_size(data.batch_size, mesh,
                                  "its evaluation DataConfig.batch_size")
  except ValueError as e:
    _fail(stage, str(e))


def _check_reads(stage: Stage, objective, evaluation, frozen: dict) -> None:
  needed = set(getattr(objective, "reads", ()))
  if evaluation is not None:
    needed |= set(getattr(evaluation, "reads", ()))
  missing = sorted(needed - set(frozen))
  if missing:
    _fail(stage, f"its objective/evaluation read the frozen {missing} "
          f"model(s), which the stage does not provide; add them to "
          f"Stage.frozen (e.g. {{{missing[0]!r}: 'sft'}}).")
  unused = sorted(set(frozen) - needed)
  if unused:
    _fail(stage, f"Stage.frozen names {unused}, which neither its objective "
          "nor its evaluation reads; remove them.")


def abstract_batch(data: data_pipeline.DataConfig) -> dict:
  """ShapeDtypeStructs of the batch a DataConfig yields (no data read)."""
  b, lengths = data.batch_size, data.feature_lengths
  i32 = lambda n: jax.ShapeDtypeStruct((b, n), np.int32)
  if data.kind == feature_converters.PAIRS:
    return {"inputs": i32(lengths["inputs"]), "chosen": i32(lengths["targets"]),
            "rejected": i32(lengths["targets"]),
            "label": jax.ShapeDtypeStruct((b,), np.float32)}
  return {k: i32(v) for k, v in lengths.items()}


def _abstract_frozen(frozen: dict, specs, mesh) -> types.Frozen:
  trees = {}
  for role in frozen:
    config = models_lib.config_of(role, specs)
    abstract, shardings = models_lib.param_shardings(config, mesh)
    trees[role] = checkpoints.abstract_with_shardings(abstract, shardings)
  return types.Frozen(**trees)


def _trace(stage: Stage, planned: "PlannedStage", specs, mesh) -> None:
  """Traces the train step abstractly: trace-time errors (a tau <= 0, a
  template too long for its model, shape mismatches) surface here."""
  abstract_state, _, _ = loop_lib.abstract_train_state(
      planned.network, planned.tx, mesh, stage.loop.seed)
  step = lambda s, b, f: step_lib.train_step(
      s, b, f, objective=planned.objective, tx=planned.tx,
      schedule=planned.schedule, num_microbatches=stage.loop.num_microbatches,
      guard=stage.loop.guard)
  try:
    jax.eval_shape(step, abstract_state, abstract_batch(stage.data),
                   _abstract_frozen(planned.frozen, specs, mesh))
  except (ValueError, TypeError) as e:
    _fail(stage, f"its train step does not trace: {e}")


def plan(*, models: dict[str, models_lib.ModelSpec], stages: list[Stage],
         mesh: jax.sharding.Mesh, trace: bool = True,
         dry_run: bool = False) -> list[PlannedStage]:
  """Checks the whole run and resolves every stage (see the module doc).

  With `dry_run`, a task vocabulary that cannot be read here (the default T5
  vocabulary on gs:// without network) is skipped with a printed note;
  otherwise it is an error, as it would be when the stage starts.

  Raises:
    StageError (a ValueError) naming the stage and the fix.
  """
  if not stages:
    raise StageError("The run has no stages; set train.stages = [...].")
  models_lib.check_specs(models)
  built = models_lib.build(models)
  for role, spec in models.items():  # Cheap (abstract): meshes that cannot
    try:                             # split a parameter fail here.
      models_lib.param_shardings(spec.config, mesh)
    except ValueError as e:
      raise StageError(f"models[{role!r}] on mesh {dict(mesh.shape)}: "
                       f"{e}") from None
  nets = {}
  if built.policy is not None:
    nets[models_lib.POLICY] = built.policy
  if built.preference is not None:
    nets[models_lib.PREFERENCE] = built.preference.network
  if built.reward is not None:
    nets[models_lib.REWARD] = built.reward.network
  trained_by, planned = {}, []
  noted = set() if dry_run else None
  for stage in stages:
    _check_name(stage, trained_by)
    if stage.trains not in models_lib.TRAINABLE:
      _fail(stage, f"trains={stage.trains!r}; choose one of "
            f"{models_lib.TRAINABLE}.")
    if stage.trains not in nets:
      _fail(stage, f"trains the {stage.trains} model, which the run does not "
            f"declare; add models[{stage.trains!r}].")
    init = _resolve_init(stage, trained_by, models)
    frozen = _resolve_frozen(stage, trained_by, models)
    objective = _build(stage, built, "objective", stage.objective)
    evaluation = (None if stage.evaluation is None else
                  _build(stage, built, "evaluation", stage.evaluation))
    _check_data(stage, objective)
    _check_reads(stage, objective, evaluation, frozen)
    try:
      loop_lib.check_batch(stage.data, stage.loop, mesh)
    except ValueError as e:
      _fail(stage, str(e))
    _check_vocabularies(stage, objective, evaluation, frozen, models,
                        noted)
    _check_evaluation_batch(stage, evaluation, mesh)
    tx, schedule = stage.optimizer.build(num_steps=stage.loop.num_steps)
    p = PlannedStage(stage=stage, init=init, frozen=frozen,
                     network=nets[stage.trains], objective=objective,
                     evaluation=evaluation, tx=tx, schedule=schedule)
    planned.append(p)
    trained_by[stage.name] = stage.trains
  if trace:
    trace_steps(planned, models, mesh)
  return planned


def trace_steps(planned: list[PlannedStage], models, mesh) -> None:
  """Traces every stage's train step abstractly (`plan` does unless told
  not to). It costs seconds per stage, so it comes after every stage's
  configuration is known to be right: a mistake in the last stage is
  reported first."""
  for p in planned:
    _trace(p.stage, p, models, mesh)


class _Sources:
  """Parameters of stage outputs and initial checkpoints, loaded on demand
  (from disk: a later stage reads exactly what was saved) and dropped when
  no later stage needs them."""

  def __init__(self, model_dir, specs, planned, mesh):
    self.model_dir, self.specs, self.mesh = model_dir, specs, mesh
    self.stages = {p.stage.name: p.stage for p in planned}
    self.cache = {}

  def get(self, source: str, role: str):
    key = _key(source, role)
    if key not in self.cache:
      self.cache[key] = self._load(source, role)
    return self.cache[key]

  def _load(self, source: str, role: str):
    if source == INITIAL:
      config = models_lib.config_of(role, self.specs)
      path = _initial_checkpoint(role, self.specs)
      print(f"[{role}] loading {path}", flush=True)
      return models_lib.load_params(path, config, self.mesh)
    stage = self.stages[source]
    config = models_lib.config_of(stage.trains, self.specs)
    return models_lib.load_params(f"{self.model_dir}/{source}", config,
                                  self.mesh, step=stage.loop.num_steps)

  def release(self, still_needed: set) -> None:
    for key in list(self.cache):
      if key not in still_needed:
        del self.cache[key]


def _key(source: str, role: str):
  """A stage's output is one tree whoever reads it; initial checkpoints are
  per role."""
  return (INITIAL, role) if source == INITIAL else source


def _needed_after(planned, index) -> set:
  keys = set()
  for p in planned[index + 1:]:
    keys.add(_key(p.init, p.stage.trains))
    keys.update(_key(src, role) for role, src in p.frozen.items())
  return keys


def _latest_step(directory, config, data=None) -> int | None:
  """The latest saved step of a stage folder (file sizes checked, nothing
  hashed or moved), after checking that a model of `config` wrote it."""
  if not epath.Path(f"{directory}/checkpoints").exists():
    return None
  checkpointer = checkpoints.Checkpointer(f"{directory}/checkpoints",
                                          checkpoints.CheckpointConfig())
  try:
    latest = checkpointer.latest_meta()
    if latest is None:
      return None
    step, meta = latest
    try:
      loop_lib.check_same_model(meta, config,
                                f"{checkpointer.directory}/{step}")
      if data is not None:
        loop_lib.check_same_data(meta, data,
                                 f"{checkpointer.directory}/{step}")
    except ValueError as e:
      raise StageError(str(e)) from None
    return step
  finally:
    checkpointer.close()


def check_progress(model_dir: str, planned: list[PlannedStage]) -> dict:
  """{stage: latest saved step}; refuses a stage written by another model or
  saved beyond its num_steps (its num_steps was lowered after it trained)."""
  progress = {}
  for p in planned:
    latest = _latest_step(f"{model_dir}/{p.stage.name}", p.network.config,
                          p.stage.data)
    if latest is not None and latest > p.stage.loop.num_steps:
      _fail(p.stage, f"{model_dir}/{p.stage.name} already holds a checkpoint "
            f"at step {latest}, beyond num_steps={p.stage.loop.num_steps}. "
            f"Set num_steps >= {latest} to continue it, or use a fresh "
            "MODEL_DIR to train it anew.")
    progress[p.stage.name] = latest
  return progress


def check_initial_checkpoints(planned: list[PlannedStage], specs) -> None:
  """Reads the config and shapes (no tensor) of every initial checkpoint the
  run will load, so a checkpoint of another size or vocabulary is refused
  before the first stage trains."""
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top

  seen = set()
  for p in planned:
    uses = [(p.init, p.stage.trains)] + [(src, role)
                                          for role, src in p.frozen.items()]
    for source, role in uses:
      path = _initial_checkpoint(role, specs)
      if source != INITIAL or not path or (role, path) in seen:
        continue
      seen.add((role, path))
      try:
        params_io.check_initial_checkpoint(
            path, models_lib.config_of(role, specs))
      except FileNotFoundError as e:
        option = ("train.initial_checkpoint (INITIAL_CHECKPOINT in the "
                  "shipped gin files)" if role in (models_lib.POLICY,
                                                   models_lib.REFERENCE)
                  else f"the initial_checkpoint of models[{role!r}]")
        _fail(p.stage, f"the {role} model's initial checkpoint: {e} Set "
              f"{option} to a params checkpoint, a Hugging Face or T5X "
              "checkpoint, or a training stage folder.")
      except ValueError as e:
        _fail(p.stage, f"the {role} model's initial checkpoint: {e}")


# Registrations whose tasks are generated by code from integer seeds: no
# file can be missing or empty, and generating a split costs seconds.
_GENERATED_BY = ("ipo_md_tasks.register_synthetic_tasks",)


def check_data_sources(planned: list[PlannedStage]) -> None:
  """Reads the first example of every task split that a stage after the
  first reads (its data and its evaluation's), so that a missing or empty
  file, a bad first line or a comparisons split that keeps nothing stops
  the run before the first stage trains rather than when that stage
  starts. (The first stage reads its own data before it trains.) Tasks
  generated by code are skipped."""
  from ipo_md.data import registration  # pylint: disable=g-import-not-at-top

  seen = set()
  for p in planned[1:]:
    configs = [("its data", p.stage.data)]
    data = getattr(p.evaluation, "data", None)
    if data is not None:
      configs.append(("its evaluation data", data))
    for what, cfg in configs:
      key = (cfg.task, cfg.split)
      if key in seen or registration.configured_by(cfg.task) in _GENERATED_BY:
        continue
      seen.add(key)
      try:
        next(iter(data_pipeline.task_examples(cfg.task, cfg.split, limit=1)),
             None)
      except ValueError as e:
        _fail(p.stage, f"{what} ({cfg.task}:{cfg.split}): {e}")


def _meta(p: PlannedStage, specs) -> dict:
  head = specs[p.stage.trains].head if p.stage.trains in specs else None
  return {"stage": p.stage.name, "role": p.stage.trains,
          "head": None if head is None else _jsonable(
              dataclasses.asdict(head))}


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (tuple, list)):
    return [_jsonable(v) for v in x]
  return x


def _trainer(p: PlannedStage, model_dir, specs, sources, mesh,
             profile_steps=None):
  stage = p.stage
  frozen = {role: sources.get(src, role) for role, src in p.frozen.items()}
  frozen_shardings = {
      role: models_lib.param_shardings(models_lib.config_of(role, specs),
                                       mesh)[1] for role in p.frozen}
  init_params = None
  if p.init != INITIAL or _initial_checkpoint(stage.trains, specs):
    init_params = lambda: sources.get(p.init, stage.trains)
  evaluation = (None if p.evaluation is None else
                p.evaluation.build(mesh, stage.loop.seed))
  return loop_lib.Trainer(
      name=stage.name, network=p.network, objective=p.objective, tx=p.tx,
      schedule=p.schedule, mesh=mesh, data=stage.data, loop=stage.loop,
      checkpoint=stage.checkpoint, directory=f"{model_dir}/{stage.name}",
      frozen=types.Frozen(**frozen),
      frozen_shardings=types.Frozen(**frozen_shardings),
      init_params=init_params, evaluation=evaluation, meta=_meta(p, specs),
      rows_per_step=stage.data.batch_size * p.objective.rows_per_example,
      profile_steps=profile_steps)


def run(*, model_dir: str, models: dict[str, models_lib.ModelSpec],
        stages: list[Stage], mesh: jax.sharding.Mesh,
        planned: list[PlannedStage] | None = None,
        profile_steps: tuple[int, int] | None = None) -> dict:
  """Runs the stages in order; returns {stage name: last metrics}.

  `profile_steps` (A, B): every stage that runs steps A..B writes a JAX
  profiler trace of them to MODEL_DIR/<stage>/profile."""
  planned = planned or plan(models=models, stages=stages, mesh=mesh)
  check_initial_checkpoints(planned, models)
  progress = check_progress(model_dir, planned)
  sources = _Sources(model_dir, models, planned, mesh)
  results = {}
  with stopping.StopSignals() as stop:
    for index, p in enumerate(planned):
      if _stopped_before(p.stage, stop, results):
        return results
      if progress[p.stage.name] == p.stage.loop.num_steps:
        print(f"[{p.stage.name}] already finished in {model_dir}/"
              f"{p.stage.name}; skipping.", flush=True)
        continue
      _run_stage(p, model_dir, models, sources, mesh, results,
                 profile_steps)
      if results[p.stage.name].get("stopped_by"):
        return results
      sources.release(_needed_after(planned, index))
  return results


def _stopped_before(stage: Stage, stop, results: dict) -> bool:
  """True (and says so) when a stop signal came before `stage` started."""
  if not stop.requested:
    return False
  print(f"[{stage.name}] {stop.signal} received before this stage started; "
        "stopping. Rerun the same command to resume.", flush=True)
  results[stage.name] = {"stopped_by": stop.signal}
  return True


def _run_stage(p: PlannedStage, model_dir, models, sources, mesh,
               results: dict, profile_steps=None) -> None:
  stage = p.stage
  trainer = _trainer(p, model_dir, models, sources, mesh, profile_steps)
  try:
    start = time.time()
    _, last = trainer.run()
    results[stage.name] = last
    if last.get("stopped_by"):
      return
    if p.evaluation is not None and jax.process_index() == 0:
      p.evaluation.finish(f"{model_dir}/{stage.name}")
    print(f"[{stage.name}] done: {stage.loop.num_steps} steps in "
          f"{time.time() - start:.0f}s.", flush=True)
  finally:
    trainer.close()


def describe(*, models: dict[str, models_lib.ModelSpec], stages: list[Stage],
             mesh: jax.sharding.Mesh) -> dict:
  """Every stage planned and checked, with the shapes, shardings and sizes of
  its train state and frozen models, built abstractly (no memory)."""
  out = {}
  for p in plan(models=models, stages=stages, mesh=mesh, dry_run=True):
    abstract_state, _, _ = loop_lib.abstract_train_state(
        p.network, p.tx, mesh, p.stage.loop.seed)
    frozen = _abstract_frozen(p.frozen, models, mesh)
    out[p.stage.name] = {
        "trains": p.stage.trains, "init": p.init, "frozen": dict(p.frozen),
        "state": abstract_state, "frozen_params": frozen,
        "num_params": _count(abstract_state.params),
        "param_bytes": _bytes(abstract_state.params),
        "frozen_sizes": {role: _count(getattr(frozen, role))
                         for role in p.frozen},
    }
  return out


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize
             for x in jax.tree_util.tree_leaves(tree))
