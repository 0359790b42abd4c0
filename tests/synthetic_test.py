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

"""The built-in synthetic facts task: determinism, contents, vocabulary, lengths.

Facts are re-parsed from the document text with a regular expression here,
independently of the generator, and token ids come from the shipped
SentencePiece model through `sentencepiece` itself.
"""

import collections
import re

from absl.testing import absltest
import numpy as np
import sentencepiece as spm

from ipo_md.data import synthetic

FACT_RE = re.compile(r"(\w+) owns a (\w+) (\w+) \.")
CLAUSE_RE = re.compile(r"(\w+) (\w+) (\w+) \.")
MAX_INPUT_TOKENS, MAX_TARGET_TOKENS = 64, 32
# Examples checked exhaustively: the validation split and the start of train.
NUM_TRAIN_CHECKED = 2000


def _examples():
  return (synthetic.generate("validation")
          + synthetic.generate("train", NUM_TRAIN_CHECKED))


def _clauses(summary):
  triples = CLAUSE_RE.findall(summary)
  # The clauses cover the whole summary (nothing else in it).
  assert " ".join(f"{n} {c} {o} ." for n, c, o in triples) == summary, summary
  return triples


class DeterminismTest(absltest.TestCase):

  def test_same_example_twice_and_distinct_indices(self):
    for split in ("train", "validation"):
      self.assertEqual(synthetic.example(split, 7), synthetic.example(split, 7))
      docs = {synthetic.example(split, i)["inputs"] for i in range(50)}
      self.assertGreater(len(docs), 45, split)
    self.assertNotEqual(synthetic.example("train", 3)["inputs"],
                        synthetic.example("validation", 3)["inputs"])
    self.assertEqual(synthetic.generate("validation", 5),
                     [synthetic.example("validation", i) for i in range(5)])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "Unknown split 'test'"):
      synthetic.example("test", 0)
    with self.assertRaisesRegex(ValueError, "Unknown split"):
      synthetic.generate("test", 1)
    with self.assertRaisesRegex(ValueError, "seed=1"):
      synthetic.generate("train", 1, seed=1)
    with self.assertRaisesRegex(ValueError, "num_examples"):
      synthetic.generate("validation", synthetic.VALIDATION_SIZE + 1)


class ContentsTest(absltest.TestCase):

  def test_ideal_summary_is_exactly_the_facts_in_order(self):
    num_facts = collections.Counter()
    for ex in _examples():
      facts = FACT_RE.findall(ex["inputs"])
      self.assertEqual(_clauses(ex["ideal"]), facts, ex)
      self.assertLen(set(f[0] for f in facts), len(facts))  # Distinct owners.
      num_facts[len(facts)] += 1
      sentences = ex["inputs"].split(" . ")
      distractors = len(sentences) - len(facts)
      self.assertBetween(distractors, synthetic.MIN_DISTRACTORS,
                         synthetic.MAX_DISTRACTORS)
    self.assertEqual(set(num_facts), set(range(synthetic.MIN_FACTS,
                                               synthetic.MAX_FACTS + 1)))

  def test_reference_noise_rates(self):
    # References keep each fact with P_KEEP_FACT (at least one is kept),
    # invent a wrong one with P_INVENT and repeat one with P_REPEAT.
    kept = total = invented = repeated = 0
    examples = _examples()
    for ex in examples:
      facts = set(FACT_RE.findall(ex["inputs"]))
      clauses = _clauses(ex["targets"])
      self.assertNotEmpty(clauses)
      wrong = [c for c in clauses if c not in facts]
      self.assertLessEqual(len(set(wrong)), 1)
      invented += bool(wrong)
      repeated += len(clauses) != len(set(clauses))
      kept += len(facts & set(clauses))
      total += len(facts)
    n = len(examples)
    # Binomial standard errors are below 0.012 here; allow 4 of them.
    self.assertAlmostEqual(invented / n, synthetic.P_INVENT, delta=0.05)
    self.assertAlmostEqual(repeated / n, synthetic.P_REPEAT, delta=0.04)
    # Keeping is P_KEEP_FACT, lifted a little by the "keep at least one" rule.
    self.assertBetween(kept / total, synthetic.P_KEEP_FACT, 0.72)


class VocabularyTest(absltest.TestCase):

  def test_every_word_is_one_token(self):
    sp = spm.SentencePieceProcessor(model_file=str(synthetic.VOCAB_PATH))
    ids = synthetic.word_ids()
    self.assertEqual(set(ids), set(synthetic.WORDS))
    self.assertLen(set(ids.values()), len(synthetic.WORDS))  # Injective.
    self.assertEqual((sp.pad_id(), sp.eos_id(), sp.unk_id()), (0, 1, 2))
    self.assertNotIn(sp.unk_id(), ids.values())
    self.assertEqual(min(ids.values()), 3)
    for w, i in ids.items():
      self.assertEqual(sp.id_to_piece(i).lstrip("\u2581"), w)
    # Whole texts encode word by word.
    for ex in synthetic.generate("validation", 20):
      for text in ex.values():
        self.assertEqual(sp.encode(text), [ids[w] for w in text.split()])

  def test_lengths_fit(self):
    ids = synthetic.word_ids()
    longest = collections.Counter()
    for ex in _examples():
      for key in ex:
        # +1 for the EOS appended by the feature converter.
        longest[key] = max(longest[key],
                           len([ids[w] for w in ex[key].split()]) + 1)
    self.assertLessEqual(longest["inputs"], MAX_INPUT_TOKENS)
    self.assertLessEqual(longest["targets"], MAX_TARGET_TOKENS)
    self.assertLessEqual(longest["ideal"], MAX_TARGET_TOKENS)
    # And by construction: a fact has 6 tokens, a distractor at most 7
    # ("a C O was seen nearby ."), a summary clause 4.
    worst_input = (6 * synthetic.MAX_FACTS + 7 * synthetic.MAX_DISTRACTORS
                   + 1)
    worst_target = 4 * (synthetic.MAX_FACTS + 2) + 1  # + invented + repeat
    self.assertEqual((worst_input, worst_target), (53, 25))
    self.assertLessEqual(worst_input, MAX_INPUT_TOKENS)
    self.assertLessEqual(worst_target, MAX_TARGET_TOKENS)
    self.assertLessEqual(longest["inputs"], worst_input)
    self.assertLessEqual(longest["targets"], worst_target)
    self.assertTrue(np.all(np.array(list(longest.values())) > 10))


if __name__ == "__main__":
  absltest.main()
