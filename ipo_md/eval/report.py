# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""The files of a side-by-side evaluation: results.json, report.md, PNGs.

Everything is drawn from the results dict that `side_by_side.evaluate`
returns, so a saved results.json can be redrawn without sampling or judging
again (`write(json.load(...), out_dir)`).

With several judges, the first is the reference (the gold oracle, say) and
each other judge is shown beside it in every cell and in the win rates
against the baseline, with the difference: a policy trained against a learned
preference model that exploits it shows a learned-minus-gold gap
(over-optimisation, not hidden).
"""

import json
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from ipo_md.eval import store


def _finite(value):
  """NaN and inf become None (strict JSON), recursively."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def to_json(results: dict) -> dict:
  """The results without the per-prompt tensors, JSON-safe."""
  judges = {name: {k: v for k, v in j.items() if k != "per_prompt"}
            for name, j in results["judges"].items()}
  return _finite({**results, "judges": judges})


def write(results: dict, out_dir) -> dict[str, str]:
  """Writes results.json, report.md and the figures; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  files = {"results": str(out_dir / "results.json"),
           "report": str(out_dir / "report.md")}
  names = [p["name"] for p in results["policies"]]
  for judge, r in results["judges"].items():
    files[f"heatmap/{judge}"] = _heatmap(r, names, judge, results["level"],
                                         out_dir / f"heatmap_{judge}.png")
    files[f"ranking/{judge}"] = _ranking(r, names, judge, results["level"],
                                         out_dir / f"ranking_{judge}.png")
  if len(results["judges"]) > 1:
    files["vs_baseline"] = _vs_baseline(results,
                                        out_dir / "vs_baseline.png")
  store.write_json_atomic(out_dir / "results.json",
                          to_json({**results, "files": files}))
  (out_dir / "report.md").write_text(markdown(results), encoding="utf-8")
  return files


def _cell(mean, low, high) -> str:
  if mean is None or not np.isfinite(mean):
    return "-"
  return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _policies_table(results: dict) -> list[str]:
  features = list(dict.fromkeys(f for p in results["policies"]
                                for f in p["rouge"]))
  header = ["policy", "mean length (tokens)", "no EOS"] + [
      f"ROUGE-1 / 2 / L vs {f}" for f in features]
  rows = []
  for p in results["policies"]:
    rouge = [" / ".join(f"{p['rouge'][f][t]:.3f}"
                        for t in ("rouge1", "rouge2", "rougeL"))
             if f in p["rouge"] else "-" for f in features]
    rows.append([p["name"], f"{p['mean_length']:.2f}",
                 f"{p['no_eos_fraction']:.1%}"] + rouge)
  return _table(header, rows)


def _judge_section(name: str, r: dict, names: list[str], level: float,
                   baseline: str) -> list[str]:
  lines = [f"## Judge `{name}`: p(row > column)", ""]
  rows = [[a] + [_cell(r["matrix"][i][j], r["low"][i][j], r["high"][i][j])
                 if i != j else "0.500" for j in range(len(names))]
          for i, a in enumerate(names)]
  lines += _table([""] + names, rows)
  bt = r["bradley_terry"]
  b = names.index(baseline)
  lines += ["", f"Bradley-Terry ranking (strength on the logit scale, "
            f"{level:.0%} interval; sigmoid(s_i - s_j) is the fitted "
            f"p(i > j)):", ""]
  rows = []
  for rank, policy in enumerate(bt["ranking"], 1):
    i = names.index(policy)
    s = bt["strength"][i]
    rows.append([str(rank), policy, f"{s:+.3f}",
                 f"[{bt['low'][i]:+.3f}, {bt['high'][i]:+.3f}]",
                 f"{1 / (1 + math.exp(bt['strength'][b] - s)):.3f}"])
  lines += _table(["rank", "policy", "strength", "interval",
                   f"fitted p(> {baseline})"], rows)
  lines += ["", f"First-position bias of the judge (mean (p(a, b) + p(b, a)"
            f" - 1) / 2, removed by judging both orders): "
            f"{r['position_bias']:+.4f}", ""]
  return lines


def _comparison_section(results: dict, names: list[str]) -> list[str]:
  judges = list(results["judges"])
  ref = judges[0]
  baseline = results["baseline"]
  lines = [f"## Judges side by side (reference judge: `{ref}`)", "",
           f"Win rate against `{baseline}`, mean [{results['level']:.0%} "
           "interval], under each judge; the last columns are each judge "
           f"minus `{ref}` (a positive gap: the judge likes the policy more "
           "than the reference judge does, e.g. a learned preference model "
           "that the policy over-optimised):", ""]
  rows = []
  for name in names:
    cells = [results["judges"][j]["vs_baseline"][name] for j in judges]
    row = [name] + [_cell(c["mean"], c["low"], c["high"]) for c in cells]
    row += [f"{c['mean'] - cells[0]['mean']:+.3f}" for c in cells[1:]]
    rows.append(row)
  header = ["policy"] + [f"`{j}`" for j in judges] + [
      f"`{j}` - `{ref}`" for j in judges[1:]]
  lines += _table(header, rows)
  lines += ["", "p(row > column) under " + " / ".join(
      f"`{j}`" for j in judges) + ":", ""]
  rows = []
  for i, a in enumerate(names):
    rows.append([a] + [" / ".join(
        f"{results['judges'][j]['matrix'][i][k]:.3f}" for j in judges)
        for k in range(len(names))])
  return lines + _table([""] + names, rows) + [""]


def markdown(results: dict) -> str:
  """The report as Markdown."""
  names = [p["name"] for p in results["policies"]]
  s = results["sampling"]
  lines = [
      "# Side-by-side evaluation", "",
      f"Prompts: {results['prompts']['description']} "
      f"({results['prompts']['num_prompts']} prompts). Sampling: up to "
      f"{s['max_decode_length']} tokens, temperature {s['temperature']}, "
      f"top_k {s['top_k']}, top_p {s['top_p']}, seed {results['seed']}. "
      f"Every pair judged on every prompt in both orders and averaged; "
      f"intervals: {results['level']:.0%} bootstrap over prompts "
      f"({results['num_bootstrap']} resamples). Baseline: "
      f"`{results['baseline']}`.", "", "## Policies", ""]
  lines += _policies_table(results) + [""]
  for name, r in results["judges"].items():
    lines += _judge_section(name, r, names, results["level"],
                            results["baseline"])
  if len(results["judges"]) > 1:
    lines += _comparison_section(results, names)
  return "\n".join(lines)


def _heatmap(r: dict, names: list[str], judge: str, level: float,
             path: pathlib.Path) -> str:
  m = np.array(r["matrix"], float)
  size = max(4.0, 1.1 * len(names) + 2)
  fig, ax = plt.subplots(figsize=(size, size * 0.85))
  image = ax.imshow(m, cmap="RdBu", vmin=0.0, vmax=1.0)
  for i in range(len(names)):
    for j in range(len(names)):
      text = (f"{m[i, j]:.2f}" if i == j else
              f"{m[i, j]:.2f}\n[{r['low'][i][j]:.2f}, {r['high'][i][j]:.2f}]")
      ax.text(j, i, text, ha="center", va="center", fontsize=8,
              color="white" if abs(m[i, j] - 0.5) > 0.3 else "black")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("column policy")
  ax.set_ylabel("row policy")
  ax.set_title(f"p(row > column), judge {judge} ({level:.0%} intervals)")
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)


def _ranking(r: dict, names: list[str], judge: str, level: float,
             path: pathlib.Path) -> str:
  bt = r["bradley_terry"]
  order = [names.index(n) for n in bt["ranking"]][::-1]
  s = np.array(bt["strength"])[order]
  err = np.stack([s - np.array(bt["low"])[order],
                  np.array(bt["high"])[order] - s])
  fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.5))
  ax.errorbar(s, range(len(order)), xerr=np.maximum(err, 0), fmt="o",
              capsize=4)
  ax.set_yticks(range(len(order)), [names[i] for i in order])
  ax.axvline(0.0, color="grey", lw=0.8)
  ax.set_xlabel(f"Bradley-Terry strength (logit), {level:.0%} interval")
  ax.set_title(f"Ranking, judge {judge}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)


def _vs_baseline(results: dict, path: pathlib.Path) -> str:
  names = [p["name"] for p in results["policies"]]
  judges = list(results["judges"])
  width = 0.8 / len(judges)
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 1), 4))
  for k, judge in enumerate(judges):
    v = results["judges"][judge]["vs_baseline"]
    mean = np.array([v[n]["mean"] for n in names])
    err = np.stack([mean - [v[n]["low"] for n in names],
                    np.array([v[n]["high"] for n in names]) - mean])
    ax.bar(np.arange(len(names)) + (k - (len(judges) - 1) / 2) * width,
           mean, width, yerr=np.maximum(err, 0), capsize=3, label=judge)
  ax.axhline(0.5, color="grey", lw=0.8)
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel(f"p(policy > {results['baseline']})")
  ax.set_title("Win rate against the baseline, per judge")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)


def load(out_dir) -> dict:
  """results.json of an evaluation folder."""
  with open(pathlib.Path(out_dir) / "results.json", encoding="utf-8") as f:
    return json.load(f)
