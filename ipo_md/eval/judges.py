# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Judges: p(a > b | x) for a batch of (prompt, a, b), behind one interface.

A side-by-side evaluation should not care whether its verdicts come from the
programmatic oracle of the synthetic task, a learned preference model or an
LLM over an HTTP API, so all three are a `Judge`: a callable from `Pairs` to
p(a > b) per pair. `Pairs` carries each prompt and response both as token ids
(int32, 0 = pad, 1 = EOS; what in-graph signals read) and as decoded text
(what an LLM reads), so every judge takes the same batch.

`judge_both_orders` asks a judge about every pair in both orders, in one call,
and averages 0.5 * (p(a, b) + 1 - p(b, a)). The average is antisymmetric, and
it removes a judge's constant position bias exactly: if the judge returns
p(a, b) + c for an antisymmetric p, the c cancels (the paper leaves position
handling open, docs/methods.md; swapping and averaging is the fair choice).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import numpy as np

from ipo_md.eval import store
from ipo_md.preference import base as preference_base
from ipo_md.preference import oracle


@dataclasses.dataclass(frozen=True)
class Pairs:
  """M pairs of responses to judge, as ids and as text.

  Attributes:
    prompts: int32 [M, Li] prompt ids.
    a / b: int32 [M, T] response ids (EOS then pad).
    prompt_texts / a_texts / b_texts: the same, decoded; M strings each.
  """

  prompts: np.ndarray
  a: np.ndarray
  b: np.ndarray
  prompt_texts: Sequence[str]
  a_texts: Sequence[str]
  b_texts: Sequence[str]

  def __post_init__(self):
    m = self.prompts.shape[0]
    for name in ("prompts", "a", "b"):
      x = getattr(self, name)
      if x.ndim != 2 or x.shape[0] != m:
        raise ValueError(f"Pairs.{name} has shape {x.shape}; expected "
                         f"[{m}, length] like Pairs.prompts.")
    if self.a.shape != self.b.shape:
      raise ValueError(f"Pairs.a {self.a.shape} and Pairs.b {self.b.shape} "
                       "must have one shape; pad both to the same length.")
    for name in ("prompt_texts", "a_texts", "b_texts"):
      if len(getattr(self, name)) != m:
        raise ValueError(f"Pairs.{name} has {len(getattr(self, name))} "
                         f"strings; expected one per pair ({m}).")

  def __len__(self) -> int:
    return self.prompts.shape[0]

  def swapped(self) -> "Pairs":
    """The same pairs with a and b exchanged."""
    return Pairs(self.prompts, self.b, self.a, self.prompt_texts,
                 self.b_texts, self.a_texts)

  @staticmethod
  def concatenate(parts: Sequence["Pairs"]) -> "Pairs":
    join = lambda name: tuple(s for p in parts for s in getattr(p, name))
    return Pairs(
        np.concatenate([p.prompts for p in parts]),
        np.concatenate([p.a for p in parts]),
        np.concatenate([p.b for p in parts]),
        join("prompt_texts"), join("a_texts"), join("b_texts"))


class Judge(Protocol):
  """p(a > b | x) per pair.

  Attributes:
    name: a short label for reports ("gold", "learned_pm", "llm").
    key: a string that changes whenever the judge's verdicts could change
      (its model, parameters, prompt template, ...); evaluation caches the
      verdicts of a judge under its key.
  """

  name: str
  key: str

  def __call__(self, pairs: Pairs) -> np.ndarray:
    """Returns float64 [M] in [0, 1]."""
    ...


@dataclasses.dataclass(frozen=True)
class BothOrders:
  """Verdicts of every pair in both orders.

  Attributes:
    forward: p(a, b) [M]; backward: p(b, a) [M].
    symmetric: 0.5 * (forward + 1 - backward) [M], antisymmetric.
    position_bias: mean of (forward + backward - 1) / 2, the judge's average
      preference for the first position (0 for an unbiased judge).
  """

  forward: np.ndarray
  backward: np.ndarray

  @property
  def symmetric(self) -> np.ndarray:
    return symmetrize(self.forward, self.backward)

  @property
  def position_bias(self) -> float:
    return float(np.mean(self.forward + self.backward - 1.0) / 2.0)


def symmetrize(p_ab: np.ndarray, p_ba: np.ndarray) -> np.ndarray:
  """0.5 * (p(a, b) + 1 - p(b, a))."""
  return 0.5 * (np.asarray(p_ab, np.float64) + 1.0
                - np.asarray(p_ba, np.float64))


def judge_both_orders(judge: Judge, pairs: Pairs) -> BothOrders:
  """Judges `pairs` as (a, b) and as (b, a), in one call of `judge`."""
  both = np.asarray(judge(Pairs.concatenate([pairs, pairs.swapped()])),
                    np.float64)
  m = len(pairs)
  if both.shape != (2 * m,):
    raise ValueError(f"Judge {judge.name!r} returned shape {both.shape} for "
                     f"{2 * m} pairs; a judge returns one p per pair.")
  return BothOrders(forward=both[:m], backward=both[m:])


def _bucket(m: int, batch_size: int) -> int:
  """The batch to compile for m pairs: a power of two up to batch_size, so
  few shapes are ever compiled."""
  b = 1
  while b < min(m, batch_size):
    b *= 2
  return min(b, batch_size)


class SignalJudge:
  """Any in-graph `PreferenceSignal` (the oracle, a learned preference
  model) with its params, jitted once per batch shape.

  Pairs are judged in chunks of at most `batch_size`; the last chunk is
  padded by repeating its last row, so every call of the compiled function
  has one of a few fixed shapes.
  """

  def __init__(self, signal: preference_base.PreferenceSignal,
               params: Any = None, *, name: str, batch_size: int = 256,
               key: str | None = None):
    if batch_size < 1:
      raise ValueError(f"SignalJudge batch_size={batch_size} must be >= 1.")
    self.signal = signal
    self.params = params
    self.name = name
    self.batch_size = batch_size
    self.calls = 0  # Compiled-function calls, for tests and benchmarks.
    self.key = key or store.digest(
        ["signal", type(signal).__qualname__, repr(signal),
         store.fingerprint(params)])
    self._fn = jax.jit(signal)

  def __call__(self, pairs: Pairs) -> np.ndarray:
    m = len(pairs)
    if m == 0:
      return np.zeros((0,), np.float64)
    size = _bucket(m, self.batch_size)
    out = []
    for start in range(0, m, size):
      chunk = [x[start:start + size] for x in (pairs.prompts, pairs.a,
                                               pairs.b)]
      n = chunk[0].shape[0]
      if n < size:
        chunk = [np.pad(x, ((0, size - n), (0, 0)), mode="edge")
                 for x in chunk]
      self.calls += 1
      p = self._fn(self.params, *(x.astype(np.int32) for x in chunk))
      out.append(np.asarray(jax.device_get(p), np.float64)[:n])
    p = np.concatenate(out)
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if np.any(bad):
      first = int(np.argmax(bad))
      raise ValueError(
          f"Judge {self.name!r} returned p={p[first]} for pair {first}; a "
          "preference signal must return probabilities in [0, 1].")
    return p


def gold_judge(*, batch_size: int = 256, **oracle_kwargs) -> SignalJudge:
  """The synthetic task's programmatic oracle (`oracle.FactsOracle`)."""
  return SignalJudge(oracle.FactsOracle(**oracle_kwargs), None, name="gold",
                     batch_size=batch_size)
