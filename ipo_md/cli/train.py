"""`ipo-md train` (also `t5x train`): run the stages a gin configuration
describes, e.g. SFT warm start then online IPO-MD.

    ipo-md train --gin_file=gin/ipo_md_tiny.gin --gin.MODEL_DIR=/tmp/run

`train` below is the one gin-configurable entry point; library modules never
import gin.
"""

import argparse
import os
import pathlib
import socket
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def train(*, model_dir: str, model_config, stages: list, mesh_config=None,
          preference: Any = None, preference_params: Any = None,
          eval_data=None, eval_sampling=None, initial_checkpoint: str | None =
          None, dry_run: bool = False) -> dict:
  """Trains `stages` in order in `model_dir` (see ipo_md.trainer.pipeline).

  With `dry_run`, builds every stage's train state abstractly on the mesh
  (shapes, shardings, sizes; no memory, no data, no checkpoint reads), prints
  it and returns it: a check of a large configuration on any machine.
  """
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md import partitioning  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import pipeline  # pylint: disable=g-import-not-at-top

  mesh = partitioning.make_mesh(mesh_config or partitioning.MeshConfig())
  if dry_run:
    return _dry_run(model_config, stages, mesh)
  _require("MODEL_DIR", model_dir, '"/tmp/ipo_md_run"')
  _require("INITIAL_CHECKPOINT", initial_checkpoint, '"/path/to/checkpoint"')
  directory = _check_model_dir(model_dir)
  (directory / "config.gin").write_text(gin.operative_config_str())
  _describe(model_config, stages, mesh, directory)
  initial_params = None
  if initial_checkpoint:
    initial_params = _load_initial(initial_checkpoint, model_config, mesh)
  start = time.time()
  results = pipeline.run(
      model_dir=str(directory), model_config=model_config, stages=stages,
      mesh=mesh, preference=preference, preference_params=preference_params,
      eval_data=eval_data, eval_sampling=eval_sampling,
      initial_params=initial_params)
  (directory / "config.gin").write_text(gin.operative_config_str())
  _summary(directory, stages, results, time.time() - start)
  del jax
  return results


def _dry_run(model_config, stages, mesh):
  from ipo_md.trainer import pipeline  # pylint: disable=g-import-not-at-top

  described = pipeline.describe(model_config=model_config, stages=stages,
                                mesh=mesh)
  for name, d in described.items():
    print(f"[{name}] {d['num_params'] / 1e6:.1f}M parameters, "
          f"{d['param_bytes'] / 2**30:.2f} GiB, mesh {dict(mesh.shape)}")
  return described


def _require(name: str, value: Any, example: str) -> None:
  """The config is not finalized, so gin passes a `%gin.REQUIRED` macro on
  as the gin.REQUIRED object itself; stop before it reaches a path."""
  import gin  # pylint: disable=g-import-not-at-top

  if value is gin.REQUIRED:
    raise SystemExit(
        f"{name} is not set: the gin files mark it %gin.REQUIRED. Pass it on "
        f"the command line, e.g. --gin.{name}={example}")


def _distributed_args() -> dict:
  """jax.distributed.initialize() finds TPU pods, SLURM and Open MPI by
  itself and reads JAX_COORDINATOR_ADDRESS; elsewhere (plain multi-node GPU,
  several processes on one machine) JAX_NUM_PROCESSES and JAX_PROCESS_ID give
  the rest (see launch/gpu_multihost.sh)."""
  names = {"JAX_NUM_PROCESSES": "num_processes", "JAX_PROCESS_ID": "process_id"}
  return {arg: int(os.environ[env]) for env, arg in names.items()
          if os.environ.get(env)}


def _check_model_dir(model_dir: str) -> pathlib.Path:
  directory = pathlib.Path(model_dir).expanduser().absolute()
  try:
    directory.mkdir(parents=True, exist_ok=True)
    # Unique per process: every host of a pod probes the same shared folder.
    probe = directory / f".write_test.{socket.gethostname()}.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise SystemExit(
        f"MODEL_DIR={model_dir!r} is not writable ({e.strerror}). Choose a "
        "folder you can write, e.g. --gin.MODEL_DIR=\"/tmp/ipo_md_run\".")
  return directory


def _load_initial(path, model_config, mesh):
  from ipo_md import partitioning  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.model import network  # pylint: disable=g-import-not-at-top
  from ipo_md.model import scoring  # pylint: disable=g-import-not-at-top

  shardings = partitioning.param_shardings(
      scoring.abstract_params(network.Transformer(model_config)), mesh)
  params, _ = params_io.load_initial_params(path, shardings=shardings,
                                            expected_config=model_config)
  return params


def _describe(model_config, stages, mesh, directory):
  import math  # pylint: disable=g-import-not-at-top

  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md.model import network  # pylint: disable=g-import-not-at-top
  from ipo_md.model import scoring  # pylint: disable=g-import-not-at-top

  abstract = nn.unbox(scoring.abstract_params(network.Transformer(model_config)))
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract))
  print(f"ipo-md: T5 with {count / 1e6:.2f}M parameters "
        f"(emb {model_config.emb_dim}, {model_config.num_encoder_layers}+"
        f"{model_config.num_decoder_layers} layers) on mesh "
        f"{dict(mesh.shape)} of {jax.devices()[0].platform} devices; "
        f"stages: {', '.join(f'{s.name} ({s.loop.num_steps} steps)' for s in stages)}; "
        f"output: {directory}", flush=True)


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
  args = parser.parse_args(argv)
  if args.multihost:
    import jax  # pylint: disable=g-import-not-at-top

    jax.distributed.initialize(**_distributed_args())
  gin_flags.parse(args, dot_bindings)
  # Task locations bound in gin (e.g. register_tldr_tasks.sft_dir) take effect.
  from ipo_md.cli import data as data_cli  # pylint: disable=g-import-not-at-top

  data_cli.register_tasks_from_gin()
  configured = gin.get_configurable(train)
  try:
    configured(**({"dry_run": True} if args.dry_run else {}))
  except (ValueError, TypeError, RuntimeError) as e:
    if "REQUIRED" in str(e) or "Required bindings" in str(e):
      raise SystemExit(
          f"A required gin value is missing: {e}\nSet it on the command "
          "line, e.g. --gin.MODEL_DIR=\"/tmp/ipo_md_run\".") from e
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
