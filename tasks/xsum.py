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

"""XSum tasks: `xsum_sft` and `xsum_prompts` (summary kept as "targets").

Inputs are `prefix + document` ("summarize: " by default, as T5 does); long
documents lose their end (see `ipo_md.data.feature_converters`).
"""

import functools

from ipo_md.data import preprocessors
from ipo_md.data import registration
from ipo_md.data import vocab
from ipo_md.data import xsum
import seqio


def _dataset_fn(split, shuffle_files, seed=None, *, data_dir, tfds_name):
  del shuffle_files, seed  # The pipeline orders examples itself.
  return xsum.load_split(split, data_dir=data_dir, tfds_name=tfds_name)


def register_xsum_tasks(
    *,
    data_dir: str | None = None,
    prefix: str = xsum.DEFAULT_PREFIX,
    vocabulary_path: str = vocab.DEFAULT_SPM_PATH,
    extra_ids: int = vocab.DEFAULT_EXTRA_IDS,
    tfds_name: str = xsum.TFDS_NAME,
    name_prefix: str = "xsum",
) -> tuple[str, ...]:
  """Registers `<name_prefix>_sft` and `<name_prefix>_prompts`.

  Args:
    data_dir: TFDS data folder holding the prepared XSum (None: TFDS's
      default, ~/tensorflow_datasets).
    prefix: prepended to every document.
    vocabulary_path: SentencePiece model of every feature.
    extra_ids: sentinel ids after the model's pieces (100 for T5).
    tfds_name: TFDS dataset and version.
    name_prefix: prefix of the task names.

  Returns:
    The registered task names.
  """
  source = seqio.FunctionDataSource(
      functools.partial(_dataset_fn, data_dir=data_dir, tfds_name=tfds_name),
      splits=xsum.SPLITS)
  text_preprocessors = (
      functools.partial(seqio.preprocessors.rekey,
                        key_map={"inputs": "document", "targets": "summary"}),
      functools.partial(preprocessors.prepend, feature="inputs",
                        prefix=prefix),
  )
  vocabulary = vocab.sentencepiece_vocabulary(vocabulary_path, extra_ids)
  names = (f"{name_prefix}_sft", f"{name_prefix}_prompts")
  for name, kind in zip(names, ("sft", "prompts")):
    registration.register_task(
        name, kind=kind, source=source, vocabulary=vocabulary,
        text_preprocessors=text_preprocessors,
        configured_by="ipo_md_tasks.register_xsum_tasks")
  return names
