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

`synthetic_facts_sft` (inputs, targets) and `synthetic_facts_prompts` (inputs,
with the noisy reference kept as targets and the perfect summary as the
string feature "ideal", for evaluation). Splits: train, validation. They need
no files and no network, and use the task's own word-level vocabulary.
"""

import functools

from ipo_md.data import registration
from ipo_md.data import synthetic
import seqio

SPLITS = ("train", "validation")


@functools.cache
def _records(split: str) -> tuple[dict[str, str], ...]:
  return tuple(synthetic.generate(split))


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
  del shuffle_files, seed  # The pipeline orders examples itself.
  return registration.records_dataset(
      _records(split), keys=("inputs", "targets", "ideal"))


def register_synthetic_tasks(*, name_prefix: str = "synthetic_facts"
                             ) -> tuple[str, ...]:
  """Registers `<name_prefix>_sft` and `<name_prefix>_prompts`.

  Returns:
    The registered task names.
  """
  source = seqio.FunctionDataSource(
      _dataset_fn, splits=SPLITS,
      num_input_examples={"train": synthetic.TRAIN_SIZE,
                          "validation": synthetic.VALIDATION_SIZE})
  names = (f"{name_prefix}_sft", f"{name_prefix}_prompts")
  for name, kind in zip(names, ("sft", "prompts")):
    registration.register_task(
        name, kind=kind, source=source, vocabulary=synthetic.vocabulary())
  return names
