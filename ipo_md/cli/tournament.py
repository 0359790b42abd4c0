"""`ipo-md tournament`: train every method with K seeds from one SFT model
and one preference model, then compare them side by side (the paper's
Table 2, its beta sweep and online against offline, in miniature).

    ipo-md tournament --gin_file=gin/tournament_tiny.gin \
        --gin.MODEL_DIR="/tmp/ipo_md_tournament"

`tournament` below is the one gin-configurable entry point. Rerunning the
same command reuses every finished stage and every cached sample and verdict.
"""

import argparse
import sys
import time
from typing import Any

from ipo_md.cli import train as train_cli


def tournament(*, model_dir: str, stages: list, entrants: list,
               seeds: tuple = (0, 1, 2), sweep_template: Any = None,
               sweep_betas: tuple = (), sweep_seeds: tuple | None = None,
               model_config=None, models: dict | None = None,
               mesh_config=None, eval_task: str = "synthetic_facts_prompts",
               eval_split: str = "validation", num_prompts: int = 256,
               eval_sampling: Any = None, pm_judge: bool = True,
               dry_run: bool = False) -> dict:
  """Trains `stages` (the shared SFT and PM) and every entrant x seed, then
  evaluates them (see ipo_md.tournament).

  Args:
    model_dir: the run's folder (the stages, then `tournament/`).
    stages: the shared stages; one must be named 'sft' (the reference) and
      the learned preference model's stage 'pm' when pm_judge is set.
    entrants: `tournament.Entrant`s, one per method.
    seeds: the seeds of every method.
    sweep_template: the IPO-MD stage whose beta the sweep varies.
    sweep_betas: the sweep's betas (empty: no sweep).
    sweep_seeds: the sweep's seeds (default: `seeds`).
    model_config / models: as for `ipo-md train`.
    mesh_config: the device mesh.
    eval_task / eval_split / num_prompts: the held-out prompts.
    eval_sampling: how policies sample for the evaluation.
    pm_judge: also judge every policy against the reference with the
      learned preference model (over-optimisation beside the gold verdict).
    dry_run: plan and check every stage abstractly and exit.
  """
  from ipo_md import partitioning  # pylint: disable=g-import-not-at-top
  from ipo_md import tournament as tournament_lib  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import lock as lock_lib  # pylint: disable=g-import-not-at-top
  from ipo_md.cli import errors  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import pipeline  # pylint: disable=g-import-not-at-top

  runs, groups = tournament_lib.expand(
      entrants, seeds, sweep_template=sweep_template, sweep_betas=sweep_betas,
      sweep_seeds=sweep_seeds)
  all_stages = list(stages) + runs
  if not any(s.name == tournament_lib.REFERENCE for s in stages):
    raise ValueError("tournament.stages must include the 'sft' stage: the "
                     "initial policy and reference of every method.")
  plan_text = tournament_lib.describe(entrants, seeds, sweep_betas,
                                      sweep_seeds)
  print(f"ipo-md tournament: {plan_text}, after "
        f"{[s.name for s in stages]}.", flush=True)
  if dry_run:
    return train_cli.train(model_dir=model_dir, stages=all_stages,
                           model_config=model_config, models=models,
                           mesh_config=mesh_config, dry_run=True)
  specs = train_cli._model_specs(model_config, None, models)  # pylint: disable=protected-access
  mesh = partitioning.make_mesh(mesh_config or partitioning.MeshConfig())
  planned = pipeline.plan(models=specs, stages=all_stages, mesh=mesh)
  pipeline.check_initial_checkpoints(planned, specs)
  directory = train_cli._check_model_dir(model_dir)  # pylint: disable=protected-access
  errors.set_log_dir(directory / "logs")
  start = time.time()
  with lock_lib.RunLock(directory):
    results = pipeline.run(model_dir=str(directory), models=specs,
                           stages=all_stages, mesh=mesh, planned=planned)
    if any(r.get("stopped_by") for r in results.values()):
      print("Stopped before every method trained; rerun the same command to "
            "resume.", flush=True)
      return results
    print(f"ipo-md tournament: training done in {time.time() - start:.0f}s; "
          "evaluating.", flush=True)
    summary = _evaluate(directory, specs, planned, groups, entrants, seeds,
                        sweep_betas, eval_task, eval_split, num_prompts,
                        eval_sampling, pm_judge)
  print(f"\nTournament finished after {time.time() - start:.0f}s; "
        f"outputs in {directory / 'tournament'}.", flush=True)
  return summary


def _stage_policy(directory, planned_stage, name=None):
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import side_by_side  # pylint: disable=g-import-not-at-top

  stage = planned_stage.stage
  step = stage.loop.num_steps
  path = directory / stage.name
  params, config = params_io.load_train_params(path, step=step)
  return side_by_side.Policy(name=name or stage.name, params=params,
                             config=config, key=f"{path}@{step}")


def _evaluate(directory, specs, planned, groups, entrants, seeds, sweep_betas,
              eval_task, eval_split, num_prompts, eval_sampling, pm_judge):
  from ipo_md import tournament as tournament_lib  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import judges  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import side_by_side  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import models as models_lib  # pylint: disable=g-import-not-at-top

  by_name = {p.stage.name: p for p in planned}
  reference = _stage_policy(directory, by_name[tournament_lib.REFERENCE])
  policies = [reference] + [_stage_policy(directory, by_name[n])
                            for n in by_name if n in groups]
  sft_lengths = by_name[tournament_lib.REFERENCE].stage.data.feature_lengths
  prompts = side_by_side.load_prompts(
      eval_task, eval_split, num_prompts=num_prompts,
      input_length=int(sft_lengths["inputs"]))
  out_dir = directory / "tournament"
  quiet = lambda line: None
  gold = side_by_side.evaluate(policies, [judges.gold_judge()], prompts,
                               out_dir=out_dir, sampling_cfg=eval_sampling,
                               baseline=tournament_lib.REFERENCE,
                               write_files=True, log=quiet)
  pm_vs_ref = None
  if pm_judge and "pm" in by_name:
    pm = models_lib.build(specs).preference
    pm_stage = by_name["pm"].stage
    pm_params, _ = params_io.load_train_params(
        directory / "pm", step=pm_stage.loop.num_steps)
    judge = judges.SignalJudge(pm, pm_params, name="pm")
    pm_vs_ref = {}
    for policy in policies[1:]:
      r = side_by_side.evaluate([reference, policy], [judge], prompts,
                                out_dir=out_dir, sampling_cfg=eval_sampling,
                                write_files=False, log=quiet,
                                num_bootstrap=10)
      pm_vs_ref[policy.name] = float(r["judges"]["pm"]["matrix"][1][0])
  names = [p.name for p in policies]
  summary = tournament_lib.summarise(gold["judges"]["gold"], names, groups,
                                     entrants, sweep_betas, pm_vs_ref)
  summary["files"] = tournament_lib.write(summary, out_dir, seeds=seeds)
  print("\n" + tournament_lib.markdown(summary, seeds=seeds), flush=True)
  return summary


def main(argv: list[str]) -> int:
  import gin  # pylint: disable=g-import-not-at-top

  from ipo_md.cli import data as data_cli  # pylint: disable=g-import-not-at-top
  from ipo_md.cli import gin_flags  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import stopping  # pylint: disable=g-import-not-at-top

  argv, dot_bindings = gin_flags.split_gin_dot_flags(argv)
  parser = argparse.ArgumentParser(prog="ipo-md tournament",
                                   description=__doc__.split("\n\n")[0])
  gin_flags.add_flags(parser)
  parser.add_argument("--dry_run", action="store_true",
                      help="Plan and check every stage abstractly and exit.")
  args = parser.parse_args(argv)
  from ipo_md.cli import runtime  # pylint: disable=g-import-not-at-top

  runtime.configure_compilation_cache()
  # Single-device CPU steps run on this thread, whose heap keeps their
  # buffers between steps (host_memory.reuse_freed_memory).
  runtime.configure_cpu_dispatch()
  with stopping.StopSignals():
    gin_flags.parse(args, dot_bindings)
    data_cli.register_tasks_from_gin()
    configured = gin.get_configurable(tournament)
    configured(**({"dry_run": True} if args.dry_run else {}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
