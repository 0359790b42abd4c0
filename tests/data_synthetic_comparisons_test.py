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

"""The synthetic comparisons: gold scorer, annotator labels, pair batches.

The pure-Python scorer of `ipo_md.data.synthetic` must equal the jitted
`FactsOracle.score` on the tokenized texts exactly, so the labels the data
carries are the ones the oracle would give.
"""

from absl.testing import absltest
from ipo_md.data import errors
from ipo_md.data import pipeline
from ipo_md.data import synthetic
from ipo_md.preference import oracle
import ipo_md_tasks
import jax
import numpy as np

TASK = "synthetic_facts_comparisons"
# Long enough that nothing is truncated (documents <= 53 tokens + EOS,
# candidates <= 24 + EOS).
LENGTHS = {"inputs": 64, "targets": 32}

# (summary, covered, invented, repeated, over_budget) for HAND_DOC, whose
# facts are alice red boat and bob blue car (budget 8 words).
HAND_DOC = ("alice owns a red boat . carol likes sunny days . bob owns a blue "
            "car . a green kite was seen nearby .")
HAND_CASES = (
    ("alice red boat . bob blue car .", 2, 0, 0, 0),
    ("alice red boat . alice red boat .", 1, 0, 1, 0),
    ("carol green kite . carol green kite .", 0, 2, 0, 0),
    ("alice red boat . bob blue car . dave red boat .", 2, 1, 0, 4),
    ("bob blue car", 1, 0, 0, 0),
    ("alice red red boat . zebra .", 0, 0, 0, 0),
    ("", 0, 0, 0, 0),
)


def _config(split="validation", **kwargs):
  return pipeline.DataConfig(task=TASK, split=split, kind="pairs",
                             batch_size=8, feature_lengths=LENGTHS, **kwargs)


class ScorerTest(absltest.TestCase):

  def test_hand_counts(self):
    for summary, covered, invented, repeated, over in HAND_CASES:
      counts = synthetic.summary_counts(HAND_DOC, summary)
      self.assertEqual(
          (counts["covered"], counts["invented"], counts["repeated"],
           counts["over_budget"], counts["num_facts"]),
          (covered, invented, repeated, over, 2), summary)
      self.assertEqual(synthetic.score_summary(HAND_DOC, summary),
                       covered - invented - 0.5 * repeated - 0.25 * over)

  def test_gold_constants_are_the_oracle_defaults(self):
    gold = oracle.FactsOracle()
    self.assertEqual(
        (gold.bt_scale, gold.invented_weight, gold.repeat_weight,
         gold.length_weight),
        (synthetic.GOLD_BT_SCALE, synthetic.INVENTED_WEIGHT,
         synthetic.REPEAT_WEIGHT, synthetic.LENGTH_WEIGHT))

  def test_equals_the_oracle_on_tokenized_pairs(self):
    batch = pipeline.load_batch(_config(), synthetic.COMPARISON_SIZES[
        "validation"])
    records = synthetic.generate_comparisons("validation")
    vocabulary = synthetic.vocabulary()
    hand = [vocabulary.encode(s) + [1] for s, *_ in HAND_CASES]
    hand = np.asarray([h + [0] * (LENGTHS["targets"] - len(h)) for h in hand])
    hand_doc = np.asarray(vocabulary.encode(HAND_DOC) + [1])
    hand_doc = np.pad(hand_doc, (0, LENGTHS["inputs"] - len(hand_doc)))
    inputs = np.concatenate([batch["inputs"]] * 2
                            + [np.tile(hand_doc, (len(hand), 1))])
    summaries = np.concatenate([batch["chosen"], batch["rejected"], hand])
    gold = oracle.FactsOracle()
    scores = np.asarray(jax.jit(gold.score)(inputs, summaries))
    expected = np.asarray(
        [synthetic.score_summary(r["inputs"], r["chosen"]) for r in records]
        + [synthetic.score_summary(r["inputs"], r["rejected"])
           for r in records]
        + [synthetic.score_summary(HAND_DOC, s) for s, *_ in HAND_CASES],
        np.float32)
    np.testing.assert_array_equal(scores, expected)
    n = len(records)
    p = 1 / (1 + np.exp(-2.0 * (scores[:n].astype(np.float64)
                                - scores[n: 2 * n])))
    np.testing.assert_allclose(batch["gold_pref"], p, rtol=1e-6)


class ComparisonsTest(absltest.TestCase):

  def test_sizes_determinism_and_documents(self):
    self.assertEqual(synthetic.COMPARISON_SIZES,
                     {"train": 32_768, "validation": 1_024})
    records = synthetic.generate_comparisons("validation")
    self.assertLen(records, 1024)
    self.assertEqual(synthetic.generate_comparisons("validation"), records)
    self.assertEqual(synthetic.comparison("validation", 1023), records[-1])
    self.assertEqual(synthetic.comparison("train", 9),
                     synthetic.generate_comparisons("train", 10)[9])
    for i, r in enumerate(records):
      self.assertEqual(r["inputs"],
                       synthetic.example("validation", i // 2)["inputs"])
      self.assertNotEqual(r["chosen"], r["rejected"])
      self.assertEqual(r["label"], 1.0)

  def test_validation_gold_agreement_and_ties(self):
    # Golden values: change them only for an intended change of the data.
    stats = synthetic.comparison_stats(
        synthetic.generate_comparisons("validation"))
    self.assertEqual(stats["gold_agreement"], 0.87646484375)  # 897.5 / 1024
    self.assertEqual(stats["tie_fraction"], 0.0966796875)  # 99 / 1024
    self.assertAlmostEqual(stats["expected_gold_agreement"], 0.88047, 5)

  def test_labels_follow_the_gold_oracle(self):
    # The label is Bernoulli(p_gold): the agreement of the gold with the
    # labels matches its expectation within 4 standard errors, over 8,192
    # train pairs; a flip rate f moves it to (1 - f) A + f (1 - A).
    for flip in (0.0, 0.25):
      records = synthetic.generate_comparisons("train", 8192,
                                               label_flip_rate=flip)
      p = np.asarray([r["gold_pref"] for r in records])
      agree = (p > 0.5) + 0.5 * (p == 0.5)
      q = np.maximum(p, 1 - p)  # P(label = gold's side) without flips.
      expected = (1 - flip) * q + flip * (1 - q)
      se = np.sqrt(np.sum(expected * (1 - expected))) / len(p)
      self.assertLess(abs(agree.mean() - expected.mean()), 4 * se, flip)

  def test_pairs_range_from_clear_to_close(self):
    records = synthetic.generate_comparisons("train", 4096)
    p = np.asarray([r["gold_pref"] for r in records])
    # Score gaps |s(chosen) - s(rejected)|, in steps of 1/2 here.
    gaps = np.round(np.abs(np.log(p / (1 - p))) / synthetic.GOLD_BT_SCALE, 6)
    shares = {g: np.mean(gaps == g) for g in (0.0, 0.5, 1.0)}
    self.assertBetween(shares[0.0], 0.05, 0.15)  # Ties: coin-flip labels.
    self.assertGreater(shares[0.5], 0.05)  # Near twins (one repeat apart).
    self.assertGreater(shares[1.0], 0.15)
    self.assertGreater(np.mean(gaps >= 1.5), 0.4)  # Clear winners.
    self.assertGreater(np.mean(gaps >= 3.0), 0.1)  # Near perfect vs bad.
    self.assertEqual(synthetic.comparison_stats(records)["tie_fraction"],
                     shares[0.0])

  def test_more_comparisons_per_document_extend_the_default_ones(self):
    default = synthetic.generate_comparisons("train", 8)  # Documents 0, 1.
    more = synthetic.generate_comparisons("train", 32, per_document=16)
    self.assertEqual(more[:4], default[:4])
    self.assertEqual(more[16:20], default[4:8])
    self.assertEqual({r["inputs"] for r in more[:16]}, {default[0]["inputs"]})
    self.assertEqual({r["inputs"] for r in more[16:]}, {default[4]["inputs"]})
    # The fresh ones are new pairs, not copies of the first four.
    firsts = {(r["chosen"], r["rejected"]) for r in more[:4]}
    self.assertGreater(
        len({(r["chosen"], r["rejected"]) for r in more[4:16]} - firsts), 8)
    self.assertEqual(synthetic.comparison("train", 21, per_document=16),
                     more[21])
    self.assertEqual(synthetic.comparison_size("train", 16),
                     (16 * synthetic.TRAIN_SIZE, 16))
    self.assertEqual(synthetic.comparison_size("validation"),
                     (synthetic.COMPARISON_SIZES["validation"], 2))
    self.assertEqual(
        synthetic.generate_comparisons("validation", 6, per_document=1),
        synthetic.generate_comparisons("validation", 12)[0:12:2])

  def test_bad_arguments(self):
    for bad in (0, 257, 2.5, True, "16"):
      with self.assertRaisesRegex(
          errors.DataError, rf"per_document={bad!r} .*'train'.*\[1, 256\]"):
        synthetic.generate_comparisons("train", 1, per_document=bad)
    with self.assertRaisesRegex(errors.DataError,
                                r"index=524288 .*\[0, 524288\)"):
      synthetic.comparison("train", 64 * 8192, per_document=64)
    with self.assertRaisesRegex(errors.DataError, "Unknown split 'test'"):
      synthetic.generate_comparisons("test")
    with self.assertRaisesRegex(errors.DataError, "label_flip_rate=0.6"):
      synthetic.generate_comparisons("train", 1, label_flip_rate=0.6)
    with self.assertRaisesRegex(errors.DataError, r"index=1024 .*\[0, 1024\)"):
      synthetic.comparison("validation", 1024)


class ComparisonsTaskTest(absltest.TestCase):

  def tearDown(self):
    ipo_md_tasks.register_synthetic_tasks()
    super().tearDown()

  def test_pair_batches_carry_label_and_gold_pref(self):
    it = pipeline.make_iterator(_config(shuffle=False))
    self.assertEqual(it.num_examples, 1024)
    self.assertEqual(it.split_truncation,
                     {"inputs": 0, "chosen": 0, "rejected": 0})
    batch = next(it)
    self.assertEqual(set(batch),
                     {"inputs", "chosen", "rejected", "label", "gold_pref"})
    self.assertEqual(batch["label"].dtype, np.float32)
    self.assertEqual(batch["label"].shape, (8,))
    np.testing.assert_array_equal(batch["label"], np.ones(8, np.float32))
    records = synthetic.generate_comparisons("validation", 8)
    np.testing.assert_array_equal(
        batch["gold_pref"],
        np.asarray([r["gold_pref"] for r in records], np.float32))
    vocabulary = synthetic.vocabulary()
    for row, record in zip(batch["chosen"], records):
      self.assertEqual(vocabulary.decode(row.tolist()), record["chosen"])

  def test_flip_rate_is_a_registration_option(self):
    ipo_md_tasks.register_synthetic_tasks(label_flip_rate=0.5)
    batch = pipeline.load_batch(_config(), 1024)
    p = batch["gold_pref"]
    # Random labels: the gold prefers the labelled winner about half the time.
    self.assertBetween(float(np.mean(p > 0.5)), 0.38, 0.52)
    with self.assertRaisesRegex(errors.DataError, "label_flip_rate=-0.1"):
      ipo_md_tasks.register_synthetic_tasks(label_flip_rate=-0.1)

  def test_comparisons_per_train_document_is_a_registration_option(self):
    ipo_md_tasks.register_synthetic_tasks(train_comparisons_per_document=16)
    it = pipeline.make_iterator(_config("train", shuffle=False))
    self.assertEqual(it.num_examples, 16 * synthetic.TRAIN_SIZE)
    batch = next(it)
    records = synthetic.generate_comparisons("train", 8, per_document=16)
    np.testing.assert_array_equal(
        batch["gold_pref"],
        np.asarray([r["gold_pref"] for r in records], np.float32))
    # Validation keeps its 1,024 pairs, so evaluations stay comparable.
    self.assertEqual(pipeline.make_iterator(_config()).num_examples, 1024)
    with self.assertRaisesRegex(errors.DataError, "per_document=0"):
      ipo_md_tasks.register_synthetic_tasks(train_comparisons_per_document=0)

  def test_kind_and_vocabulary_without_reading_examples(self):
    self.assertEqual(pipeline.task_kind(TASK), "pairs")
    self.assertEqual(pipeline.kinds_served(TASK), ("pairs", "prompts"))
    self.assertEqual(pipeline.task_kind("synthetic_facts_sft"), "sft")
    self.assertEqual(pipeline.task_kind("synthetic_facts_prompts"), "prompts")
    self.assertEqual(pipeline.task_vocabulary(TASK).vocab_size,
                     synthetic.vocabulary().vocab_size)
    vocabulary = pipeline.validate_config(_config(), vocab_size=64)
    self.assertEqual(vocabulary.vocab_size, 55)
    with self.assertRaisesRegex(
        errors.DataError,
        r"vocabulary of 55 ids .* vocab_size=32.*at least 55"):
      pipeline.validate_config(_config(), vocab_size=32)
    with self.assertRaisesRegex(errors.DataError, "no split 'test'"):
      pipeline.validate_config(_config(split="test"))
    with self.assertRaisesRegex(errors.DataError, r"needs \['targets'\]"):
      pipeline.validate_config(pipeline.DataConfig(
          task=TASK, kind="sft", batch_size=8, feature_lengths=LENGTHS))


if __name__ == "__main__":
  absltest.main()
