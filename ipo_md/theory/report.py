# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""The experiment behind `ipo-md theory`: App. E-style numbers in one dict.

On a 3-action, nearly cyclic game (`games.cyclic_eps_game`, a stand-in for
the unpublished App. E matrix of arXiv 2403.08635) with a uniform reference,
it records:

  * exact-gradient trajectories of online IPO, offline IPO and IPO-MD(beta),
    with their exploitability, against each method's theoretical fixed point;
  * a sampled online IPO run with the framework's Adafactor;
  * the IPO-MD fixed point as a function of beta, against NE(tau/(1-beta));
  * the two-action online DPO vs Nash numbers (arXiv 2403.08635 App. F);
  * the contrastive vs non-contrastive variance over random games (App. D;
    docs/methods.md, "The tabular theory").

The result is plain JSON-able data; `figures` draws it.
"""

import dataclasses
from typing import Callable

import numpy as np
import optax

from ipo_md import optim
from ipo_md.theory import dynamics
from ipo_md.theory import games
from ipo_md.theory import methods
from ipo_md.theory import nash


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabConfig:
  """Settings of the theory lab; the defaults follow App. E (tau = 0.1).

  Attributes:
    tau: regularisation of the 3-action game.
    eps: asymmetry of the cycle, |eps| <= 1/3 (`games.cyclic_eps_game`).
    betas: IPO-MD mixture weights whose trajectories are drawn.
    start_K: initial policy of every trajectory.
    num_steps: exact-gradient steps per trajectory.
    learning_rate: step of plain gradient descent on the exact loss.
    sampled_steps: Adafactor steps of the sampled online IPO run.
    num_pairs: sampled pairs per Adafactor step.
    adafactor_lr: (initial, final) of its exponentially decaying step.
    beta_grid: number of betas in [0, 1] for the fixed-point curve.
    num_random_games: random games of the variance check.
    record_every: keep one trajectory point in this many.
    seed: seeds the sampled run and the random games.
  """

  tau: float = 0.1
  eps: float = 0.2
  betas: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75)
  start_K: tuple[float, float, float] = (0.8, 0.1, 0.1)
  num_steps: int = 1000
  learning_rate: float = 0.01
  sampled_steps: int = 2000
  num_pairs: int = 16
  adafactor_lr: tuple[float, float] = (0.1, 1e-3)
  beta_grid: int = 11
  num_random_games: int = 50
  record_every: int = 10
  seed: int = 0

  def __post_init__(self):
    if not 0.0 < self.tau < np.inf:
      raise ValueError(f"tau={self.tau} must be > 0.")
    if any(not 0.0 < b < 1.0 for b in self.betas):
      raise ValueError(f"betas={self.betas} must lie in (0, 1).")
    start = np.asarray(self.start_K)
    if start.shape != (3,) or np.any(start <= 0) or abs(start.sum() - 1) > 1e-9:
      raise ValueError(f"start_K={self.start_K} must be 3 positive "
                       "probabilities summing to 1.")
    for name in ("num_steps", "sampled_steps", "num_pairs", "record_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if self.beta_grid < 2 or self.num_random_games < 1:
      raise ValueError("beta_grid must be >= 2 and num_random_games >= 1.")


def _trajectory_record(method, game, policies, fixed_point, config):
  keep = np.arange(0, policies.shape[0], config.record_every)
  keep = np.union1d(keep, [policies.shape[0] - 1])
  exploit = dynamics.exploitabilities(game, policies)
  return {
      "name": method.name,
      "steps": keep.tolist(),
      "policies": policies[keep].tolist(),
      "exploitability": exploit[keep].tolist(),
      "final_policy": policies[-1].tolist(),
      "final_exploitability": float(exploit[-1]),
      "fixed_point": fixed_point.tolist(),
      "distance_to_fixed_point": float(np.max(np.abs(policies[-1]
                                                     - fixed_point))),
  }


def _trajectories(game, config, log) -> list[dict]:
  runs = [(methods.online_ipo(), nash.nash_equilibrium(game)),
          (methods.offline_ipo(game.ref_K),
           nash.best_response(game, game.ref_K))]
  runs += [(methods.ipo_md(b), nash.ipo_md_fixed_point(game, b))
           for b in config.betas]
  records = []
  optimizer = optax.sgd(config.learning_rate)  # one object: one compilation
  for method, fixed_point in runs:
    policies = dynamics.train(
        method, game, optimizer=optimizer,
        num_steps=config.num_steps, theta0_K=np.log(config.start_K))
    records.append(_trajectory_record(method, game, policies, fixed_point,
                                      config))
    log(f"  {method.name:<16} exploitability "
        f"{records[-1]['final_exploitability']:.2e}, distance to its fixed "
        f"point {records[-1]['distance_to_fixed_point']:.1e}")
  return records


def _sampled_online_ipo(game, config, log) -> dict:
  schedule = dynamics.decaying_learning_rate(*config.adafactor_lr,
                                             config.sampled_steps)
  optimizer = optim.adafactor_t5(schedule, multiply_by_parameter_scale=False)
  method = methods.online_ipo()
  policies = dynamics.train(
      method, game, optimizer=optimizer, num_steps=config.sampled_steps,
      theta0_K=np.log(config.start_K), num_pairs=config.num_pairs,
      seed=config.seed)
  record = _trajectory_record(method, game, policies,
                              nash.nash_equilibrium(game), config)
  record["name"] = f"online IPO, sampled ({config.num_pairs} pairs, Adafactor)"
  log(f"  {record['name']}: exploitability "
      f"{record['final_exploitability']:.2e}")
  return record


def fixed_points_vs_beta(game, betas) -> list[dict]:
  """pi*_beta, its mixture and NE(tau/(1-beta)) for each beta (Prop. 5.2)."""
  rows = []
  for beta in betas:
    pi_beta = nash.ipo_md_fixed_point(game, beta)
    mixture = games.geometric_mixture(pi_beta, game.ref_K, beta)
    row = {"beta": float(beta), "policy": pi_beta.tolist(),
           "mixture": mixture.tolist(),
           "exploitability": nash.exploitability(game, pi_beta),
           "mixture_exploitability": nash.exploitability(game, mixture)}
    if beta < 1.0:
      ne_eff = nash.nash_equilibrium(game.with_tau(game.tau / (1.0 - beta)))
      row["nash_tau_eff"] = ne_eff.tolist()
      row["mixture_minus_nash_tau_eff"] = float(np.max(np.abs(mixture
                                                               - ne_eff)))
    rows.append(row)
  return rows


def online_dpo_vs_nash(ps=(0.5, 0.7, 0.9), tau: float = 0.5) -> list[dict]:
  """Two actions, uniform ref, p = p(y2 > y1): NE vs online DPO (2403.08635 App. F)."""
  rows = []
  for p in ps:
    game = games.two_action_game(1.0 - p, tau=tau)
    rows.append({"p": p, "tau": tau,
                 "nash": nash.nash_equilibrium(game).tolist(),
                 "online_dpo": dynamics.stationary_point(methods.online_dpo(),
                                                         game).tolist()})
  return rows


def variance_check(num_games: int, tau: float, seed: int) -> dict:
  """Contrastive vs non-contrastive variance over random games (App. D)."""
  rng = np.random.default_rng(seed)
  ratios, conditions = [], []
  for _ in range(num_games):
    k = int(rng.integers(3, 6))
    game = games.random_game(k, rng, tau=tau)
    v = methods.estimator_variances(rng.normal(size=k), game)
    ratios.append(float(v["var_contrastive"] / v["var_noncontrastive"]))
    conditions.append(float(v["condition"]))
  ratios, conditions = np.array(ratios), np.array(conditions)
  positive = conditions >= 0
  return {
      "num_games": num_games,
      "max_ratio": float(ratios.max()),
      "mean_ratio": float(ratios.mean()),
      "fraction_condition_nonnegative": float(positive.mean()),
      "max_ratio_when_condition_nonnegative": (
          float(ratios[positive].max()) if positive.any() else None),
  }


def run(config: LabConfig, log: Callable[[str], None] = print) -> dict:
  """Runs every experiment of the lab and returns JSON-able results."""
  game = games.cyclic_eps_game(config.eps, tau=config.tau)
  nash_pi = nash.nash_equilibrium(game)
  name = f"cyclic_eps(eps={config.eps:g})"
  log(f"game {name}, tau={game.tau:g}: NE {np.round(nash_pi, 4)}")
  results = {
      "config": dataclasses.asdict(config),
      "game": {"name": name, "prefs": game.prefs_KxK.tolist(),
               "ref": game.ref_K.tolist(), "tau": game.tau,
               "nash": nash_pi.tolist(),
               "nash_exploitability": nash.exploitability(game, nash_pi),
               "unregularised_nash":
                   games.cyclic_eps_nash(config.eps).tolist()},
  }
  log("exact-gradient trajectories:")
  results["trajectories"] = _trajectories(game, config, log)
  log("sampled training:")
  results["sampled"] = _sampled_online_ipo(game, config, log)
  log("IPO-MD fixed point against beta ...")
  betas = np.round(np.linspace(0.0, 1.0, config.beta_grid), 12)
  results["fixed_points"] = fixed_points_vs_beta(game, betas)
  log("online DPO vs Nash (two actions) ...")
  results["online_dpo_vs_nash"] = online_dpo_vs_nash()
  log(f"estimator variances over {config.num_random_games} random games ...")
  results["variance"] = variance_check(config.num_random_games, config.tau,
                                       config.seed)
  return results
