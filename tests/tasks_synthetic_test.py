"""Tests of the registered synthetic facts tasks (ipo_md_tasks.synthetic)."""

from absl.testing import absltest
from ipo_md.data import pipeline
from ipo_md.data import synthetic
import ipo_md_tasks  # pylint: disable=unused-import  # Registers the tasks.
import numpy as np
import seqio


class SyntheticTasksTest(absltest.TestCase):

  def test_registered_on_import(self):
    for name in ("synthetic_facts_sft", "synthetic_facts_prompts"):
      task = seqio.get_mixture_or_task(name)
      self.assertEqual(tuple(task.splits), ("train", "validation"))
      self.assertEqual(task.output_features["inputs"].vocabulary.vocab_size,
                       synthetic.vocabulary().vocab_size)

  def test_sft_examples_decode_to_the_generated_text(self):
    cfg = pipeline.DataConfig(
        task="synthetic_facts_sft", split="validation", kind="sft",
        batch_size=4, feature_lengths={"inputs": 96, "targets": 48})
    batch = pipeline.load_batch(cfg, 4)
    vocabulary = synthetic.vocabulary()
    for i, record in enumerate(synthetic.generate("validation", 4)):
      for name in ("inputs", "targets"):
        row = batch[name][i]
        self.assertEqual(vocabulary.decode(row.tolist()), record[name])
        self.assertEqual(row[np.flatnonzero(row)[-1]], vocabulary.eos_id)

  def test_prompts_batches_with_and_without_references(self):
    lengths = {"inputs": 96}
    cfg = pipeline.DataConfig(
        task="synthetic_facts_prompts", split="validation", kind="prompts",
        batch_size=8, feature_lengths=lengths)
    it = pipeline.make_iterator(cfg, shard_index=0, num_shards=2)
    self.assertEqual(set(next(it)), {"inputs"})
    self.assertEqual(it.split_truncation, {"inputs": 0})
    with_refs = pipeline.load_batch(
        pipeline.DataConfig(
            task="synthetic_facts_prompts", split="validation",
            kind="prompts", batch_size=8,
            feature_lengths={"inputs": 96, "targets": 48}), 2)
    self.assertEqual(with_refs["targets"].shape, (2, 48))


if __name__ == "__main__":
  absltest.main()
