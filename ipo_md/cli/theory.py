# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""`ipo-md theory`: tabular figures and numbers of the paper's propositions.

Runs `ipo_md.theory.report` on a 3-action nearly cyclic game and writes
`results.json` plus PNG figures into --out. Example:

  ipo-md theory --out /tmp/theory --tau 0.1 --seed 0
"""

import argparse
import json
import pathlib
import sys
import time

from ipo_md.cli import flag_checks
from ipo_md.theory import figures
from ipo_md.theory import report


def _eps(text: str) -> float:
  """An argparse type: the cycle's asymmetry, |eps| <= 1/3."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a number in [-1/3, 1/3]") from None
  if not abs(value) <= 1 / 3:  # Also refuses nan.
    raise argparse.ArgumentTypeError(
        f"{value} is not a number in [-1/3, 1/3] (the equilibrium needs "
        "probabilities 1/3 + eps/2 and 1/3 - eps >= 0)")
  return value


def _parser() -> argparse.ArgumentParser:
  defaults = report.LabConfig()
  parser = argparse.ArgumentParser(
      prog="ipo-md theory",
      description="Tabular preference games: trajectories of online IPO, "
      "offline IPO and IPO-MD, exploitability, and the IPO-MD fixed point "
      "against beta (arXiv 2403.08635 App. E style).")
  parser.add_argument("--out", required=True,
                      help="folder for results.json and the PNG figures.")
  parser.add_argument("--seed", type=flag_checks.int_at_least(0),
                      default=defaults.seed,
                      help="seed of the sampled run and the random games.")
  parser.add_argument("--tau", type=flag_checks.positive_float,
                      default=defaults.tau,
                      help="regularisation of the game (App. E: 0.1).")
  parser.add_argument("--eps", type=_eps, default=defaults.eps,
                      help="asymmetry of the 3-action cycle, |eps| <= 1/3.")
  parser.add_argument("--betas", type=flag_checks.open_unit_float, nargs="+",
                      default=list(defaults.betas),
                      help="IPO-MD mixture weights to draw, each in (0, 1).")
  parser.add_argument("--steps", type=flag_checks.int_at_least(1),
                      default=defaults.num_steps,
                      help="exact-gradient steps per trajectory.")
  parser.add_argument("--learning-rate", type=flag_checks.positive_float,
                      default=defaults.learning_rate,
                      help="gradient-descent step on the exact loss.")
  parser.add_argument("--sampled-steps", type=flag_checks.int_at_least(1),
                      default=defaults.sampled_steps,
                      help="Adafactor steps of the sampled online IPO run.")
  parser.add_argument("--beta-grid", type=flag_checks.int_at_least(2),
                      default=defaults.beta_grid,
                      help="number of betas in [0, 1] for the fixed points.")
  parser.add_argument("--random-games", type=flag_checks.int_at_least(1),
                      default=defaults.num_random_games,
                      help="random games of the variance check.")
  return parser


def _log(message: str) -> None:
  print(message, flush=True)


def _headline(results: dict) -> list[str]:
  online = results["trajectories"][0]
  worst_prop52 = max(r.get("mixture_minus_nash_tau_eff", 0.0)
                     for r in results["fixed_points"])
  variance = results["variance"]
  return [
      f"Nash equilibrium: {[round(x, 4) for x in results['game']['nash']]}",
      f"online IPO final exploitability: {online['final_exploitability']:.2e}"
      " (exact gradient)",
      f"sampled online IPO final exploitability: "
      f"{results['sampled']['final_exploitability']:.2e}",
      f"max |mixture(pi*_beta) - NE(tau/(1-beta))|: {worst_prop52:.1e}",
      f"contrastive/non-contrastive variance: max {variance['max_ratio']:.3f}"
      f", mean {variance['mean_ratio']:.3f} over {variance['num_games']} games",
  ]


def main(argv: list[str]) -> int:
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse printed the usage and the error.
    return int(e.code or 0)
  try:
    out = flag_checks.output_dir(args.out, "--out", must_be_empty=False)
    config = report.LabConfig(
        tau=args.tau, eps=args.eps, betas=tuple(args.betas),
        num_steps=args.steps, learning_rate=args.learning_rate,
        sampled_steps=args.sampled_steps, beta_grid=args.beta_grid,
        num_random_games=args.random_games, seed=args.seed)
  except ValueError as e:
    print(f"ipo-md theory: error: {e}", file=sys.stderr)
    return 2
  args.out = pathlib.Path(str(out))
  start = time.time()
  results = report.run(config, log=_log)
  args.out.mkdir(parents=True, exist_ok=True)
  json_path = args.out / "results.json"
  json_path.write_text(json.dumps(results, indent=1))
  _log("drawing figures ...")
  paths = [json_path] + figures.write_all(results, args.out)
  for line in _headline(results):
    _log(line)
  _log(f"done in {time.time() - start:.1f} s; wrote:")
  for path in paths:
    _log(f"  {path}")
  return 0
