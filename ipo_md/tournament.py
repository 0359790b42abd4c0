"""The paper's tournament in miniature: every method, K seeds, side by side.

arXiv 2403.08635's evidence is comparative (§6, Table 2): every method is
trained from the same SFT model against the same preference model with three
seeds, and each pair of methods is compared side by side over the 3 x 3 seed
pairs; App. B adds online against offline training and the IPO-MD beta sweep.
`run` does the same at a scale a CPU can run:

1. One run (`ipo_md.trainer.pipeline`) holds the shared stages (SFT, the
   preference model) and, for every entrant (a method's stage template) and
   seed, a copy of its stage named `<entrant>_s<seed>` with that seed for
   its sampling and data order, initialised from the SFT model and reading it
   and the preference model frozen. Finished stages are reused on rerun.
2. Every trained policy and the SFT reference sample responses to the same
   held-out prompts once; the gold judge (the embedded task's oracle: the
   role of the paper's PaLM 2 rater) judges every pair in both orders
   (`ipo_md.eval.side_by_side`); the learned preference model judges every
   policy against the reference, so over-optimisation shows beside the gold
   verdict.
3. `summarise` turns the policy matrix into the method matrix (mean and std
   over the K x K seed pairs), a Bradley-Terry ranking, the beta sweep
   (against the reference and against online IPO) and online against
   offline, written as results.json, report.md and figures.
"""

import dataclasses
import functools
import json
from typing import Mapping, Sequence

import numpy as np

from ipo_md.eval import stats
from ipo_md.trainer import pipeline

REFERENCE = "sft"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entrant:
  """One method of the tournament.

  Attributes:
    name: its label (e.g. "ipo_md"); stages are named `<name>_s<seed>`.
    stage: the method's stage template; its name and seed are replaced.
    family: pairs online and offline variants of one loss for the online
      against offline comparison (e.g. "ipo" for online_ipo and offline_ipo).
    online: whether it samples its own responses.
  """

  name: str
  stage: pipeline.Stage
  family: str | None = None
  online: bool = True


def _seeded(stage: pipeline.Stage, name: str, seed: int,
            beta: float | None = None) -> pipeline.Stage:
  objective = stage.objective
  if beta is not None:
    objective = functools.partial(objective, beta=beta)
  return dataclasses.replace(
      stage, name=name, objective=objective,
      loop=dataclasses.replace(stage.loop, seed=seed),
      data=dataclasses.replace(stage.data, seed=seed))


def beta_name(beta: float) -> str:
  return f"ipo_md_beta{beta:g}"


def expand(entrants: Sequence[Entrant], seeds: Sequence[int], *,
           sweep_template: pipeline.Stage | None = None,
           sweep_betas: Sequence[float] = (),
           sweep_seeds: Sequence[int] | None = None
           ) -> tuple[list[pipeline.Stage], dict[str, str]]:
  """The stages of every entrant and seed (and of the beta sweep).

  Returns:
    (stages, {stage name: group}), a group being the entrant's or sweep
    point's name: the seeds of one group are its policies.
  """
  stages, groups = [], {}
  for entrant in entrants:
    for seed in seeds:
      name = f"{entrant.name}_s{seed}"
      stages.append(_seeded(entrant.stage, name, seed))
      groups[name] = entrant.name
  for beta in sweep_betas:
    if sweep_template is None:
      raise ValueError("sweep_betas is set without a sweep_template stage "
                       "(the IPO-MD stage whose beta the sweep varies).")
    group = beta_name(beta)
    for seed in (seeds if sweep_seeds is None else sweep_seeds):
      name = f"{group}_s{seed}"
      stages.append(_seeded(sweep_template, name, seed, beta=float(beta)))
      groups[name] = group
  return stages, groups


def _mean_std(values) -> dict:
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  if not v.size:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def _cross(matrix, names, group_of, a: str, b: str) -> dict:
  """p(group a > group b) over their seed pairs (a != b, or one policy b)."""
  rows = [i for i, n in enumerate(names) if group_of.get(n, n) == a]
  cols = [j for j, n in enumerate(names) if group_of.get(n, n) == b]
  return _mean_std([matrix[i, j] for i in rows for j in cols if i != j])


def summarise(gold: dict, names: Sequence[str], group_of: Mapping[str, str],
              entrants: Sequence[Entrant], sweep_betas: Sequence[float],
              pm_vs_reference: Mapping[str, float] | None = None) -> dict:
  """Method matrix, ranking, beta sweep and online vs offline from the gold
  judge's policy matrix (`side_by_side.evaluate(...)["judges"]["gold"]`)."""
  matrix = np.asarray(gold["matrix"], np.float64)
  methods = [e.name for e in entrants]
  policy_groups = [group_of.get(n, n) for n in names]
  grouped = stats.group_matrix(matrix, policy_groups)
  index = {g: i for i, g in enumerate(grouped.names)}
  order = methods + [REFERENCE]
  table = {a: {b: {"mean": _none(grouped.mean[index[a], index[b]]),
                   "std": _none(grouped.std[index[a], index[b]])}
               for b in order} for a in order}
  ranking = stats.bradley_terry(
      np.array([[grouped.mean[index[a], index[b]] for b in order]
                for a in order]))
  out = {
      "methods": order,
      "table": table,
      "bradley_terry": {g: float(s) for g, s in zip(order, ranking)},
      "vs_reference": {g: _cross(matrix, names, group_of, g, REFERENCE)
                       for g in dict.fromkeys(policy_groups) if g != REFERENCE},
  }
  if sweep_betas:
    ipo = next((e.name for e in entrants if e.name == "online_ipo"), None)
    out["beta_sweep"] = {
        f"{b:g}": {"vs_reference": _cross(matrix, names, group_of,
                                          beta_name(b), REFERENCE),
                   "vs_online_ipo": (None if ipo is None else _cross(
                       matrix, names, group_of, beta_name(b), ipo))}
        for b in sweep_betas}
  out["online_vs_offline"] = _online_vs_offline(matrix, names, group_of,
                                                entrants)
  if pm_vs_reference is not None:
    out["pm_vs_reference"] = {
        g: _mean_std([v for n, v in pm_vs_reference.items()
                      if group_of.get(n) == g])
        for g in dict.fromkeys(policy_groups) if g != REFERENCE}
  return out


def _none(x) -> float | None:
  return None if not np.isfinite(x) else float(x)


def _online_vs_offline(matrix, names, group_of, entrants) -> dict:
  families = {}
  for e in entrants:
    if e.family:
      families.setdefault(e.family, {})["online" if e.online else
                                        "offline"] = e.name
  out = {}
  for family, pair in families.items():
    if set(pair) != {"online", "offline"}:
      continue
    out[family] = {
        "online": pair["online"], "offline": pair["offline"],
        "online_vs_offline": _cross(matrix, names, group_of, pair["online"],
                                    pair["offline"]),
        "online_vs_reference": _cross(matrix, names, group_of,
                                      pair["online"], REFERENCE),
        "offline_vs_reference": _cross(matrix, names, group_of,
                                       pair["offline"], REFERENCE),
    }
  return out


def _fmt(cell: dict | None) -> str:
  if not cell or cell.get("mean") is None:
    return "-"
  std = cell.get("std")
  return f"{cell['mean']:.3f}" + (f" ({std:.3f})" if std else "")


def markdown(summary: dict, *, seeds: Sequence[int], judge: str = "gold"
             ) -> str:
  """The tournament's tables as Markdown (also printed by the CLI)."""
  order = summary["methods"]
  lines = [f"### p(row > column), {judge} judge: mean (std) over the "
           f"{len(seeds)}x{len(seeds)} seed pairs", "",
           "| p(row > col) | " + " | ".join(order) + " |",
           "|---" * (len(order) + 1) + "|"]
  for a in order:
    cells = ["0.500" if a == b else _fmt(summary["table"][a][b])
             for b in order]
    lines.append(f"| **{a}** | " + " | ".join(cells) + " |")
  bt = summary["bradley_terry"]
  ranked = sorted(bt, key=bt.get, reverse=True)
  lines += ["", "Ranking (Bradley-Terry strength, logit scale): "
            + ", ".join(f"{g} {bt[g]:+.2f}" for g in ranked), ""]
  pm = summary.get("pm_vs_reference")
  lines += ["### Against the SFT reference", "",
            "| policy | gold judge | learned PM |", "|---|---|---|"]
  for g, cell in summary["vs_reference"].items():
    lines.append(f"| {g} | {_fmt(cell)} | "
                 f"{_fmt(pm.get(g)) if pm else '-'} |")
  if summary.get("beta_sweep"):
    lines += ["", "### IPO-MD beta sweep", "",
              "| beta | vs reference | vs online IPO |", "|---|---|---|"]
    for b, row in summary["beta_sweep"].items():
      lines.append(f"| {b} | {_fmt(row['vs_reference'])} | "
                   f"{_fmt(row['vs_online_ipo'])} |")
  if summary.get("online_vs_offline"):
    lines += ["", "### Online against offline", "",
              "| loss | online vs offline | online vs reference | "
              "offline vs reference |", "|---|---|---|---|"]
    for family, row in summary["online_vs_offline"].items():
      lines.append(f"| {family} | {_fmt(row['online_vs_offline'])} | "
                   f"{_fmt(row['online_vs_reference'])} | "
                   f"{_fmt(row['offline_vs_reference'])} |")
  return "\n".join(lines) + "\n"


def write(summary: dict, out_dir, *, seeds: Sequence[int]) -> dict:
  """results.json, report.md and figures in `out_dir`; returns the paths."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = {"results": out / "tournament.json", "report": out / "tournament.md"}
  files["results"].write_text(json.dumps(summary, indent=1))
  files["report"].write_text(markdown(summary, seeds=seeds))
  files.update(_figures(summary, out))
  return {k: str(v) for k, v in files.items()}


def _figures(summary: dict, out) -> dict:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  files = {}
  order = summary["methods"]
  m = np.array([[0.5 if a == b else (summary["table"][a][b]["mean"] or np.nan)
                 for b in order] for a in order])
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(order),
                                  0.6 + 0.7 * len(order)))
  im = ax.imshow(m, vmin=0, vmax=1, cmap="RdBu_r")
  ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
  ax.set_yticks(range(len(order)), order)
  for i in range(len(order)):
    for j in range(len(order)):
      if np.isfinite(m[i, j]):
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
  fig.colorbar(im, ax=ax, label="p(row > column)")
  fig.tight_layout()
  files["heatmap"] = out / "tournament_heatmap.png"
  with files["heatmap"].open("wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)
  sweep = summary.get("beta_sweep")
  if sweep:
    betas = [float(b) for b in sweep]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for key, label in (("vs_reference", "vs SFT reference"),
                       ("vs_online_ipo", "vs online IPO")):
      cells = [sweep[b][key] for b in sweep]
      if all(c and c["mean"] is not None for c in cells):
        ax.errorbar(betas, [c["mean"] for c in cells],
                    yerr=[c["std"] for c in cells], marker="o", capsize=3,
                    label=label)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xlabel("beta (mixture weight on the reference)")
    ax.set_ylabel("gold win rate")
    ax.legend()
    fig.tight_layout()
    files["beta_sweep"] = out / "tournament_beta_sweep.png"
    with files["beta_sweep"].open("wb") as f:
      fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
  return files


def policies_of(stages: Sequence[pipeline.Stage], groups: Mapping[str, str]
                ) -> list[str]:
  """The stage names that are tournament policies, in order."""
  return [s.name for s in stages if s.name in groups]


def describe(entrants: Sequence[Entrant], seeds, sweep_betas,
             sweep_seeds) -> str:
  runs = len(entrants) * len(seeds) + len(sweep_betas) * len(
      seeds if sweep_seeds is None else sweep_seeds)
  return (f"{len(entrants)} methods x {len(seeds)} seeds"
          + (f" + beta sweep {list(sweep_betas)}" if sweep_betas else "")
          + f" = {runs} policy runs")

