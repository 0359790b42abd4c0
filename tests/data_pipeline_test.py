"""Tests of ipo_md.data.pipeline: determinism, resumption, sharding, configs."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
from ipo_md.data import errors
from ipo_md.data import feature_converters
from ipo_md.data import pipeline
from ipo_md.data import registration
from ipo_md.data import vocab
import numpy as np
import seqio

from tests.testdata import make_testdata

TASK = "test_pipeline_sft"
NUM_EXAMPLES = 24


def _examples(num_examples: int) -> feature_converters.ConvertedExamples:
  """Row i holds the id i + 2 (0 is padding), so batches reveal indices."""
  ids = np.arange(num_examples, dtype=np.int32)[:, None] + 2
  return feature_converters.ConvertedExamples(
      arrays={"inputs": np.concatenate([ids, ids], axis=1)},
      truncated={"inputs": ids[:, 0] % 3 == 0},
  )


def _rows(it, num_batches) -> list[list[int]]:
  return [list(next(it)["inputs"][:, 0] - 2) for _ in range(num_batches)]


def _iterator(num_examples=10, batch_size=4, seed=0, shuffle=True,
              repeat=True, **kwargs):
  return pipeline.BatchIterator(
      _examples(num_examples), batch_size=batch_size, seed=seed,
      shuffle=shuffle, repeat=repeat, **kwargs)


class BatchIteratorTest(parameterized.TestCase):

  @parameterized.product(shuffle=(True, False), num_shards=(1, 2, 4),
                         start=(1, 2, 7))
  def test_resumed_equals_uninterrupted(self, shuffle, num_shards, start):
    for shard in range(num_shards):
      full = _iterator(batch_size=4, shuffle=shuffle, shard_index=shard,
                       num_shards=num_shards)
      expected = _rows(full, start + 5)[start:]
      resumed = _iterator(batch_size=4, shuffle=shuffle, shard_index=shard,
                          num_shards=num_shards, start_position=start)
      self.assertEqual(_rows(resumed, 5), expected)
      self.assertEqual(resumed.position, start + 5)

  @parameterized.parameters(1, 2, 3, 6)
  def test_shards_are_disjoint_and_cover_the_global_batch(self, num_shards):
    # 5 global batches of 6 over 12 examples: 2.5 epochs.
    global_it = _iterator(num_examples=12, batch_size=6)
    shards = [_iterator(num_examples=12, batch_size=6, shard_index=i,
                        num_shards=num_shards) for i in range(num_shards)]
    for _ in range(5):
      expected = sorted(next(global_it)["inputs"][:, 0])
      got = sorted(itertools.chain.from_iterable(
          next(s)["inputs"][:, 0] for s in shards))
      self.assertEqual(got, expected)

  def test_every_epoch_is_a_permutation_and_epochs_differ(self):
    rows = np.concatenate(_rows(_iterator(num_examples=12, batch_size=4), 9))
    epochs = rows.reshape(3, 12)
    for epoch in epochs:
      self.assertCountEqual(epoch, range(12))
    self.assertFalse(np.array_equal(epochs[0], epochs[1]))
    self.assertFalse(np.array_equal(epochs[1], epochs[2]))

  def test_seeds(self):
    rows = lambda seed: _rows(_iterator(num_examples=24, seed=seed), 6)
    self.assertEqual(rows(3), rows(3))
    self.assertNotEqual(rows(3), rows(4))

  def test_no_shuffle_keeps_source_order_across_epochs(self):
    rows = np.concatenate(_rows(_iterator(num_examples=6, batch_size=4,
                                          shuffle=False), 3))
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 5] * 2)

  def test_no_repeat_stops_after_full_batches(self):
    it = _iterator(num_examples=10, batch_size=4, repeat=False, shuffle=False)
    self.assertEqual(it.num_batches, 2)
    self.assertEqual([r for r in _rows(it, 2)], [[0, 1, 2, 3], [4, 5, 6, 7]])
    with self.assertRaises(StopIteration):
      next(it)

  def test_batches_are_int32(self):
    batch = next(_iterator())
    self.assertEqual(batch["inputs"].dtype, np.int32)
    self.assertEqual(batch["inputs"].shape, (4, 2))

  def test_truncation_counts_yielded_examples(self):
    it = _iterator(num_examples=12, batch_size=12, shuffle=False)
    self.assertEqual(it.split_truncation, {"inputs": 4})
    self.assertEqual(it.truncation, {"inputs": 0})
    next(it)
    next(it)
    self.assertEqual(it.truncation, {"inputs": 8})

  @parameterized.named_parameters(
      ("indivisible", dict(batch_size=6, num_shards=4), "divisible by"),
      ("bad_shard", dict(shard_index=2, num_shards=2), "shard_index=2"),
      ("negative_start", dict(start_position=-1), "start_position"),
      ("too_few_examples", dict(num_examples=3, repeat=False), "fewer than"),
  )
  def test_bad_arguments(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      _iterator(**kwargs)


class DataConfigTest(parameterized.TestCase):

  def _config(self, **overrides):
    kwargs = dict(task=TASK, kind="sft", batch_size=4,
                  feature_lengths={"inputs": 16, "targets": 8})
    kwargs.update(overrides)
    return pipeline.DataConfig(**kwargs)

  def test_valid(self):
    cfg = self._config()
    self.assertEqual(cfg.split, "train")
    self.assertTrue(cfg.shuffle and cfg.repeat)

  @parameterized.named_parameters(
      ("kind", dict(kind="dpo"), "not a batch kind"),
      ("batch_size", dict(batch_size=0), "batch_size=0"),
      ("batch_size_type", dict(batch_size=2.0), "must be an int"),
      ("seed", dict(seed=-1), "seed=-1"),
      ("task", dict(task=""), "DataConfig.task"),
      ("lengths", dict(feature_lengths={"inputs": 16}), "needs the keys"),
      ("max_examples", dict(max_examples=0), "max_examples=0 must be >= 1"),
  )
  def test_invalid(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      self._config(**overrides)


def _register_test_task():
  rows = make_testdata.tldr_sft_rows(NUM_EXAMPLES, seed=5)
  records = [{"inputs": r["post"], "targets": r["summary"]} for r in rows]

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return registration.records_dataset(records, ("inputs", "targets"))

  vocabulary = vocab.sentencepiece_vocabulary(
      str(make_testdata.TINY_SPM), extra_ids=0)
  registration.register_task(
      TASK, kind="sft", vocabulary=vocabulary,
      source=seqio.FunctionDataSource(dataset_fn, splits=("train",)))
  return records, vocabulary


class MakeIteratorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.records, cls.vocabulary = _register_test_task()

  def _config(self, **overrides):
    kwargs = dict(task=TASK, kind="sft", batch_size=4,
                  feature_lengths={"inputs": 24, "targets": 12})
    kwargs.update(overrides)
    return pipeline.DataConfig(**kwargs)

  def test_load_batch_is_the_first_examples_in_order(self):
    batch = pipeline.load_batch(self._config(), 3)
    self.assertEqual(batch["inputs"].shape, (3, 24))
    self.assertEqual(batch["targets"].dtype, np.int32)
    for row, record in zip(batch["targets"], self.records):
      tokens = self.vocabulary.encode(record["targets"])[:11] + [1]
      np.testing.assert_array_equal(row[: len(tokens)], tokens)
      self.assertTrue(np.all(row[len(tokens):] == 0))

  def test_make_iterator_resumes_and_shards(self):
    cfg = self._config(seed=7)
    full = pipeline.make_iterator(cfg, shard_index=1, num_shards=2)
    batches = [next(full) for _ in range(8)]  # Crosses two epochs.
    resumed = pipeline.make_iterator(cfg, shard_index=1, num_shards=2,
                                     start_position=5)
    for expected in batches[5:]:
      got = next(resumed)
      for name in ("inputs", "targets"):
        np.testing.assert_array_equal(got[name], expected[name])
    self.assertEqual(batches[0]["inputs"].shape, (2, 24))
    self.assertEqual(resumed.position, 8)

  def test_truncation_is_counted(self):
    it = pipeline.make_iterator(self._config(
        feature_lengths={"inputs": 4, "targets": 12}, shuffle=False))
    self.assertEqual(it.split_truncation["inputs"], NUM_EXAMPLES)
    batch = next(it)
    self.assertTrue(np.all(batch["inputs"][:, -1] == 1))
    self.assertEqual(it.truncation["inputs"], 4)

  def test_max_examples_and_truncation_summary(self):
    it = pipeline.make_iterator(self._config(
        feature_lengths={"inputs": 4, "targets": 12}, max_examples=10))
    self.assertEqual(it.num_examples, 10)
    cut = sum(len(self.vocabulary.encode(r["targets"])) + 1 > 12
              for r in self.records[:10])
    self.assertEqual(cut, 2)
    self.assertEqual(
        it.truncation_summary(),
        f"{TASK}:train: inputs truncated in 100.0% of 10 examples (4 tokens),"
        " targets in 20.0% (12 tokens)")
    self.assertLen(pipeline.load_batch(self._config(max_examples=3), 3)[
        "inputs"], 3)
    with self.assertRaisesRegex(ValueError, "only 3 examples"):
      pipeline.load_batch(self._config(max_examples=3), 4)

  def test_kind_and_vocabulary(self):
    self.assertEqual(pipeline.task_kind(TASK), "sft")
    self.assertEqual(pipeline.kinds_served(TASK), ("sft", "prompts"))
    self.assertIs(pipeline.task_vocabulary(TASK), self.vocabulary)
    self.assertIs(pipeline.validate_config(self._config(), vocab_size=512),
                  self.vocabulary)
    with self.assertRaisesRegex(errors.DataError,
                                f"Did you mean '{TASK}'"):
      pipeline.task_kind("test_pipeline_stf")

  def test_missing_vocabulary_names_the_file(self):
    rows = [{"inputs": "a b", "targets": "c"}]
    registration.register_task(
        "test_pipeline_no_vocab", kind="sft",
        vocabulary=vocab.sentencepiece_vocabulary("/no/such/spm.model", 0),
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None:
            registration.records_dataset(rows, ("inputs", "targets")),
            splits=("train",)),
        configured_by="ipo_md_tasks.register_tldr_tasks")
    self.addCleanup(seqio.TaskRegistry.remove, "test_pipeline_no_vocab")
    message = (r"Task 'test_pipeline_no_vocab': cannot read its vocabulary "
               r"/no/such/spm.model \(NotFoundError: .*\)\. Set "
               r"vocabulary_path of ipo_md_tasks.register_tldr_tasks \(gin: "
               r"ipo_md_tasks.register_tldr_tasks.vocabulary_path = ")
    with self.assertRaisesRegex(errors.DataError, message):
      pipeline.task_vocabulary("test_pipeline_no_vocab")
    with self.assertRaisesRegex(errors.DataError, message):
      pipeline.make_iterator(self._config(task="test_pipeline_no_vocab"))

  def test_errors_at_creation(self):
    with self.assertRaisesRegex(ValueError, "import ipo_md_tasks"):
      pipeline.make_iterator(self._config(task="no_such_task"))
    with self.assertRaisesRegex(ValueError, r"no split 'test'"):
      pipeline.make_iterator(self._config(split="test"))
    with self.assertRaisesRegex(ValueError, "comparisons task"):
      pipeline.make_iterator(self._config(kind="pairs"))
    with self.assertRaisesRegex(ValueError, "only 24 examples"):
      pipeline.load_batch(self._config(), 25)


if __name__ == "__main__":
  absltest.main()
