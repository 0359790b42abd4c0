"""Tests of the registered TL;DR tasks: generated fixtures and real samples."""

import pathlib
import tempfile

from absl.testing import absltest
from ipo_md.data import pipeline
from ipo_md.data import tldr
import ipo_md_tasks
import numpy as np
import pytest
import seqio
import tensorflow as tf

from tests.conftest import SHARED_DATA
from tests.testdata import make_testdata

PREFIX = "test_tldr"
TLDR_SAMPLE = SHARED_DATA / "tldr"
T5_SPM = SHARED_DATA / "t5_spiece.model"


def _config(task, kind, batch_size=4, **kwargs):
  lengths = kwargs.pop("feature_lengths", {"inputs": 96, "targets": 24})
  return pipeline.DataConfig(task=task, kind=kind, batch_size=batch_size,
                             feature_lengths=lengths, **kwargs)


class TldrTasksTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = tempfile.TemporaryDirectory()
    cls.addClassCleanup(tmp.cleanup)
    cls.dir = pathlib.Path(tmp.name)
    cls.sft_rows = make_testdata.tldr_sft_rows(12, post_words=(5, 60))
    make_testdata.write_jsonl(cls.dir / "sft" / "train.jsonl", cls.sft_rows)
    make_testdata.write_jsonl(cls.dir / "sft" / "valid.jsonl",
                              make_testdata.tldr_sft_rows(4, seed=1))
    cls.comparison_rows = make_testdata.tldr_comparison_rows(10)
    make_testdata.write_jsonl(cls.dir / "comparisons" / "batch3.json",
                              cls.comparison_rows)
    ipo_md_tasks.register_tldr_tasks(
        sft_dir=str(cls.dir / "sft"),
        comparisons_dir=str(cls.dir / "comparisons"),
        vocabulary_path=str(make_testdata.TINY_SPM), extra_ids=0,
        name_prefix=PREFIX)
    cls.vocabulary = seqio.get_mixture_or_task(
        f"{PREFIX}_sft").output_features["inputs"].vocabulary

  def _decode(self, row) -> str:
    return self.vocabulary.decode(row.tolist())

  def test_default_tasks_are_registered(self):
    for name in ("tldr_sft", "tldr_prompts", "tldr_comparisons"):
      self.assertIn(name, seqio.TaskRegistry.names())

  def test_default_tasks_say_how_to_set_the_folder(self):
    with self.assertRaisesRegex(ValueError, "register_tldr_tasks"):
      pipeline.make_iterator(_config("tldr_sft", "sft"))

  def test_sft_truncates_the_post_and_keeps_tldr(self):
    lengths = {"inputs": 60, "targets": 8}
    it = pipeline.make_iterator(_config(f"{PREFIX}_sft", "sft", shuffle=False,
                                        feature_lengths=lengths))
    self.assertGreater(it.split_truncation["inputs"], 0)
    self.assertGreater(it.split_truncation["targets"], 0)
    batch = next(it)
    for row, source in zip(batch["inputs"], self.sft_rows):
      text = self._decode(row)
      self.assertTrue(text.startswith(
          f"SUBREDDIT: r/{source['subreddit']} TITLE: {source['title']} "
          "POST:"), text)
      self.assertTrue(text.endswith(" TL;DR:"), text)
      self.assertEqual(row[np.flatnonzero(row)[-1]], 1)
    for row, source in zip(batch["targets"], self.sft_rows):
      self.assertTrue(source["summary"].strip().startswith(
          self._decode(row)))

  def test_prompts_keep_references(self):
    batch = pipeline.load_batch(_config(f"{PREFIX}_prompts", "prompts",
                                        split="validation"), 4)
    self.assertEqual(set(batch), {"inputs", "targets"})

  def test_comparisons_pairs(self):
    cfg = _config(f"{PREFIX}_comparisons", "pairs", batch_size=2,
                  feature_lengths={"inputs": 128, "targets": 32})
    batch = pipeline.load_batch(cfg, 5)
    train = [r for r in self.comparison_rows if r["split"] == "train"]
    self.assertEqual(batch["chosen"].shape, (5, 32))
    for i, row in enumerate(train):
      texts = [s["text"].strip() for s in row["summaries"]]
      self.assertEqual(self._decode(batch["chosen"][i]), texts[row["choice"]])
      self.assertEqual(self._decode(batch["rejected"][i]),
                       texts[1 - row["choice"]])
    it = pipeline.make_iterator(_config(
        f"{PREFIX}_comparisons", "pairs", split="validation", batch_size=2,
        feature_lengths={"inputs": 128, "targets": 32}))
    self.assertEqual(it.num_examples, 5)

  def test_bad_line_fails_at_iterator_creation(self):
    rows = [dict(r) for r in self.comparison_rows]
    rows[2]["choice"] = -1
    bad_dir = self.dir / "bad"
    make_testdata.write_jsonl(bad_dir / "batch9.json", rows)
    ipo_md_tasks.register_tldr_tasks(
        comparisons_dir=str(bad_dir), vocabulary_path=str(
            make_testdata.TINY_SPM), extra_ids=0, name_prefix="test_tldr_bad")
    with self.assertRaisesRegex(
        ValueError, r"batch9\.json, line 3: field 'choice' is -1"):
      pipeline.make_iterator(_config("test_tldr_bad_comparisons", "pairs"))


@pytest.mark.shared_data
@pytest.mark.skipif(not TLDR_SAMPLE.is_dir(),
                    reason=f"{TLDR_SAMPLE} (../shared/data) not present")
class TldrSampleTest(absltest.TestCase):
  """The real samples of ../shared/data/tldr with the real T5 vocabulary."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    ipo_md_tasks.register_tldr_tasks(
        sft_dir=str(TLDR_SAMPLE), comparisons_dir=str(TLDR_SAMPLE),
        vocabulary_path=str(T5_SPM),
        sft_files={"validation": "tldr_sft_sample.jsonl"},
        comparison_files="tldr_comparisons_gpt4judge_sample.jsonl",
        comparison_splits={"train": ("unknown",)}, name_prefix="sample_tldr")

  def test_segments_tokenize_like_the_whole_prompt(self):
    vocabulary = seqio.get_mixture_or_task(
        "sample_tldr_sft").output_features["inputs"].vocabulary
    examples = list(pipeline.task_examples("sample_tldr_sft", "validation",
                                           limit=300))
    same = 0
    for ex in examples:
      whole = vocabulary.encode_tf(tf.constant(ex["inputs_pretokenized"]))
      whole = np.append(whole.numpy(), 1)
      same += np.array_equal(whole, ex["inputs"])
      # Ties between equal-score pieces of runs like "!!!!" may order the
      # pieces differently; the text is always the same.
      self.assertEqual(vocabulary.decode(ex["inputs"].tolist()),
                       vocabulary.decode(whole.tolist()))
    self.assertGreaterEqual(same, 0.98 * len(examples))

  def test_sft_and_comparisons_batches(self):
    sft = pipeline.load_batch(_config(
        "sample_tldr_sft", "sft", split="validation", batch_size=8,
        feature_lengths={"inputs": 512, "targets": 64}), 100)
    self.assertEqual(sft["inputs"].shape, (100, 512))
    records = tldr.read_comparisons(
        [str(TLDR_SAMPLE / "tldr_comparisons_gpt4judge_sample.jsonl")],
        splits=("unknown",))
    self.assertLen(records, 1000)
    pairs = pipeline.load_batch(_config(
        "sample_tldr_comparisons", "pairs", batch_size=8,
        feature_lengths={"inputs": 512, "targets": 64}), 100)
    self.assertEqual(pairs["rejected"].shape, (100, 64))
    self.assertTrue(np.all(pairs["chosen"][:, 0] != 0))


if __name__ == "__main__":
  absltest.main()
