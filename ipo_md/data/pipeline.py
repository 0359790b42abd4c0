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

"""seqio tasks -> deterministic, resumable, sharded numpy batches on the host.

How it works. `make_iterator` runs the task's seqio pipeline once, unshuffled,
and converts every example to fixed-shape arrays (`feature_converters`), held
in host memory (uint16 for vocabularies of up to 65,536 ids: about 2 bytes per
token, e.g. ~270 MB for the 117k TL;DR posts at 512 + 64 tokens). All ordering
is then index arithmetic on that array, which makes the guarantees exact:

* The examples form one endless stream: epoch e is the split permuted by
  `numpy.random.default_rng([seed, e])` (the identity when shuffle=False).
* Global batch k is stream positions [k * B, (k + 1) * B); host `shard_index`
  of `num_shards` takes the contiguous slice of B / num_shards rows at
  `shard_index * B / num_shards`. Shards are disjoint and together cover the
  global batch, and batch k depends only on (task, split, seed, k, shard).
* `position` counts the global batches consumed; an iterator created with
  `start_position=k` yields exactly what an uninterrupted one yields at step k,
  with O(1) work, even if the number of hosts changed in between.
* With repeat=False the stream stops after the last full global batch of
  one epoch (the remainder is dropped: batches keep fixed shapes). Use
  `load_batch` for a fixed set of evaluation examples.

Checks before training. `validate_config`, `task_kind` and `task_vocabulary`
read no example, so a run can check every stage's data (task, split, kind,
vocabulary size) in seconds before its first stage trains. Data problems
raise `errors.DataError`, whose message names the file, line or option to
fix; `BatchIterator.truncation_summary` gives the truncation rates as one
line for the console.
"""

from collections.abc import Iterator, Mapping
import dataclasses
import difflib

from absl import logging
from ipo_md.data import errors
from ipo_md.data import feature_converters
from ipo_md.data import registration
from ipo_md.data import vocab
import numpy as np
import seqio


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """What the trainer reads: one seqio task split as batches of one kind.

  Attributes:
    task: name of a registered seqio Task (e.g. "tldr_sft"; the tasks register
      on `import ipo_md_tasks`).
    split: the task's split, e.g. "train" or "validation".
    kind: "sft" | "pairs" | "prompts" (see `feature_converters`).
    batch_size: global batch size, examples per step over all hosts.
    feature_lengths: fixed token lengths including EOS, e.g. {"inputs": 512,
      "targets": 64}; for pairs "targets" is the length of chosen and
      rejected; for prompts "targets" is optional (references for eval).
    seed: seed of the per-epoch shuffles.
    shuffle: whether to permute each epoch.
    repeat: whether to loop over epochs forever.
    max_examples: if set, use only the first max_examples examples of the
      split (in source order), e.g. to keep a tiny run's start-up short.
  """

  task: str
  split: str = "train"
  kind: str
  batch_size: int
  feature_lengths: Mapping[str, int]
  seed: int = 0
  shuffle: bool = True
  repeat: bool = True
  max_examples: int | None = None

  def __post_init__(self):
    for name in ("task", "split"):
      value = getattr(self, name)
      if not isinstance(value, str) or not value:
        raise errors.DataError(
            f"DataConfig.{name}={value!r} must be a non-empty string.")
    feature_converters.validate_feature_lengths(self.kind, self.feature_lengths)
    object.__setattr__(self, "feature_lengths", dict(self.feature_lengths))
    _check_int("batch_size", self.batch_size, minimum=1)
    _check_int("seed", self.seed, minimum=0)
    if self.max_examples is not None:
      _check_int("max_examples", self.max_examples, minimum=1)


def _check_int(name: str, value, *, minimum: int):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise errors.DataError(f"DataConfig.{name}={value!r} must be an int.")
  if value < minimum:
    raise errors.DataError(f"DataConfig.{name}={value} must be >= {minimum}.")


def get_task(name: str) -> seqio.Task:
  """The registered seqio Task `name`, with errors that say how to fix it."""
  if name not in seqio.TaskRegistry.names():
    if name in seqio.MixtureRegistry.names():
      tasks = [t.name for t in seqio.get_mixture_or_task(name).tasks]
      raise errors.DataError(
          f"{name!r} is a seqio Mixture; the pipeline reads Tasks only (its "
          "order must be exact and resumable). Set DataConfig.task to one of "
          f"its tasks: {tasks}.")
    names = sorted(seqio.TaskRegistry.names())
    close = difflib.get_close_matches(str(name), names, n=1)
    raise errors.DataError(
        f"No seqio task named {name!r} is registered."
        + (f" Did you mean {close[0]!r}?" if close else "")
        + f" Registered: {names}. The ipo-md tasks register on "
        "`import ipo_md_tasks` (gin: `import ipo_md_tasks`)."
    )
  return seqio.TaskRegistry.get(name)


def task_kind(name: str) -> str:
  """The batch kind of task `name`: "sft", "pairs" or "prompts".

  Cheap (reads no example): the kind the task was registered with through
  `registration.register_task`, else inferred from its output features
  (chosen and rejected: pairs; a required targets: sft; else prompts). A
  task of kind sft also serves a prompts stage (see `kinds_served`).
  """
  kind = registration.registered_kind(name)
  if kind is not None:
    get_task(name)
    return kind
  features = get_task(name).output_features
  if {"chosen", "rejected"} <= set(features):
    return feature_converters.PAIRS
  targets = features.get("targets")
  if targets is not None and targets.required:
    return feature_converters.SFT
  return feature_converters.PROMPTS


def kinds_served(name: str) -> tuple[str, ...]:
  """The batch kinds a stage may read from task `name`: its own kind, plus
  prompts for any task (every task has inputs)."""
  kind = task_kind(name)
  return (kind,) if kind == feature_converters.PROMPTS else (
      kind, feature_converters.PROMPTS)


def task_vocabulary(name: str) -> seqio.Vocabulary:
  """The one vocabulary of task `name`'s token features, loaded and checked.

  Reads no example, only the vocabulary file (e.g. to check `vocab_size`
  against the model's before training).

  Raises:
    DataError: the features use several vocabularies, or the vocabulary file
      is missing or unreadable (the message names the file and the option).
  """
  task = get_task(name)
  vocabularies = {id(f.vocabulary): f.vocabulary
                  for f in task.output_features.values()}
  if len(vocabularies) != 1:
    raise errors.DataError(
        f"Task {name!r} uses {len(vocabularies)} vocabularies; ipo-md tasks "
        "use one vocabulary for every feature. Register it with one.")
  vocabulary = next(iter(vocabularies.values()))
  try:
    vocabulary.vocab_size  # pylint: disable=pointless-statement  # Loads it.
  except Exception as e:  # pylint: disable=broad-except  # tf, OSError, spm.
    raise errors.DataError(_vocabulary_message(name, vocabulary, e)) from None
  return vocabulary


def _vocabulary_message(name: str, vocabulary, error: Exception) -> str:
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
  where = registration.configured_by(name)
  option = (f"vocabulary_path of {where} (gin: {where}.vocabulary_path = "
            "'/path/to/sentencepiece.model'; `ipo-md data inspect`: "
            "--vocabulary_path=...)" if where else
            "the vocabulary of the task's registration")
  hint = (" The default T5 vocabulary is on Google Cloud Storage and needs "
          "network access; copy it once (gsutil cp "
          f"{vocab.DEFAULT_SPM_PATH} .) and point at the copy."
          if str(path).startswith("gs://") else "")
  return (f"Task {name!r}: cannot read its vocabulary {path or vocabulary} "
          f"({type(error).__name__}: {first_line[:300]}). Set {option}."
          + hint)


def validate_config(cfg: DataConfig, *, vocab_size: int | None = None
                    ) -> seqio.Vocabulary:
  """Checks `cfg` against its task without reading any example.

  For a run's validation before its first stage trains: the task exists, has
  the split, provides the features of `cfg.kind`, and its vocabulary loads
  and fits a model of `vocab_size` ids.

  Args:
    cfg: the data configuration of a stage or of its evaluation.
    vocab_size: the model's vocabulary size (embedding rows), if known.

  Returns:
    The task's vocabulary.

  Raises:
    DataError: naming what does not fit and how to fix it.
  """
  task = get_task(cfg.task)
  if cfg.split not in task.splits:
    raise errors.DataError(
        f"Task {cfg.task!r} has no split {cfg.split!r}; it has "
        f"{tuple(task.splits)}. Set DataConfig.split to one of them.")
  feature_converters.batch_lengths(cfg.kind, cfg.feature_lengths,
                                   task.output_features, cfg.task)
  vocabulary = task_vocabulary(cfg.task)
  if vocab_size is not None and vocabulary.vocab_size > vocab_size:
    raise errors.DataError(
        f"Task {cfg.task!r} has a vocabulary of {vocabulary.vocab_size} ids "
        f"but the model embeds only vocab_size={vocab_size}: token ids past "
        f"{vocab_size - 1} would index no embedding. Set the model's "
        f"VOCAB_SIZE to at least {vocabulary.vocab_size} (a multiple of 128 "
        "shards well), or use a task with the model's vocabulary.")
  return vocabulary


def task_examples(
    task: str, split: str, *, limit: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """Tokenized examples of a task split, in source order, untruncated.

  Args:
    task: a registered task name.
    split: one of its splits.
    limit: read at most this many examples.

  Returns:
    An iterator of numpy examples (feature -> [n] ids, plus any extra
    features of the task such as "targets_pretokenized").
  """
  task_obj = get_task(task)
  if split not in task_obj.splits:
    raise errors.DataError(
        f"Task {task!r} has no split {split!r}; it has "
        f"{tuple(task_obj.splits)}."
    )
  try:
    ds = task_obj.get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1,
        use_cached=False, try_in_mem_cache=False)
  except errors.DataError:
    raise
  except Exception:  # pylint: disable=broad-except
    # Tokenizers load while seqio builds the pipeline: name a bad vocabulary
    # file clearly; anything else is not a data problem, so re-raise it.
    task_vocabulary(task)
    raise
  if limit is not None:
    ds = ds.take(limit)
  return _unbatch(ds.ragged_batch(_READ_BATCH).as_numpy_iterator())


# Examples per tf.data batch when reading a task: batches of ragged rows cost
# a fraction of tf.data's per-element overhead (2x faster on 2 CPU cores).
_READ_BATCH = 512


def _unbatch(batches) -> Iterator[dict[str, np.ndarray]]:
  for batch in batches:
    size = len(next(iter(batch.values())))
    for i in range(size):
      yield {k: v[i] for k, v in batch.items()}


def convert_task(cfg: DataConfig, *, limit: int | None = None
                 ) -> feature_converters.ConvertedExamples:
  """The split of `cfg` (or its first `limit` examples) as fixed arrays."""
  task = get_task(cfg.task)
  lengths = feature_converters.batch_lengths(
      cfg.kind, cfg.feature_lengths, task.output_features, cfg.task)
  if cfg.max_examples is not None:
    limit = cfg.max_examples if limit is None else min(limit, cfg.max_examples)
  # Reads (and validates) the data before the vocabulary loads, so a missing
  # file is reported before a missing vocabulary.
  tokenized = task_examples(cfg.task, cfg.split, limit=limit)
  vocabularies = [task.output_features[f].vocabulary for f in lengths]
  eos_ids = {v.eos_id for v in vocabularies}
  if len(eos_ids) != 1:
    raise errors.DataError(
        f"Task {cfg.task!r}: features {sorted(lengths)} use vocabularies with "
        f"different EOS ids {sorted(eos_ids)}; use one vocabulary.")
  max_vocab = max(v.vocab_size for v in vocabularies)
  description = f"{cfg.task}:{cfg.split}"
  examples = feature_converters.convert_examples(
      tokenized, lengths, eos_id=eos_ids.pop(),
      dtype=np.uint16 if max_vocab <= 2**16 else np.int32,
      description=description,
      scalars=feature_converters.SCALARS[cfg.kind])
  if examples.num_examples == 0:
    raise errors.DataError(
        f"{description} has no examples; check the task's data files and "
        f"its split {cfg.split!r}.")
  logging.info("%s", examples.truncation_summary(description))
  return examples


def load_batch(cfg: DataConfig, num_examples: int) -> dict[str, np.ndarray]:
  """The first `num_examples` examples of the split, in source order.

  For fixed held-out sets (e.g. evaluation prompts): ignores batch_size,
  seed, shuffle and repeat, and never shards.

  Returns:
    feature -> int32 [num_examples, length] tokens, and float32
    [num_examples] for the scalar features of pairs ("label", ...).
  """
  examples = convert_task(cfg, limit=num_examples)
  if examples.num_examples < num_examples:
    raise errors.DataError(
        f"{cfg.task}:{cfg.split} has only {examples.num_examples} examples; "
        f"num_examples={num_examples} asks for more. Lower it.")
  return {**{f: a.astype(np.int32) for f, a in examples.arrays.items()},
          **examples.scalars}


def make_iterator(
    cfg: DataConfig,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    start_position: int = 0,
) -> "BatchIterator":
  """A resumable iterator of this host's batches (see the module docstring).

  Args:
    cfg: the data configuration.
    shard_index: this host's index, usually `jax.process_index()`.
    num_shards: number of hosts, usually `jax.process_count()`.
    start_position: global batches already consumed (a checkpointed
      `BatchIterator.position`).

  Returns:
    The iterator; bad files or lengths raise here, not mid-training.
  """
  _check_sharding(cfg.batch_size, shard_index, num_shards, start_position)
  return BatchIterator(
      convert_task(cfg), batch_size=cfg.batch_size, seed=cfg.seed,
      shuffle=cfg.shuffle, repeat=cfg.repeat, shard_index=shard_index,
      num_shards=num_shards, start_position=start_position,
      description=f"{cfg.task}:{cfg.split}")


def _check_sharding(batch_size, shard_index, num_shards, start_position):
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise errors.DataError(
        f"shard_index={shard_index} must be in [0, num_shards={num_shards}).")
  if batch_size % num_shards:
    raise errors.DataError(
        f"batch_size={batch_size} must be divisible by num_shards="
        f"{num_shards}; set DataConfig.batch_size to a multiple of "
        f"{num_shards}.")
  if start_position < 0:
    raise errors.DataError(f"start_position={start_position} must be >= 0.")


class BatchIterator:
  """Iterator of this host's batches; deterministic and resumable.

  Attributes:
    position: global batches consumed so far (start_position + batches
      yielded); checkpoint it and pass it back as `start_position`.
    truncation: feature -> number of truncated examples among those this
      iterator has yielded (for logging).
    split_truncation: feature -> number of truncated examples in the split.
  """

  def __init__(
      self,
      examples: feature_converters.ConvertedExamples,
      *,
      batch_size: int,
      seed: int,
      shuffle: bool,
      repeat: bool,
      shard_index: int = 0,
      num_shards: int = 1,
      start_position: int = 0,
      description: str = "examples",
  ):
    _check_sharding(batch_size, shard_index, num_shards, start_position)
    self._num_examples = examples.num_examples
    if self._num_examples == 0:
      raise errors.DataError(
          f"{description} has no examples; check the task's data files.")
    if not repeat and self._num_examples < batch_size:
      raise errors.DataError(
          f"{description} has {self._num_examples} examples, fewer than one "
          f"global batch of {batch_size}; lower batch_size or set repeat=True.")
    self._examples = examples
    self._batch_size = batch_size
    self._host_batch_size = batch_size // num_shards
    self._offset = shard_index * self._host_batch_size
    self._seed, self._shuffle, self._repeat = seed, shuffle, repeat
    self._permutations: dict[int, np.ndarray] = {}
    self.position = start_position
    self.truncation = {f: 0 for f in examples.truncated}
    self.split_truncation = {
        f: int(v.sum()) for f, v in examples.truncated.items()}
    self._description = description

  @property
  def num_examples(self) -> int:
    """Examples in the split (one epoch)."""
    return self._num_examples

  @property
  def num_batches(self) -> int | None:
    """Global batches per pass when repeat=False; None when endless."""
    return None if self._repeat else self._num_examples // self._batch_size

  def truncation_summary(self) -> str:
    """One line on the truncation of the split, for the console when a stage
    starts, e.g. "tldr_sft:train: inputs truncated in 7.1% of 116722
    examples (512 tokens), targets in 0.0% (64 tokens)"."""
    return self._examples.truncation_summary(self._description)

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if not self._repeat and self.position >= self.num_batches:
      raise StopIteration
    rows = self.example_indices(self.position)
    batch = {f: a[rows].astype(np.int32)
             for f, a in self._examples.arrays.items()}
    batch.update({f: v[rows] for f, v in self._examples.scalars.items()})
    for f, flags in self._examples.truncated.items():
      self.truncation[f] += int(flags[rows].sum())
    self.position += 1
    return batch

  def example_indices(self, position: int) -> np.ndarray:
    """[host batch] indices into the split of this host's rows of batch k."""
    stream = (position * self._batch_size + self._offset
              + np.arange(self._host_batch_size))
    epochs, within = np.divmod(stream, self._num_examples)
    if not self._shuffle:
      return within
    rows = np.empty_like(within)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      rows[mask] = self._permutation(int(epoch))[within[mask]]
    return rows

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      # Consecutive batches touch at most two epochs when the split holds at
      # least one global batch; keep those two.
      if len(self._permutations) >= 2:
        self._permutations.pop(min(self._permutations))
      rng = np.random.default_rng([self._seed, epoch])
      self._permutations[epoch] = rng.permutation(self._num_examples)
    return self._permutations[epoch]
