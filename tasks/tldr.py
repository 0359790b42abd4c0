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

"""Reddit TL;DR tasks: SFT, prompts (online methods) and comparisons (pairs).

* `tldr_sft`: OpenAI's prompt -> the human summary.
* `tldr_prompts`: the same prompts, with the human summary kept as "targets"
  for evaluation.
* `tldr_comparisons`: prompt -> (chosen, rejected) from the human comparisons,
  split by their "split" field (`tldr.COMPARISON_SPLITS`). The human choice
  is a hard label, so pair batches carry label = 1.0 (p(chosen > rejected));
  `min_confidence` keeps only confident choices rather than softening them.
  A split that keeps no line is an error naming the "split" values found.

The files are read when a task is used, not when it is registered, so the
registration needs no data; the locations come from `register_tldr_tasks`.
"""

import functools

from ipo_md.data import jsonl
from ipo_md.data import preprocessors
from ipo_md.data import registration
from ipo_md.data import tldr
from ipo_md.data import vocab
import seqio


def _sft_dataset_fn(split, shuffle_files, seed=None, *, sft_dir, files,
                    on_bad_example):
  del shuffle_files, seed  # The pipeline orders examples itself.
  records = tldr.read_sft(tldr.sft_path(sft_dir, files, split),
                          on_bad_example=on_bad_example)
  return registration.records_dataset(records, tldr.SFT_KEYS)


def _comparisons_dataset_fn(split, shuffle_files, seed=None, *,
                            comparisons_dir, pattern, splits, min_confidence,
                            on_bad_example):
  del shuffle_files, seed
  records = tldr.read_comparisons(
      tldr.comparison_paths(comparisons_dir, pattern), splits=splits[split],
      min_confidence=min_confidence, on_bad_example=on_bad_example,
      seqio_split=split)
  return registration.records_dataset(records, tldr.COMPARISON_KEYS)


def register_tldr_tasks(
    *,
    sft_dir: str | None = None,
    comparisons_dir: str | None = None,
    vocabulary_path: str = vocab.DEFAULT_SPM_PATH,
    extra_ids: int = vocab.DEFAULT_EXTRA_IDS,
    sft_files: dict[str, str] | None = None,
    comparison_files: str = tldr.COMPARISON_FILES,
    comparison_splits: dict[str, tuple[str, ...]] | None = None,
    min_confidence: int | None = None,
    on_bad_example: str = jsonl.RAISE,
    name_prefix: str = "tldr",
) -> tuple[str, ...]:
  """Registers `<name_prefix>_{sft,prompts,comparisons}`.

  Args:
    sft_dir: folder (local or gs://) of OpenAI's filtered TL;DR files.
    comparisons_dir: folder of the summarize-from-feedback comparisons.
    vocabulary_path: SentencePiece model of every feature.
    extra_ids: sentinel ids after the model's pieces (100 for T5).
    sft_files: seqio split -> file under sft_dir (default `tldr.SFT_FILES`).
    comparison_files: glob of the comparison files under comparisons_dir.
    comparison_splits: seqio split -> values of the comparisons' "split"
      field (default `tldr.COMPARISON_SPLITS`).
    min_confidence: keep only comparisons with extra.confidence >= it.
    on_bad_example: "raise" (default) or "skip" for bad JSON lines.
    name_prefix: prefix of the task names.

  Returns:
    The registered task names.
  """
  jsonl.check_on_bad_example(on_bad_example)
  sft_files = dict(sft_files or tldr.SFT_FILES)
  comparison_splits = {k: tuple(v) for k, v in
                       (comparison_splits or tldr.COMPARISON_SPLITS).items()}
  vocabulary = vocab.sentencepiece_vocabulary(vocabulary_path, extra_ids)
  sft_source = seqio.FunctionDataSource(
      functools.partial(_sft_dataset_fn, sft_dir=sft_dir, files=sft_files,
                        on_bad_example=on_bad_example),
      splits=tuple(sft_files))
  comparisons_source = seqio.FunctionDataSource(
      functools.partial(
          _comparisons_dataset_fn, comparisons_dir=comparisons_dir,
          pattern=comparison_files, splits=comparison_splits,
          min_confidence=min_confidence, on_bad_example=on_bad_example),
      splits=tuple(comparison_splits))
  names = {kind: f"{name_prefix}_{suffix}" for kind, suffix in
           (("sft", "sft"), ("prompts", "prompts"), ("pairs", "comparisons"))}
  for kind, name in names.items():
    registration.register_task(
        name, kind=kind, vocabulary=vocabulary,
        source=comparisons_source if kind == "pairs" else sft_source,
        token_preprocessors=(preprocessors.tokenize_segments,),
        configured_by="ipo_md_tasks.register_tldr_tasks")
  return tuple(names.values())
