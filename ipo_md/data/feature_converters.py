# Copyright 2025 The ipo-md Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Fixed-shape token arrays from tokenized seqio examples, per batch kind.

The trainer sees three kinds of batch (all int32, 0 = padding):

* `sft`: `inputs` [batch, Li], `targets` [batch, Lt];
* `pairs`: `inputs` [batch, Li], `chosen` and `rejected` [batch, Lt], one
  encoder input shared by both responses, plus float32 [batch] `label`, the
  soft label p(chosen > rejected) the data gives (1.0, chosen preferred, when
  the task has no "label" feature: TL;DR human choices are hard labels), and
  `gold_pref`, the gold oracle's p(chosen > rejected), when the task provides
  it (the synthetic comparisons do);
* `prompts`: `inputs` [batch, Li], plus `targets` [batch, Lt] (the reference)
  when `feature_lengths` names a "targets" length.

Truncation policy. Every feature ends with EOS (seqio's `append_eos`), and a
truncated feature still ends with it. A feature is shortened by dropping tokens
at the end of its *body*: by default everything before the final EOS, so
targets and plain inputs lose their tail. A task may mark a narrower body with
an int32 feature `<name>_body_span` = [start, end) (token positions, end
exclusive): TL;DR prompts mark the POST text, so a long post is cut at token
level while the "SUBREDDIT/TITLE/POST:" head and the "TL;DR:" tail survive
intact. If the rest of the prompt alone exceeds the length, conversion fails
with an error that names the example and the length to raise: silently cutting
the "TL;DR:" cue would train on malformed prompts.

The arrays are built in numpy on the host (a Python pass over the examples), so
every check here runs before training starts.
"""

from collections.abc import Collection, Iterable, Mapping
import dataclasses
import math

from ipo_md.data import errors
import numpy as np

SFT = "sft"
PAIRS = "pairs"
PROMPTS = "prompts"
KINDS = (SFT, PAIRS, PROMPTS)

# Batch feature -> the `feature_lengths` key that sets its length.
_REQUIRED = {
    SFT: {"inputs": "inputs", "targets": "targets"},
    PAIRS: {"inputs": "inputs", "chosen": "targets", "rejected": "targets"},
    PROMPTS: {"inputs": "inputs"},
}
# Features a kind carries only when `feature_lengths` names their length key.
_OPTIONAL = {SFT: {}, PAIRS: {}, PROMPTS: {"targets": "targets"}}
# Float scalar features per kind -> the value when the task lacks the feature
# (None: carried only when the task has it). All are probabilities.
SCALARS = {SFT: {}, PAIRS: {"label": 1.0, "gold_pref": None}, PROMPTS: {}}

# Suffix of the optional [start, end) span feature that truncation may shorten.
BODY_SPAN_SUFFIX = "_body_span"
PAD_ID = 0


def validate_feature_lengths(kind: str, feature_lengths: Mapping[str, int]):
  """Raises ValueError unless `feature_lengths` fits batch kind `kind`."""
  if kind not in KINDS:
    raise errors.DataError(
        f"kind={kind!r} is not a batch kind; choose one of {KINDS}.")
  required = set(_REQUIRED[kind].values())
  allowed = required | set(_OPTIONAL[kind].values())
  keys = set(feature_lengths)
  if not required <= keys or not keys <= allowed:
    raise errors.DataError(
        f"feature_lengths={dict(feature_lengths)} does not fit kind={kind!r}: "
        f"it needs the keys {sorted(required)}"
        + (f" and may add {sorted(allowed - required)}" if allowed > required
           else "")
        + ". For pairs, 'targets' is the length of both chosen and rejected."
    )
  for key, length in feature_lengths.items():
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
      raise errors.DataError(
          f"feature_lengths[{key!r}]={length!r} must be an int, e.g. 512."
      )
    if length < 2:
      raise errors.DataError(
          f"feature_lengths[{key!r}]={length} must be >= 2 (at least one "
          "token plus EOS)."
      )


def batch_lengths(
    kind: str,
    feature_lengths: Mapping[str, int],
    task_features: Collection[str],
    task_name: str,
) -> dict[str, int]:
  """Batch feature -> fixed length, after checking the task provides each one.

  Args:
    kind: one of `KINDS`.
    feature_lengths: validated by `validate_feature_lengths`.
    task_features: the output features of the seqio task.
    task_name: for error messages.

  Returns:
    e.g. {"inputs": 512, "chosen": 64, "rejected": 64} for pairs.
  """
  validate_feature_lengths(kind, feature_lengths)
  spec = dict(_REQUIRED[kind])
  spec.update({f: key for f, key in _OPTIONAL[kind].items()
               if key in feature_lengths})
  missing = sorted(set(spec) - set(task_features))
  if missing:
    hint = {
        PAIRS: "use a comparisons task, e.g. 'tldr_comparisons'",
        SFT: "use a task with references, e.g. 'tldr_sft'",
        PROMPTS: "drop 'targets' from feature_lengths or use a task with "
                 "references",
    }[kind]
    raise errors.DataError(
        f"Task {task_name!r} has features {sorted(task_features)} but "
        f"kind={kind!r} needs {missing}; {hint}."
    )
  return {f: int(feature_lengths[key]) for f, key in spec.items()}


def fit_to_length(
    tokens: np.ndarray,
    length: int,
    *,
    eos_id: int,
    body_span: tuple[int, int] | np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
  """Pads or truncates one token sequence to `length` (module policy).

  Args:
    tokens: [n] token ids, usually ending with `eos_id`.
    length: the fixed length.
    eos_id: the EOS id; a final EOS is never truncated.
    body_span: [start, end) of the tokens truncation may drop (from its end);
      by default every token before the final EOS.

  Returns:
    ([length] padded tokens, whether tokens were dropped).
  """
  tokens = np.asarray(tokens)
  n = tokens.shape[0]
  truncated = n > length
  if truncated:
    if body_span is None:
      start, end = 0, n - 1 if n and tokens[-1] == eos_id else n
    else:
      start, end = int(body_span[0]), int(body_span[1])
    excess = n - length
    if end - start < excess:
      raise errors.DataError(
          f"length {length} is too short: the parts that must be kept take "
          f"{n - (end - start)} tokens (of {n}); raise the length to at "
          f"least {n - (end - start) + 1}."
      )
    tokens = np.concatenate([tokens[: end - excess], tokens[end:]])
  out = np.full(length, PAD_ID, dtype=tokens.dtype)
  out[: tokens.shape[0]] = tokens
  return out, truncated


@dataclasses.dataclass(frozen=True)
class ConvertedExamples:
  """A whole split (or its first examples) as fixed-shape arrays.

  Attributes:
    arrays: feature -> [num_examples, length] token ids (0 = padding).
    truncated: feature -> [num_examples] bool, True where tokens were dropped.
    scalars: feature -> [num_examples] float32 (see `SCALARS`).
  """

  arrays: dict[str, np.ndarray]
  truncated: dict[str, np.ndarray]
  scalars: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def num_examples(self) -> int:
    return next(iter(self.arrays.values())).shape[0]

  def truncation_summary(self, description: str) -> str:
    """One line for the console, e.g. "tldr_sft:train: inputs truncated in
    7.1% of 116722 examples (512 tokens), targets in 0.0% (64 tokens)"."""
    n = self.num_examples
    parts = []
    for feature, flags in self.truncated.items():
      rate = float(flags.mean()) if n else 0.0
      length = self.arrays[feature].shape[1]
      parts.append(f"{feature} in {rate:.1%}" + (
          f" of {n} examples" if not parts else "") + f" ({length} tokens)")
    if not parts:
      return f"{description}: no token features."
    first, *rest = parts
    feature, _, tail = first.partition(" in ")
    return (f"{description}: {feature} truncated in {tail}"
            + "".join(f", {p}" for p in rest))


def convert_examples(
    examples: Iterable[Mapping[str, np.ndarray]],
    lengths: Mapping[str, int],
    *,
    eos_id: int,
    dtype=np.int32,
    description: str = "examples",
    scalars: Mapping[str, float | None] | None = None,
) -> ConvertedExamples:
  """Fits every feature of every example to its length (module policy).

  Args:
    examples: tokenized examples (feature -> [n] ids; extra keys ignored,
      except the `<feature>_body_span` spans and the `scalars`).
    lengths: feature -> fixed length, as from `batch_lengths`.
    eos_id: the vocabulary's EOS id.
    dtype: storage dtype of the arrays (uint16 halves memory for T5).
    description: names the source in error messages, e.g. "tldr_sft:train".
    scalars: float features to carry -> value when the examples lack it, or
      None to carry it only when they have it (`SCALARS[kind]`); each must
      be a probability in [0, 1].

  Returns:
    The arrays, per-example truncation flags and scalar features.
  """
  rows = {f: [] for f in lengths}
  flags = {f: [] for f in lengths}
  values = _ScalarCollector(scalars or {}, description)
  for index, example in enumerate(examples):
    for feature, length in lengths.items():
      try:
        fitted, cut = fit_to_length(
            example[feature], length, eos_id=eos_id,
            body_span=example.get(feature + BODY_SPAN_SUFFIX))
      except ValueError as e:
        raise errors.DataError(
            f"{description}: example {index}, feature {feature!r}: {e}"
        ) from None
      rows[feature].append(fitted.astype(dtype))
      flags[feature].append(cut)
    values.add(index, example)
  return ConvertedExamples(
      arrays={f: np.stack(r) if r else np.zeros((0, lengths[f]), dtype)
              for f, r in rows.items()},
      truncated={f: np.asarray(v, dtype=bool) for f, v in flags.items()},
      scalars=values.arrays(),
  )


class _ScalarCollector:
  """Gathers the float features of examples; the first example decides which
  optional ones are carried, and every later one must agree."""

  def __init__(self, defaults: Mapping[str, float | None], description: str):
    self._defaults = dict(defaults)
    self._description = description
    self._present: set[str] | None = None
    self._values: dict[str, list[float]] = {}

  def add(self, index: int, example: Mapping[str, object]) -> None:
    present = {f for f in self._defaults if f in example}
    if self._present is None:
      self._present = present
      self._values = {f: [] for f in self._defaults
                      if f in present or self._defaults[f] is not None}
    elif present != self._present:
      raise errors.DataError(
          f"{self._description}: example {index} has the float features "
          f"{sorted(present)} but example 0 has {sorted(self._present)}; "
          "every example of a task must have the same features.")
    for feature, out in self._values.items():
      value = float(example.get(feature, self._defaults[feature]))
      if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise errors.DataError(
            f"{self._description}: example {index}, feature {feature!r} is "
            f"{value}; it must be a probability in [0, 1] (fix the data).")
      out.append(value)

  def arrays(self) -> dict[str, np.ndarray]:
    if self._present is None:  # No examples: carry the defaulted features.
      return {f: np.zeros((0,), np.float32)
              for f, d in self._defaults.items() if d is not None}
    return {f: np.asarray(v, np.float32) for f, v in self._values.items()}
