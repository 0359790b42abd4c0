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

"""seqio preprocessors shared by the tasks of `ipo_md_tasks`.

Text preprocessors run before seqio's `tokenize`; `tokenize_segments` runs
after it and before `append_eos` (see `registration.register_task`).
"""

from collections.abc import Mapping

from ipo_md.data import feature_converters
import seqio
import tensorflow as tf

# The string features that `tokenize_segments` joins into one token feature.
HEAD, BODY, TAIL = "head", "body", "tail"


def segment_key(feature: str, segment: str) -> str:
  """E.g. "inputs_body": the string feature of one segment of `feature`."""
  return f"{feature}_{segment}"


def prepend(
    dataset: tf.data.Dataset, *, feature: str, prefix: str
) -> tf.data.Dataset:
  """Prepends `prefix` to a string feature (T5's task prefixes)."""

  def fn(example):
    example = dict(example)
    example[feature] = tf.strings.join([prefix, example[feature]])
    return example

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_segments(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    *,
    feature: str = "inputs",
) -> tf.data.Dataset:
  """Tokenizes `<feature>_{head,body,tail}` and concatenates them.

  Writes the tokens to `feature` and their body's [start, end) to
  `<feature>_body_span`, so that truncation shortens only the body (see
  `feature_converters`). The segments are tokenized separately; at whitespace
  boundaries this equals tokenizing the joined text with SentencePiece models
  that split on whitespace (T5's does; tested on the real TL;DR sample).

  Args:
    dataset: examples with the three string segments.
    output_features: the task's features; `feature` gives the vocabulary.
    feature: the token feature to write.

  Returns:
    The dataset, segments replaced by `feature` and its span.
  """
  vocabulary = output_features[feature].vocabulary
  keys = [segment_key(feature, s) for s in (HEAD, BODY, TAIL)]

  def fn(example):
    head, body, tail = (vocabulary.encode_tf(example[k]) for k in keys)
    out = {k: v for k, v in example.items() if k not in keys}
    out[feature] = tf.concat([head, body, tail], axis=0)
    start = tf.size(head)
    out[feature + feature_converters.BODY_SPAN_SUFFIX] = tf.stack(
        [start, start + tf.size(body)])
    return out

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
