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

"""Builds and (re-)registers seqio Tasks of the three batch kinds.

Every task of `ipo_md_tasks` goes through `register_task`, so they all share
one feature layout per kind and one preprocessing order:
text preprocessors -> seqio `tokenize` -> token preprocessors -> `append_eos`.
Registering a name again replaces the task, which is how gin files and the CLI
point a task at new data locations.
"""

from collections.abc import Callable, Mapping, Sequence

from ipo_md.data import errors
from ipo_md.data import feature_converters
import seqio
import tensorflow as tf

Preprocessor = Callable[..., tf.data.Dataset]

# Task name -> (the Task object, its batch kind, the function users configure
# it with, for messages that name the option), filled by `register_task`;
# an entry counts only while that very Task is the registered one.
_REGISTERED: dict[str, tuple[seqio.Task, str, str | None]] = {}


def output_features(
    kind: str, vocabulary: seqio.Vocabulary
) -> dict[str, seqio.Feature]:
  """The seqio output features of a task of batch kind `kind`.

  sft: inputs, targets. pairs: inputs, chosen, rejected. prompts: inputs and,
  optionally, targets (references for evaluation). All get EOS.
  """
  if kind not in feature_converters.KINDS:
    raise errors.DataError(
        f"kind={kind!r} is not a batch kind; choose one of "
        f"{feature_converters.KINDS}.")
  names = {
      feature_converters.SFT: ("inputs", "targets"),
      feature_converters.PAIRS: ("inputs", "chosen", "rejected"),
      feature_converters.PROMPTS: ("inputs", "targets"),
  }[kind]
  return {
      name: seqio.Feature(
          vocabulary, add_eos=True,
          required=not (kind == feature_converters.PROMPTS and
                        name == "targets"))
      for name in names
  }


def register_task(
    name: str,
    *,
    kind: str,
    source: seqio.DataSource,
    vocabulary: seqio.Vocabulary,
    text_preprocessors: Sequence[Preprocessor] = (),
    token_preprocessors: Sequence[Preprocessor] = (),
    configured_by: str | None = None,
) -> seqio.Task:
  """Registers (or replaces) seqio task `name`.

  Args:
    name: the task name.
    kind: its batch kind, which fixes its output features.
    source: the raw examples.
    vocabulary: the vocabulary of every output feature.
    text_preprocessors: string -> string steps, before tokenization.
    token_preprocessors: steps after tokenization and before EOS, e.g.
      `preprocessors.tokenize_segments`.
    configured_by: the registration function users configure, e.g.
      "ipo_md_tasks.register_tldr_tasks"; errors name it.

  Returns:
    The registered task.
  """
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=output_features(kind, vocabulary),
      preprocessors=[
          *text_preprocessors,
          seqio.preprocessors.tokenize,
          *token_preprocessors,
          seqio.preprocessors.append_eos,
      ],
  )
  _REGISTERED[name] = (task, kind, configured_by)
  return task


def _entry(name: str) -> tuple[seqio.Task, str, str | None] | None:
  entry = _REGISTERED.get(name)
  if entry is None or name not in seqio.TaskRegistry.names():
    return None
  return entry if seqio.TaskRegistry.get(name) is entry[0] else None


def registered_kind(name: str) -> str | None:
  """The batch kind task `name` was registered with here, or None."""
  entry = _entry(name)
  return None if entry is None else entry[1]


def configured_by(name: str) -> str | None:
  """The registration function that configures task `name`, or None."""
  entry = _entry(name)
  return None if entry is None else entry[2]


def records_dataset(
    records: Sequence[Mapping[str, object]],
    keys: Sequence[str],
    float_keys: Sequence[str] = (),
) -> tf.data.Dataset:
  """A dataset of in-memory records, in order.

  Args:
    records: one mapping per example.
    keys: string features (texts).
    float_keys: float32 scalar features, e.g. the soft label of a pair.

  Returns:
    The dataset of those features.
  """
  features = {k: tf.constant([r[k] for r in records], dtype=tf.string)
              for k in keys}
  features.update({k: tf.constant([r[k] for r in records], dtype=tf.float32)
                   for k in float_keys})
  return tf.data.Dataset.from_tensor_slices(features)
