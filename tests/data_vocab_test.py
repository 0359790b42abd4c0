"""Tests of ipo_md.data.vocab: the configurable SentencePiece vocabulary."""

from absl.testing import absltest
from ipo_md.data import vocab
import pytest

from tests.conftest import SHARED_DATA
from tests.testdata import make_testdata

T5_SPM = SHARED_DATA / "t5_spiece.model"


class VocabularyTest(absltest.TestCase):

  def test_defaults_are_the_public_t5_vocabulary(self):
    self.assertEqual(vocab.DEFAULT_SPM_PATH,
                     "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model")
    self.assertEqual(vocab.DEFAULT_EXTRA_IDS, 100)

  def test_tiny_vocabulary_has_t5_special_ids(self):
    v = vocab.sentencepiece_vocabulary(str(make_testdata.TINY_SPM), 0)
    self.assertEqual((v.pad_id, v.eos_id, v.unk_id), (0, 1, 2))
    self.assertEqual(v.vocab_size, 128)
    text = "i went to work today."
    self.assertEqual(v.decode(v.encode(text)), text)

  def test_same_arguments_share_one_object(self):
    path = str(make_testdata.TINY_SPM)
    self.assertIs(vocab.sentencepiece_vocabulary(path, 0),
                  vocab.sentencepiece_vocabulary(path, 0))

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "non-empty string"):
      vocab.sentencepiece_vocabulary("")
    with self.assertRaisesRegex(ValueError, "extra_ids=-1"):
      vocab.sentencepiece_vocabulary("x.model", -1)


@pytest.mark.shared_data
@pytest.mark.skipif(not T5_SPM.is_file(),
                    reason=f"{T5_SPM} (../shared/data) not present")
class T5VocabularyTest(absltest.TestCase):

  def test_known_encoding_and_size(self):
    # From ../shared/data/README.md.
    v = vocab.sentencepiece_vocabulary(str(T5_SPM))
    self.assertEqual(v.vocab_size, 32100)
    self.assertEqual(
        v.encode("summarize: The quick brown fox jumps over the lazy dog."),
        [21603, 10, 37, 1704, 4216, 3, 20400, 4418, 7, 147, 8, 19743, 1782, 5])


if __name__ == "__main__":
  absltest.main()
