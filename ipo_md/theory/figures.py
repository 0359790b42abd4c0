# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""PNG figures of the theory lab, drawn from `report.run`'s results.

The figures read only the JSON-able results dict, so they can be redrawn from
a saved `results.json` without rerunning anything.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

# Corners of the 2-simplex in the plane, one per action.
_CORNERS_3x2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3.0) / 2.0]])
_FLOOR = 1e-16  # exploitability is >= 0; rounding can make it -1e-17.


def _to_plane(policies_Tx3) -> np.ndarray:
  return np.asarray(policies_Tx3) @ _CORNERS_3x2


def _draw_simplex(ax) -> None:
  ax.plot(*_CORNERS_3x2[[0, 1, 2, 0]].T, color="black", lw=0.8)
  for i, (x, y) in enumerate(_CORNERS_3x2):
    ax.annotate(f"$y_{i + 1}$", (x, y), textcoords="offset points",
                xytext=(-12 if x < 0.5 else 6, -10 if y < 0.5 else 4))
  ax.set_aspect("equal")
  ax.axis("off")


def simplex_figure(results: dict, path: pathlib.Path) -> None:
  """Trajectories of every exact run on the simplex, with fixed points."""
  fig, ax = plt.subplots(figsize=(6.0, 5.4))
  _draw_simplex(ax)
  for run in results["trajectories"]:
    xy = _to_plane(run["policies"])
    line, = ax.plot(xy[:, 0], xy[:, 1], lw=1.4, label=run["name"])
    fixed = _to_plane([run["fixed_point"]])[0]
    ax.plot(*fixed, marker="o", ms=6, mfc="none", color=line.get_color())
  game = results["game"]
  ax.plot(*_to_plane([game["nash"]])[0], marker="*", ms=14, color="black",
          ls="none", label=f"Nash, tau={game['tau']:g}")
  ax.plot(*_to_plane([results["trajectories"][0]["policies"][0]])[0],
          marker="s", color="grey", ls="none", label="start")
  ax.set_title(f"Exact-gradient dynamics on {game['name']}")
  ax.legend(loc="upper right", fontsize=7, frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def exploitability_figure(results: dict, path: pathlib.Path) -> None:
  """Exploitability against iterations, exact runs and the sampled run."""
  fig, (ax_exact, ax_sampled) = plt.subplots(1, 2, figsize=(11.0, 4.0),
                                           layout="constrained")
  for run in results["trajectories"]:
    ax_exact.semilogy(run["steps"], np.maximum(run["exploitability"], _FLOOR),
                      label=run["name"])
  sampled = results["sampled"]
  ax_sampled.semilogy(sampled["steps"],
                      np.maximum(sampled["exploitability"], _FLOOR),
                      label=sampled["name"])
  ax_exact.set_title("exact expected gradient, plain gradient descent")
  ax_sampled.set_title("sampled pairs, Adafactor with a decaying step")
  for ax in (ax_exact, ax_sampled):
    ax.set_xlabel("iteration")
    ax.set_ylabel("exploitability")
    ax.legend(fontsize=7, frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def fixed_point_figure(results: dict, path: pathlib.Path) -> None:
  """IPO-MD's fixed point and its mixture against beta (Prop. 5.2)."""
  rows = results["fixed_points"]
  betas = np.array([r["beta"] for r in rows])
  policy = np.array([r["policy"] for r in rows])
  mixture = np.array([r["mixture"] for r in rows])
  fig, (ax_pi, ax_e) = plt.subplots(1, 2, figsize=(11.0, 4.0),
                                    layout="constrained")
  for i in range(policy.shape[1]):
    line, = ax_pi.plot(betas, policy[:, i], lw=1.6,
                       label=f"pi*_beta($y_{i + 1}$)")
    ax_pi.plot(betas, mixture[:, i], ls="--", color=line.get_color(),
               label=f"mixture($y_{i + 1}$)")
  with_ne = [r for r in rows if "nash_tau_eff" in r]
  ax_pi.plot(np.repeat([r["beta"] for r in with_ne], policy.shape[1]),
             np.ravel([r["nash_tau_eff"] for r in with_ne]), ls="none",
             marker="x", color="black", label="NE(tau/(1-beta))")
  ax_pi.set_xlabel("beta (weight on the reference)")
  ax_pi.set_ylabel("probability")
  ax_pi.legend(fontsize=7, frameon=False, ncol=2)
  ax_e.plot(betas, [r["exploitability"] for r in rows], label="pi*_beta")
  ax_e.plot(betas, [r["mixture_exploitability"] for r in rows],
            label="mixture")
  ax_e.set_xlabel("beta")
  ax_e.set_ylabel(f"exploitability at tau={results['game']['tau']:g}")
  ax_e.legend(fontsize=7, frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def write_all(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Draws every figure into `out_dir` and returns the paths."""
  paths = []
  for name, draw in (("simplex.png", simplex_figure),
                     ("exploitability.png", exploitability_figure),
                     ("fixed_point_vs_beta.png", fixed_point_figure)):
    draw(results, out_dir / name)
    paths.append(out_dir / name)
  return paths
