"""`ipo-md train` (also `t5x train`): run the stages a gin configuration
describes, e.g. SFT warm start then online IPO-MD.

    ipo-md train --gin_file=gin/ipo_md_tiny.gin --gin.MODEL_DIR=/tmp/run

`train` below is the one gin-configurable entry point; library modules never
import gin.
"""

import argparse
import os
import socket
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def train(*, model_dir: str, stages: list, model_config=None,
          initial_checkpoint: str | None = None, models: dict | None = None,
          mesh_config=None, dry_run: bool = False,
          profile_steps: tuple[int, int] | None = None) -> dict:
  """Trains `stages` in order in `model_dir` (see ipo_md.trainer.pipeline).

  Args:
    model_dir: the run's folder.
    stages: the `pipeline.Stage`s, in order.
    model_config: the policy's T5Config (shortcut for models['policy']).
    initial_checkpoint: the policy's initial checkpoint (with model_config).
    models: role -> `models.ModelSpec` for the other roles (preference,
      reward, reference), or for all of them.
    mesh_config: the device mesh.
    dry_run: plan and check every stage, build every train state abstractly
      on the mesh (shapes, shardings, sizes; no memory, no data, no
      checkpoint reads), print it and return it.
    profile_steps: (A, B): a JAX profiler trace of steps A..B of every stage
      that runs them, in MODEL_DIR/<stage>/profile (--profile_steps=A:B).
  """
  import gin  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md import partitioning  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import lock as lock_lib  # pylint: disable=g-import-not-at-top
  from ipo_md.cli import errors  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import pipeline  # pylint: disable=g-import-not-at-top

  specs = _model_specs(model_config, initial_checkpoint, models)
  mesh = partitioning.make_mesh(mesh_config or partitioning.MeshConfig())
  if dry_run:
    return _dry_run(specs, stages, mesh)
  _require("MODEL_DIR", model_dir, '"/tmp/ipo_md_run"')
  for role, spec in specs.items():
    _require("INITIAL_CHECKPOINT" if role == "policy" else
             f"models[{role!r}].initial_checkpoint", spec.initial_checkpoint,
             '"/path/to/checkpoint"')
  # Cheapest checks first; the step traces and the data reads take seconds.
  planned = pipeline.plan(models=specs, stages=stages, mesh=mesh, trace=False)
  pipeline.check_initial_checkpoints(planned, specs)
  directory = _check_model_dir(model_dir)
  errors.set_log_dir(directory / "logs")
  pipeline.trace_steps(planned, specs, mesh)
  pipeline.check_data_sources(planned)
  if _stopped_at_start_up():
    return {}
  # One run per MODEL_DIR: a second run is refused here, before it writes.
  with lock_lib.RunLock(directory):
    pipeline.check_progress(str(directory), planned)
    if jax.process_index() == 0:
      (directory / "config.gin").write_text(gin.operative_config_str())
    _describe(specs, planned, mesh, directory)
    start = time.time()
    results = pipeline.run(model_dir=str(directory), models=specs,
                           stages=stages, mesh=mesh, planned=planned,
                           profile_steps=profile_steps)
  _summary(directory, stages, results, time.time() - start)
  return results


def _model_specs(model_config, initial_checkpoint, models) -> dict:
  from ipo_md.trainer import models as models_lib  # pylint: disable=g-import-not-at-top

  specs = dict(models or {})
  if model_config is not None:
    if "policy" in specs:
      raise ValueError(
          "Both train.model_config and train.models['policy'] are set; set "
          "one of them.")
    specs["policy"] = models_lib.ModelSpec(
        config=model_config, initial_checkpoint=initial_checkpoint)
  elif initial_checkpoint is not None:
    raise ValueError(
        "train.initial_checkpoint is set without train.model_config; set the "
        "policy's initial_checkpoint in train.models['policy'] instead.")
  models_lib.check_specs(specs)
  return specs


def _dry_run(specs, stages, mesh):
  from ipo_md.trainer import pipeline  # pylint: disable=g-import-not-at-top

  described = pipeline.describe(models=specs, stages=stages, mesh=mesh)
  for name, d in described.items():
    frozen = ", ".join(f"{role} from {d['frozen'][role]} "
                       f"({n / 1e6:.1f}M)" for role, n in
                       d["frozen_sizes"].items())
    print(f"[{name}] trains the {d['trains']} (from {d['init']}): "
          f"{d['num_params'] / 1e6:.1f}M parameters, "
          f"{d['param_bytes'] / 2**30:.2f} GiB"
          + (f"; reads {frozen}" if frozen else "")
          + f"; mesh {dict(mesh.shape)}", flush=True)
  print("Dry run: every stage planned, checked and traced; nothing was "
        "trained or written.", flush=True)
  return described


def _require(name: str, value: Any, example: str) -> None:
  """The config is not finalized, so gin passes a `%gin.REQUIRED` macro on
  as the gin.REQUIRED object itself; stop before it reaches a path."""
  import gin  # pylint: disable=g-import-not-at-top

  if value is gin.REQUIRED:
    flag = (f"--gin.{name}={example}" if name.isidentifier() else
            f"a --gin.* binding of its ModelSpec's initial_checkpoint, e.g. "
            f"--gin.pm/models.ModelSpec.initial_checkpoint={example}")
    raise SystemExit(
        f"{name} is not set: the gin files mark it %gin.REQUIRED. Pass it on "
        f"the command line, e.g. {flag}")


def _stopped_at_start_up() -> bool:
  """True (and says so) when SIGTERM or SIGINT came during start-up: the
  run stops before it takes MODEL_DIR or writes anything."""
  from ipo_md.trainer import stopping  # pylint: disable=g-import-not-at-top

  stop = stopping.current()
  if stop is None or not stop.requested:
    return False
  print(f"ipo-md train: {stop.signal} received during start-up; stopped "
        "before any stage started (nothing was written). Rerun the same "
        "command to start.", flush=True)
  return True


def required_values_message(names: list[str]) -> str:
  """The one message for every %gin.REQUIRED macro left unset."""
  examples = {"MODEL_DIR": '"/tmp/ipo_md_run"'}
  flags = " ".join(f"--gin.{n}={examples.get(n, '...')}" for n in names)
  verb = "is" if len(names) == 1 else "are"
  return (f"{', '.join(names)} {verb} not set: the gin files mark "
          f"{'it' if len(names) == 1 else 'them'} %gin.REQUIRED. Pass "
          f"{'it' if len(names) == 1 else 'each'} on the command line, e.g. "
          f"{flags}")


def _distributed_args() -> dict:
  """jax.distributed.initialize() finds TPU pods, SLURM and Open MPI by
  itself and reads JAX_COORDINATOR_ADDRESS; elsewhere (plain multi-node GPU,
  several processes on one machine) JAX_NUM_PROCESSES and JAX_PROCESS_ID give
  the rest (see launch/gpu_multihost.sh)."""
  names = {"JAX_NUM_PROCESSES": "num_processes", "JAX_PROCESS_ID": "process_id"}
  return {arg: int(os.environ[env]) for env, arg in names.items()
          if os.environ.get(env)}


def _check_model_dir(model_dir: str):
  """MODEL_DIR as an epath (local or gs://), created and probed for writes."""
  from ipo_md.checkpoints import paths  # pylint: disable=g-import-not-at-top

  directory = paths.as_path(os.path.expanduser(str(model_dir)))
  if directory.exists() and not directory.is_dir():
    raise SystemExit(
        f"MODEL_DIR={model_dir!r} is a file, not a folder. Choose a folder "
        "(it is created if absent), e.g. --gin.MODEL_DIR=\"/tmp/ipo_md_run\".")
  try:
    directory.mkdir(parents=True, exist_ok=True)
    # Unique per process: every host of a pod probes the same shared folder.
    probe = directory / f".write_test.{socket.gethostname()}.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    reason = getattr(e, "strerror", None) or str(e)
    raise SystemExit(
        f"MODEL_DIR={model_dir!r} is not writable ({reason}). Choose a "
        "folder you can write, e.g. --gin.MODEL_DIR=\"/tmp/ipo_md_run\".")
  return directory


def _describe(specs, planned, mesh, directory):
  import math  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md.trainer import models as models_lib  # pylint: disable=g-import-not-at-top

  parts = []
  for role, spec in specs.items():
    abstract, _ = models_lib.param_shardings(spec.config, mesh)
    count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract))
    parts.append(f"{role} T5 {count / 1e6:.2f}M (emb {spec.config.emb_dim}, "
                 f"{spec.config.num_encoder_layers}+"
                 f"{spec.config.num_decoder_layers} layers)")
  stages = ", ".join(f"{p.stage.name} ({p.stage.trains}, "
                     f"{p.stage.loop.num_steps} steps)" for p in planned)
  print(f"ipo-md: models: {'; '.join(parts)}; mesh {dict(mesh.shape)} of "
        f"{jax.devices()[0].platform} devices; stages: {stages}; output: "
        f"{directory}", flush=True)


def _summary(directory, stages, results, seconds):
  stopped = [n for n, r in results.items() if r.get("stopped_by")]
  verb = f"Stopped ({stopped[0]} interrupted)" if stopped else "Finished"
  print(f"\n{verb} after {seconds:.0f}s. Outputs in {directory}:")
  for stage in stages:
    d = directory / stage.name
    last = results.get(stage.name, {})
    # Evaluation metrics come back as numpy scalars, not Python floats.
    shown = {k: round(float(v), 4) for k, v in last.items()
             if k.startswith("eval/")}
    print(f"  {stage.name}: checkpoints {d / 'checkpoints'}\n"
          f"  {' ' * len(stage.name)}  metrics     {d / 'metrics.jsonl'}\n"
          f"  {' ' * len(stage.name)}  TensorBoard {d / 'tensorboard'}"
          + (f"\n  {' ' * len(stage.name)}  final eval  {shown}" if shown else ""))
  print(f"  operative config: {directory / 'config.gin'}")
  print(f"  view curves: tensorboard --logdir {directory}", flush=True)


def main(argv: list[str]) -> int:
  from ipo_md.trainer import stopping  # pylint: disable=g-import-not-at-top

  from ipo_md.cli import errors  # pylint: disable=g-import-not-at-top

  errors.set_log_dir(None)  # Until this run's MODEL_DIR is checked.
  # From the first moment: a SIGTERM or Ctrl-C during start-up or between
  # stages stops the run cleanly too (status 0, a message, resumable).
  with stopping.StopSignals():
    return _main(argv)


def _main(argv: list[str]) -> int:
  import gin  # pylint: disable=g-import-not-at-top

  from ipo_md.cli import gin_flags  # pylint: disable=g-import-not-at-top

  argv, dot_bindings = gin_flags.split_gin_dot_flags(argv)
  parser = argparse.ArgumentParser(prog="ipo-md train",
                                   description=__doc__.split("\n\n")[0])
  gin_flags.add_flags(parser)
  parser.add_argument(
      "--dry_run", action="store_true",
      help="Build the configuration abstractly (shapes, shardings, sizes) "
      "and exit; allocates nothing.")
  parser.add_argument(
      "--multihost", action="store_true",
      help="Call jax.distributed.initialize() first (every host of a TPU pod "
      "or a multi-node GPU job runs the same command; see launch/).")
  parser.add_argument(
      "--profile_steps", default="", metavar="A:B",
      help="Write a JAX profiler trace (TensorBoard's profile plugin or "
      "Perfetto) of steps A to B of each stage to MODEL_DIR/<stage>/profile, "
      "e.g. --profile_steps=10:12.")
  args = parser.parse_args(argv)
  from ipo_md import profiling  # pylint: disable=g-import-not-at-top

  try:
    profile_steps = profiling.parse_profile_steps(args.profile_steps)
  except ValueError as e:
    raise SystemExit(f"ipo-md train: {e}") from None
  if args.multihost:
    import jax  # pylint: disable=g-import-not-at-top

    jax.distributed.initialize(**_distributed_args())
    from ipo_md.trainer import stopping  # pylint: disable=g-import-not-at-top

    stopping.reclaim()  # initialize() replaced our SIGTERM handler.
  gin_flags.parse(args, dot_bindings)
  from ipo_md.cli import runtime  # pylint: disable=g-import-not-at-top

  # Stages (and reruns) whose shapes repeat load compiled programs from disk.
  runtime.configure_compilation_cache()
  # Single-device CPU steps run on this thread, whose heap keeps their
  # buffers between steps (host_memory.reuse_freed_memory).
  runtime.configure_cpu_dispatch()
  if not args.dry_run and (missing := gin_flags.unset_required_macros()):
    raise SystemExit(required_values_message(missing))
  # Task locations bound in gin (e.g. register_tldr_tasks.sft_dir) take effect.
  from ipo_md.cli import data as data_cli  # pylint: disable=g-import-not-at-top

  data_cli.register_tasks_from_gin()
  if _stopped_at_start_up():
    return 0
  configured = gin.get_configurable(train)
  try:
    if args.dry_run:
      configured(dry_run=True)
    else:
      configured(profile_steps=profile_steps)
  except (ValueError, TypeError, RuntimeError) as e:
    if "REQUIRED" in str(e) or "Required bindings" in str(e):
      raise SystemExit(
          f"A required gin value is missing: {e}\nSet it on the command "
          "line, e.g. --gin.MODEL_DIR=\"/tmp/ipo_md_run\".") from e
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
