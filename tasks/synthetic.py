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

"""The built-in synthetic facts tasks (`ipo_md.data.synthetic`).

* `synthetic_facts_sft` (inputs, targets): document -> noisy reference.
* `synthetic_facts_prompts` (inputs, with the noisy reference kept as targets
  and the perfect summary as the string feature "ideal", for evaluation).
* `synthetic_facts_comparisons` (batch kind `pairs`: inputs, chosen,
  rejected, plus the float features "label" and "gold_pref"): 4 pairs per
  train document (32,768; `train_comparisons_per_document` draws more, the
  first 4 of each document unchanged) and 2 per validation document (1,024),
  for training and evaluating preference models. Each pair holds two candidate
  summaries of the document drawn from the noisy generator with their own
  noise level, so pairs range from perfect-versus-bad to near twins. The
  label is what a noisy annotator gives: candidate a wins with probability
  p_gold(a > b) = sigmoid(2 (s(a) - s(b))), s being the gold oracle's score
  (`synthetic.score_summary`, equal to `ipo_md.preference.oracle.FactsOracle`
  with its defaults), then flipped with probability `label_flip_rate`
  (default 0). "chosen" is the labelled winner, "label" = 1.0 (a hard label:
  the data's p(chosen > rejected)) and "gold_pref" = p_gold(chosen >
  rejected). On validation the gold oracle agrees with the labels on 87.6%
  of pairs (the ceiling of a learned preference model); 9.7% are ties
  (equal gold scores, labelled by a coin flip).

Splits: train, validation. They need no files and no network, and use the
task's own word-level vocabulary.
"""

import functools

from ipo_md.data import registration
from ipo_md.data import synthetic
import seqio

SPLITS = ("train", "validation")
COMPARISON_KEYS = ("inputs", "chosen", "rejected")
COMPARISON_FLOAT_KEYS = ("label", "gold_pref")


@functools.cache
def _records(split: str) -> tuple[dict[str, str], ...]:
  return tuple(synthetic.generate(split))


@functools.cache
def _comparison_records(split: str, label_flip_rate: float,
                        per_document: int | None
                        ) -> tuple[dict[str, object], ...]:
  return tuple(synthetic.generate_comparisons(
      split, label_flip_rate=label_flip_rate, per_document=per_document))


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
  del shuffle_files, seed  # The pipeline orders examples itself.
  return registration.records_dataset(
      _records(split), keys=("inputs", "targets", "ideal"))


def _comparisons_dataset_fn(split: str, shuffle_files: bool,
                            seed: int | None = None, *,
                            label_flip_rate: float,
                            train_per_document: int):
  del shuffle_files, seed
  per_document = train_per_document if split == "train" else None
  return registration.records_dataset(
      _comparison_records(split, label_flip_rate, per_document),
      keys=COMPARISON_KEYS,
      float_keys=COMPARISON_FLOAT_KEYS)


def register_synthetic_tasks(
    *, name_prefix: str = "synthetic_facts",
    label_flip_rate: float = synthetic.LABEL_FLIP_RATE,
    train_comparisons_per_document: int = synthetic.COMPARISONS_PER_DOCUMENT[
        "train"]) -> tuple[str, ...]:
  """Registers `<name_prefix>_{sft,prompts,comparisons}`.

  Args:
    name_prefix: prefix of the task names.
    label_flip_rate: probability in [0, 0.5] that a comparison's annotator
      label is flipped after its draw from the gold oracle (extra noise).
    train_comparisons_per_document: comparisons per train document (default
      4: 32,768 pairs); more give a preference model fresh pairs instead of
      repeated passes (16: 131,072). The first 4 of each document stay the
      default ones; validation keeps its 2 per document.

  Returns:
    The registered task names.
  """
  synthetic.generate_comparisons("validation", 0,
                                 label_flip_rate=label_flip_rate)  # Checks.
  train_size, _ = synthetic.comparison_size(
      "train", train_comparisons_per_document)  # Checks.
  configured_by = "ipo_md_tasks.register_synthetic_tasks"
  source = seqio.FunctionDataSource(
      _dataset_fn, splits=SPLITS,
      num_input_examples={"train": synthetic.TRAIN_SIZE,
                          "validation": synthetic.VALIDATION_SIZE})
  names = (f"{name_prefix}_sft", f"{name_prefix}_prompts")
  for name, kind in zip(names, ("sft", "prompts")):
    registration.register_task(
        name, kind=kind, source=source, vocabulary=synthetic.vocabulary(),
        configured_by=configured_by)
  comparisons = f"{name_prefix}_comparisons"
  registration.register_task(
      comparisons, kind="pairs", vocabulary=synthetic.vocabulary(),
      source=seqio.FunctionDataSource(
          functools.partial(
              _comparisons_dataset_fn, label_flip_rate=float(label_flip_rate),
              train_per_document=train_comparisons_per_document),
          splits=SPLITS,
          num_input_examples={**synthetic.COMPARISON_SIZES,
                              "train": train_size}),
      configured_by=configured_by)
  return names + (comparisons,)
