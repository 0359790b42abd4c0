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

"""The SentencePiece vocabulary of the T5 tasks, with a configurable path.

Users of public T5 checkpoints expect the `cc_all.32000` model with 100 extra
ids (vocabulary size 32,100). The path is a function argument, so gin files
(through the task registration functions of `ipo_md_tasks`) and tests can point
elsewhere: a local copy, a bucket, or a tiny model trained for tests.
"""

import functools

from ipo_md.data import errors
import seqio

# The public T5 vocabulary (`t5.data.DEFAULT_SPM_PATH`).
DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
# T5 checkpoints reserve 100 sentinel ids after the 32,000 pieces.
DEFAULT_EXTRA_IDS = 100


@functools.cache
def sentencepiece_vocabulary(
    path: str = DEFAULT_SPM_PATH, extra_ids: int = DEFAULT_EXTRA_IDS
) -> seqio.SentencePieceVocabulary:
  """A seqio SentencePiece vocabulary, shared by every task that names it.

  The model file is read lazily (on first encode or decode), so registering a
  task with a `gs://` path needs no network until the task is used.

  Args:
    path: local, `gs://` or any `tf.io.gfile` path of a SentencePiece model.
    extra_ids: number of sentinel ids appended after the model's pieces.

  Returns:
    The vocabulary; the same object for the same arguments.
  """
  if not isinstance(path, str) or not path:
    raise errors.DataError(
        f"vocabulary path={path!r} must be a non-empty string, e.g. "
        f"{DEFAULT_SPM_PATH!r} or a local copy of that file."
    )
  if extra_ids < 0:
    raise errors.DataError(
        f"extra_ids={extra_ids} must be >= 0 ({DEFAULT_EXTRA_IDS} for T5 "
        "checkpoints)."
    )
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)

