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

"""Readers of OpenAI's Reddit TL;DR data (Stiennon et al. 2020).

Two sources, both JSON lines:

* the filtered TL;DR posts, `tldr_3_filtered/{train,valid,test}.jsonl`, one
  `{"id", "subreddit", "title", "post", "summary"}` per line (summaries start
  with a space);
* the human comparisons, `comparisons/*.json`, one line per judgement:
  `{"info": {"id", "post", "title", "subreddit"}, "summaries": [{"text",
  "policy", "note"}, {...}], "choice": 0|1, "worker", "batch", "split":
  "train"|"valid1"|"valid2", "extra": {"confidence"}}`. Lines about CNN/DM
  articles (`info.article`, no post) are left out.

Prompts use OpenAI's format, `PROMPT_FORMAT`. Records carry the prompt as three
segments (head, the post as body, tail) so that truncation can shorten the
post at token level and keep "TL;DR:" (see `feature_converters`), plus the
whole prompt text as "inputs_pretokenized".
"""

import collections
from collections.abc import Collection, Mapping, Sequence
import os
from typing import Any

from absl import logging
from ipo_md.data import errors
from ipo_md.data import jsonl
from ipo_md.data import preprocessors
import tensorflow as tf

PROMPT_FORMAT = (
    "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:")
_HEAD_FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST:"
_TAIL = "\n\nTL;DR:"

_URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback"
SFT_URL = f"{_URL}/datasets/tldr_3_filtered/{{train,valid,test}}.jsonl"
COMPARISONS_URL = f"{_URL}/dataset/comparisons/"

# seqio split -> file under the SFT folder (OpenAI's names).
SFT_FILES = {"train": "train.jsonl", "validation": "valid.jsonl",
             "test": "test.jsonl"}
# seqio split -> values of the comparisons' "split" field.
COMPARISON_SPLITS = {"train": ("train",), "validation": ("valid1",),
                     "test": ("valid2",)}
# Files read under the comparisons folder (a tf.io.gfile glob).
COMPARISON_FILES = "*.json"

_INPUT_KEYS = tuple(
    preprocessors.segment_key("inputs", s)
    for s in (preprocessors.HEAD, preprocessors.BODY, preprocessors.TAIL))
# String features of the records, for `registration.records_dataset`.
SFT_KEYS = ("id", *_INPUT_KEYS, "inputs_pretokenized", "targets")
COMPARISON_KEYS = ("id", *_INPUT_KEYS, "inputs_pretokenized", "chosen",
                   "rejected")


def format_prompt(subreddit: str, title: str, post: str) -> str:
  """OpenAI's TL;DR prompt for one post."""
  return PROMPT_FORMAT.format(subreddit=subreddit, title=title, post=post)


def prompt_record(subreddit: str, title: str, post: str) -> dict[str, str]:
  """The prompt as head / body (the post) / tail segments, plus its text.

  head + " " + body + tail == format_prompt(subreddit, title, post).
  """
  head = _HEAD_FORMAT.format(subreddit=subreddit, title=title)
  return dict(zip(_INPUT_KEYS, (head, post, _TAIL)),
              inputs_pretokenized=format_prompt(subreddit, title, post))


def _parse_sft(obj: Mapping[str, Any]) -> dict[str, str]:
  fields = {f: jsonl.get_text(obj, f)
            for f in ("subreddit", "title", "post", "summary")}
  return {"id": str(obj.get("id", "")),
          **prompt_record(fields["subreddit"], fields["title"], fields["post"]),
          "targets": fields["summary"]}


def read_sft(path: str, *, on_bad_example: str = jsonl.RAISE
             ) -> list[dict[str, str]]:
  """Records (SFT_KEYS) of one filtered TL;DR file, validated eagerly."""
  return jsonl.read_records(
      path, _parse_sft, on_bad_example=on_bad_example,
      missing_hint=f"Download OpenAI's filtered TL;DR files from {SFT_URL}.")


def sft_path(sft_dir: str | None, files: Mapping[str, str], split: str) -> str:
  """The SFT file of `split`; errors say how to configure the location."""
  if not sft_dir:
    raise errors.DataError(
        "The TL;DR SFT folder is not set. Download the files from "
        f"{SFT_URL}, then call ipo_md_tasks.register_tldr_tasks(sft_dir=DIR) "
        "(gin: `ipo_md_tasks.register_tldr_tasks.sft_dir = 'DIR'`; "
        "`ipo-md data inspect`: --tldr_sft_dir=DIR).")
  if split not in files:
    raise errors.DataError(f"No TL;DR SFT file for split {split!r}; sft_files="
                     f"{dict(files)} maps splits to files.")
  return os.path.join(sft_dir, files[split])


def comparison_paths(comparisons_dir: str | None,
                     pattern: str = COMPARISON_FILES) -> list[str]:
  """The comparison files; errors say how to configure the location."""
  if not comparisons_dir:
    raise errors.DataError(
        "The TL;DR comparisons folder is not set. Download the files from "
        f"{COMPARISONS_URL}, then call ipo_md_tasks.register_tldr_tasks("
        "comparisons_dir=DIR) (gin: `ipo_md_tasks.register_tldr_tasks."
        "comparisons_dir = 'DIR'`; `ipo-md data inspect`: "
        "--tldr_comparisons_dir=DIR).")
  paths = sorted(tf.io.gfile.glob(os.path.join(comparisons_dir, pattern)))
  if not paths:
    raise errors.MissingDataError(
        f"No TL;DR comparison files match {pattern!r} in {comparisons_dir}; "
        f"download them from {COMPARISONS_URL} or fix comparison_files.")
  return paths


def read_comparisons(
    paths: Sequence[str],
    *,
    splits: Collection[str],
    min_confidence: int | None = None,
    on_bad_example: str = jsonl.RAISE,
    seqio_split: str | None = None,
) -> list[dict[str, str]]:
  """Records (COMPARISON_KEYS) of the comparisons whose "split" is in `splits`.

  Every line of every file is validated, whatever its split.

  Args:
    paths: comparison files (JSON lines).
    splits: values of the "split" field to keep, e.g. ("train",).
    min_confidence: if set, keep only lines with extra.confidence >= it
      (OpenAI's 1-9 scale; lines without a confidence are left out).
    on_bad_example: "raise" or "skip".
    seqio_split: the task split being read, for the error message.

  Returns:
    {"id", inputs segments, "inputs_pretokenized", "chosen", "rejected"}
    records, "chosen" being summaries[choice].

  Raises:
    DataError: no line is kept (the message names the "split" values found
      and how to map them).
  """
  parser = _ComparisonParser(splits, min_confidence)
  records = []
  for path in paths:
    records += jsonl.read_records(path, parser, on_bad_example=on_bad_example)
  if parser.num_cnndm:
    logging.info("Left out %d CNN/DM comparisons (no Reddit post) of %s.",
                 parser.num_cnndm, paths)
  if not records:
    raise errors.DataError(_no_comparisons_message(
        paths, splits, min_confidence, parser, seqio_split))
  return records


def _no_comparisons_message(paths, splits, min_confidence, parser,
                            seqio_split) -> str:
  found = dict(sorted(parser.split_counts.items()))
  where = f"{len(paths)} file(s) ({', '.join(paths[:3])}"
  where += ", ...)" if len(paths) > 3 else ")"
  task_split = (f"split {seqio_split!r}" if seqio_split
                else "the requested split")
  wanted = sorted(splits)
  if any(v in found for v in wanted) and min_confidence is not None:
    return (
        f"No TL;DR comparison for {task_split} in {where}: the "
        f"{sum(found.get(v, 0) for v in wanted)} lines with split in "
        f"{wanted} all have extra.confidence below min_confidence="
        f"{min_confidence} (or none). Lower min_confidence or set it to None "
        "(gin: ipo_md_tasks.register_tldr_tasks.min_confidence = None).")
  example = {seqio_split or "train": tuple(found)[:1] or ("...",)}
  return (
      f"No TL;DR comparison for {task_split} in {where}: it keeps lines "
      f"whose \"split\" field is in {wanted}, and the files have the split "
      f"values {found} (lines per value). Map the task splits to the values "
      f"of your files with comparison_splits (default {COMPARISON_SPLITS}), "
      f"e.g. gin: ipo_md_tasks.register_tldr_tasks.comparison_splits = "
      f"{example}.")


class _ComparisonParser:
  """Parses a comparisons line into a record, or None if it is not wanted."""

  def __init__(self, splits: Collection[str], min_confidence: int | None):
    self.splits = set(splits)
    self.min_confidence = min_confidence
    self.num_cnndm = 0
    self.split_counts: collections.Counter[str] = collections.Counter()

  def __call__(self, obj: Mapping[str, Any]) -> dict[str, str] | None:
    info = jsonl.get_field(obj, "info")
    if isinstance(info, Mapping) and "article" in info and "post" not in info:
      self.num_cnndm += 1
      return None
    prompt = prompt_record(*(jsonl.get_text(obj, f"info.{f}")
                             for f in ("subreddit", "title", "post")))
    texts = _summary_texts(obj)
    choice = jsonl.get_field(obj, "choice")
    if isinstance(choice, bool) or choice not in (0, 1):
      raise jsonl.BadRecordError(
          "choice", f"is {choice!r}, not 0 or 1 (the index of the preferred "
          "summary)")
    split = jsonl.get_text(obj, "split")
    self.split_counts[split] += 1
    if split not in self.splits or not self._confident(obj):
      return None
    return {"id": str(info.get("id", "")), **prompt,
            "chosen": texts[choice], "rejected": texts[1 - choice]}

  def _confident(self, obj: Mapping[str, Any]) -> bool:
    if self.min_confidence is None:
      return True
    extra = obj.get("extra")
    confidence = extra.get("confidence") if isinstance(extra, Mapping) else None
    return isinstance(confidence, int) and confidence >= self.min_confidence


def _summary_texts(obj: Mapping[str, Any]) -> list[str]:
  summaries = jsonl.get_field(obj, "summaries")
  if not isinstance(summaries, list) or len(summaries) != 2:
    size = len(summaries) if isinstance(summaries, list) else "no"
    raise jsonl.BadRecordError(
        "summaries", f"has {size} entries; it must be a list of 2 objects")
  texts = []
  for i, summary in enumerate(summaries):
    field = f"summaries[{i}].text"
    if not isinstance(summary, Mapping) or "text" not in summary:
      raise jsonl.BadRecordError(field, "is missing")
    texts.append(jsonl.check_text(summary["text"], field))
  return texts
