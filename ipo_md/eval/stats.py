# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Statistics of side-by-side evaluations: intervals, rankings, seed pairs.

A side-by-side evaluation judges every pair of policies on the same prompts,
so its raw result is a tensor p[i, j, n] = judged p(policy i > policy j) on
prompt n. Everything a report states about it is computed here, in numpy
only, so that the numbers can be checked against closed forms and
simulations without a model or a judge:

* `pairwise_summary`: the matrix of means over prompts with percentile
  bootstrap intervals. Prompts are resampled *jointly* for every cell (one
  resample draws one multiset of prompts), so the bootstrap matrices keep the
  correlations between cells that share a policy, which the Bradley-Terry
  intervals need.
* `bradley_terry`: strengths s with p(i > j) = sigmoid(s_i - s_j), fitted by
  damped Newton on the soft-label log-likelihood of a (possibly incomplete)
  matrix; `bradley_terry_intervals` refits it on every bootstrap matrix.
* `group_matrix`: the paper's Table 2 statistic, the mean and standard
  deviation over the K_a x K_b seed pairs of two methods (arXiv 2403.08635
  §6: 3 x 3 = 9 comparisons per cell), from the matrix of policies and a
  grouping of policies into methods.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairwiseSummary:
  """Mean judged preferences with bootstrap intervals.

  Attributes:
    mean: [P, P] mean over prompts of p(row > column); NaN where no pair was
      judged (0.5 on the diagonal).
    low / high: [P, P] the interval at `level` (percentile bootstrap).
    level: the coverage the intervals are built for, e.g. 0.9.
    boot: [S, P, P] the S bootstrap means (prompts resampled jointly).
    num_prompts: N, the prompts every cell is averaged over.
  """

  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  level: float
  boot: np.ndarray
  num_prompts: int


def _check_level(level: float) -> None:
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must be in (0, 1), e.g. 0.9 for a 90% "
                     "interval.")


def bootstrap_weights(num_items: int, num_samples: int,
                      rng: np.random.Generator) -> np.ndarray:
  """[S, N] multinomial counts: row s says how often each item is drawn.

  A weighted mean with these counts equals the mean of a resample with
  replacement, without materialising the resampled data.
  """
  if num_items < 1 or num_samples < 1:
    raise ValueError(f"bootstrap of num_items={num_items} with "
                     f"num_samples={num_samples}: both must be >= 1.")
  return rng.multinomial(num_items, np.full(num_items, 1.0 / num_items),
                         size=num_samples).astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float,
                        axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The central `level` interval of bootstrap samples along `axis`."""
  _check_level(level)
  alpha = (1.0 - level) / 2.0
  low = np.quantile(samples, alpha, axis=axis)
  high = np.quantile(samples, 1.0 - alpha, axis=axis)
  return low, high


def bootstrap_mean(values_N: np.ndarray, *, num_samples: int = 1000,
                   level: float = 0.9, seed: int = 0
                   ) -> tuple[float, float, float]:
  """(mean, low, high) of the mean of `values_N` (percentile bootstrap)."""
  values = np.asarray(values_N, np.float64)
  if values.ndim != 1:
    raise ValueError(f"values has shape {values.shape}; expected [N].")
  weights = bootstrap_weights(values.shape[0], num_samples,
                              np.random.default_rng(seed))
  boot = weights @ values / values.shape[0]
  low, high = percentile_interval(boot, level)
  return float(values.mean()), float(low), float(high)


def pairwise_summary(p_PxPxN: np.ndarray, *, num_samples: int = 1000,
                     level: float = 0.9, seed: int = 0) -> PairwiseSummary:
  """Means over prompts and joint-bootstrap intervals of p[i, j, n].

  Args:
    p_PxPxN: judged p(i > j) per prompt; NaN for pairs not judged (the whole
      [i, j, :] row then stays NaN). The diagonal is ignored and reported as
      0.5.
    num_samples: bootstrap resamples S.
    level: interval coverage, in (0, 1).
    seed: seed of the resampling.

  Returns:
    The summary; intervals are percentile intervals of the S means.
  """
  _check_level(level)
  p = np.asarray(p_PxPxN, np.float64)
  if p.ndim != 3 or p.shape[0] != p.shape[1]:
    raise ValueError(f"p has shape {p.shape}; expected [P, P, N].")
  num_policies, _, n = p.shape
  weights = bootstrap_weights(n, num_samples, np.random.default_rng(seed))
  judged = np.all(np.isfinite(p), axis=-1)
  filled = np.where(judged[..., None], p, 0.0).reshape(-1, n)
  boot = (weights @ filled.T / n).reshape(num_samples, num_policies,
                                          num_policies)
  boot = np.where(judged[None], boot, np.nan)
  eye = np.eye(num_policies, dtype=bool)
  boot[:, eye] = 0.5
  mean = np.where(judged, filled.reshape(p.shape).mean(axis=-1), np.nan)
  mean[eye] = 0.5
  low, high = percentile_interval(boot, level)
  return PairwiseSummary(mean=mean, low=low, high=high, level=level,
                         boot=boot, num_prompts=n)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bt_objective(s, m, mask, ridge):
  """[...] penalised log-likelihood of strengths s [..., P]."""
  d = s[..., :, None] - s[..., None, :]
  # log sigmoid(d) = -logaddexp(0, -d), stable for large |d|.
  ll = -(m * np.logaddexp(0.0, -d) + (1.0 - m) * np.logaddexp(0.0, d))
  return (0.5 * np.sum(np.where(mask, ll, 0.0), axis=(-2, -1))
          - 0.5 * ridge * np.sum(s * s, axis=-1))


def bradley_terry(matrix_PxP: np.ndarray, *, ridge: float = 1e-4,
                  max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
  """Bradley-Terry strengths from a matrix of mean preferences.

  Maximises (1/2) sum over judged i != j of
  m_ij log sigmoid(s_i - s_j) + (1 - m_ij) log sigmoid(s_j - s_i)
  - (ridge / 2) |s|^2, the soft-label likelihood; for an antisymmetric m it
  counts each unordered pair once. The small ridge keeps s finite when a
  policy wins or loses every comparison (m = 1 or 0) and fixes the free
  shift; strengths are returned with mean zero. sigmoid(s_i - s_j) is the
  fitted p(i > j) (logit scale; multiply by 400 / ln 10 for Elo points).
  The objective is concave, and damped Newton (step halving until the
  objective does not drop) converges in a handful of iterations.

  Args:
    matrix_PxP: m_ij in [0, 1], or a batch [..., P, P] of such matrices
      (fitted independently, in one vectorised loop); NaN marks pairs not
      judged; the diagonal is ignored.
    ridge: L2 penalty on s (> 0).
    max_iter / tol: Newton iterations and the gradient-norm tolerance.

  Returns:
    [..., P] strengths, float64, mean zero.
  """
  m = np.asarray(matrix_PxP, np.float64)
  if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
    raise ValueError(f"matrix has shape {m.shape}; expected [P, P] (or "
                     "[..., P, P]).")
  if ridge <= 0:
    raise ValueError(f"ridge={ridge} must be > 0.")
  num = m.shape[-1]
  eye = np.eye(num, dtype=bool)
  mask = np.isfinite(m) & ~eye
  bad = mask & ((m < 0) | (m > 1))
  if np.any(bad):
    raise ValueError(f"matrix entries {m[bad][:3]} are outside [0, 1]; "
                     "pass mean probabilities p(row > column).")
  m = np.where(mask, m, 0.5)
  s = np.zeros(m.shape[:-1])
  for _ in range(max_iter):
    sig = _sigmoid(s[..., :, None] - s[..., None, :])
    resid = np.where(mask, m - sig, 0.0)
    grad = 0.5 * (resid.sum(-1) - resid.sum(-2)) - ridge * s
    active = np.max(np.abs(grad), axis=-1) >= tol  # Not yet converged.
    if not np.any(active):
      break
    w = 0.5 * np.where(mask, sig * (1.0 - sig), 0.0)
    w = w + np.swapaxes(w, -1, -2)
    hess = w - w.sum(-1)[..., None] * eye - ridge * eye
    step = np.linalg.solve(hess, -grad[..., None])[..., 0]
    step = np.where(active[..., None], step, 0.0)
    base = _bt_objective(s, m, mask, ridge)
    slack = 1e-12 * (1.0 + np.abs(base))  # Rounding is not a worse step.
    t = np.ones(s.shape[:-1])
    for _ in range(30):
      new = _bt_objective(s + t[..., None] * step, m, mask, ridge)
      worse = active & (new < base - slack)
      if not np.any(worse):
        break
      t = np.where(worse, 0.5 * t, t)
    s = s + t[..., None] * step
  return s - s.mean(-1, keepdims=True)


def bradley_terry_intervals(boot_SxPxP: np.ndarray, *, level: float = 0.9,
                            ridge: float = 1e-4
                            ) -> tuple[np.ndarray, np.ndarray]:
  """(low, high) [P] of the strengths refitted on each bootstrap matrix."""
  return percentile_interval(bradley_terry(boot_SxPxP, ridge=ridge), level)


def ranking(strengths_P: np.ndarray) -> list[int]:
  """Policy indices from the strongest to the weakest (ties: lower first)."""
  return [int(i) for i in np.argsort(-np.asarray(strengths_P), kind="stable")]


@dataclasses.dataclass(frozen=True)
class GroupMatrix:
  """Method-level statistics over seed pairs (Table 2 of arXiv 2403.08635).

  Attributes:
    names: the M methods, in order of first appearance in `groups`.
    mean / std: [M, M] over the policy pairs (seed pairs) of two methods;
      the diagonal uses the pairs of distinct seeds of one method (0.5 and
      NaN when the method has one seed).
    count: [M, M] the number of seed pairs behind each cell.
  """

  names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  count: np.ndarray


def group_matrix(matrix_PxP: np.ndarray, groups: Sequence[str], *,
                 ddof: int = 0) -> GroupMatrix:
  """Mean and std over the K_a x K_b seed pairs of every pair of methods.

  Args:
    matrix_PxP: p(policy i > policy j), e.g. `PairwiseSummary.mean`.
    groups: the method of each policy (P names); policies of one method are
      its seeds.
    ddof: delta degrees of freedom of the std (0: population std over the
      pairs; the paper does not say which it used).

  Returns:
    The method-level matrix.
  """
  m = np.asarray(matrix_PxP, np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(groups):
    raise ValueError(f"matrix of shape {m.shape} and {len(groups)} groups: "
                     "expected a [P, P] matrix and one group per policy.")
  names = tuple(dict.fromkeys(groups))
  members = {g: [i for i, x in enumerate(groups) if x == g] for g in names}
  num = len(names)
  mean = np.full((num, num), np.nan)
  std = np.full((num, num), np.nan)
  count = np.zeros((num, num), int)
  for a, ga in enumerate(names):
    for b, gb in enumerate(names):
      values = np.array([m[i, j] for i in members[ga] for j in members[gb]
                         if i != j], np.float64)
      values = values[np.isfinite(values)]
      count[a, b] = values.size
      if values.size:
        mean[a, b] = values.mean()
        if values.size > ddof:
          std[a, b] = values.std(ddof=ddof)
      elif a == b:
        mean[a, b] = 0.5
  return GroupMatrix(names=names, mean=mean, std=std, count=count)
