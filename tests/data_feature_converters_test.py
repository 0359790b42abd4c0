"""Tests of ipo_md.data.feature_converters: padding and truncation policy."""

from absl.testing import absltest
from absl.testing import parameterized
from ipo_md.data import errors
from ipo_md.data import feature_converters as fc
import numpy as np

EOS = 1


class FitToLengthTest(parameterized.TestCase):

  def test_pads_with_zeros(self):
    out, cut = fc.fit_to_length(np.array([5, 6, EOS]), 6, eos_id=EOS)
    np.testing.assert_array_equal(out, [5, 6, EOS, 0, 0, 0])
    self.assertFalse(cut)

  def test_exact_length_is_not_truncated(self):
    out, cut = fc.fit_to_length(np.array([5, 6, EOS]), 3, eos_id=EOS)
    np.testing.assert_array_equal(out, [5, 6, EOS])
    self.assertFalse(cut)

  def test_truncates_the_end_and_keeps_eos(self):
    out, cut = fc.fit_to_length(np.array([5, 6, 7, 8, EOS]), 3, eos_id=EOS)
    np.testing.assert_array_equal(out, [5, 6, EOS])
    self.assertTrue(cut)

  def test_without_eos_truncates_plainly(self):
    out, cut = fc.fit_to_length(np.array([5, 6, 7, 8]), 3, eos_id=EOS)
    np.testing.assert_array_equal(out, [5, 6, 7])
    self.assertTrue(cut)

  def test_body_span_keeps_head_and_tail(self):
    # head [10, 11] | body [20..25] | tail [30, 31] | EOS
    tokens = np.array([10, 11, 20, 21, 22, 23, 24, 25, 30, 31, EOS])
    out, cut = fc.fit_to_length(tokens, 7, eos_id=EOS, body_span=(2, 8))
    np.testing.assert_array_equal(out, [10, 11, 20, 21, 30, 31, EOS])
    self.assertTrue(cut)

  def test_body_span_may_be_emptied(self):
    tokens = np.array([10, 20, 21, 30, EOS])
    out, _ = fc.fit_to_length(tokens, 3, eos_id=EOS, body_span=(1, 3))
    np.testing.assert_array_equal(out, [10, 30, EOS])

  def test_too_short_for_the_kept_parts_names_the_fix(self):
    tokens = np.array([10, 11, 20, 30, 31, EOS])
    with self.assertRaisesRegex(ValueError, "at least 6"):
      fc.fit_to_length(tokens, 4, eos_id=EOS, body_span=(2, 3))


class FeatureLengthsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("sft", "sft", {"inputs": 8, "targets": 4}),
      ("pairs", "pairs", {"inputs": 8, "targets": 4}),
      ("prompts", "prompts", {"inputs": 8}),
      ("prompts_with_refs", "prompts", {"inputs": 8, "targets": 4}),
  )
  def test_valid(self, kind, lengths):
    fc.validate_feature_lengths(kind, lengths)

  @parameterized.named_parameters(
      ("bad_kind", "dpo", {"inputs": 8}, "not a batch kind"),
      ("missing", "sft", {"inputs": 8}, "needs the keys"),
      ("unknown", "pairs", {"inputs": 8, "targets": 4, "chosen": 4},
       "needs the keys"),
      ("not_int", "prompts", {"inputs": 8.0}, "must be an int"),
      ("too_short", "prompts", {"inputs": 1}, ">= 2"),
  )
  def test_invalid(self, kind, lengths, message):
    with self.assertRaisesRegex(ValueError, message):
      fc.validate_feature_lengths(kind, lengths)

  def test_pairs_lengths_share_targets(self):
    lengths = fc.batch_lengths(
        "pairs", {"inputs": 8, "targets": 4},
        ("inputs", "chosen", "rejected"), "t")
    self.assertEqual(lengths, {"inputs": 8, "chosen": 4, "rejected": 4})

  def test_prompts_targets_only_when_asked(self):
    task_features = ("inputs", "targets")
    self.assertEqual(
        fc.batch_lengths("prompts", {"inputs": 8}, task_features, "t"),
        {"inputs": 8})
    self.assertEqual(
        fc.batch_lengths("prompts", {"inputs": 8, "targets": 3},
                         task_features, "t"),
        {"inputs": 8, "targets": 3})

  def test_kind_the_task_cannot_serve(self):
    with self.assertRaisesRegex(ValueError, r"needs \['chosen', 'rejected'\]"):
      fc.batch_lengths("pairs", {"inputs": 8, "targets": 4},
                       ("inputs", "targets"), "my_sft")


class ConvertExamplesTest(absltest.TestCase):

  def test_arrays_and_flags(self):
    examples = [
        {"inputs": np.array([3, 4, EOS]), "targets": np.array([5, EOS]),
         "targets_pretokenized": b"ignored"},
        {"inputs": np.array([3, 4, 5, 6, EOS]), "targets": np.array([EOS])},
    ]
    out = fc.convert_examples(
        examples, {"inputs": 4, "targets": 3}, eos_id=EOS, dtype=np.uint16)
    self.assertEqual(out.num_examples, 2)
    self.assertEqual(out.arrays["inputs"].dtype, np.uint16)
    np.testing.assert_array_equal(out.arrays["inputs"],
                                  [[3, 4, EOS, 0], [3, 4, 5, EOS]])
    np.testing.assert_array_equal(out.arrays["targets"],
                                  [[5, EOS, 0], [EOS, 0, 0]])
    np.testing.assert_array_equal(out.truncated["inputs"], [False, True])
    np.testing.assert_array_equal(out.truncated["targets"], [False, False])

  def test_uses_body_span_feature(self):
    examples = [{"inputs": np.array([10, 20, 21, 22, 30, EOS]),
                 "inputs_body_span": np.array([1, 4], np.int32)}]
    out = fc.convert_examples(examples, {"inputs": 4}, eos_id=EOS)
    np.testing.assert_array_equal(out.arrays["inputs"], [[10, 20, 30, EOS]])

  def test_error_names_source_example_and_feature(self):
    examples = [{"inputs": np.array([3, EOS])},
                {"inputs": np.array([10, 20, 30, EOS]),
                 "inputs_body_span": np.array([1, 2], np.int32)}]
    with self.assertRaisesRegex(
        ValueError, r"tldr_sft:train: example 1, feature 'inputs'"):
      fc.convert_examples(examples, {"inputs": 2}, eos_id=EOS,
                          description="tldr_sft:train")


class ScalarFeaturesTest(absltest.TestCase):

  def _pairs(self, *scalars):
    return [{"inputs": np.array([3, EOS]), "chosen": np.array([4, EOS]),
             "rejected": np.array([5, EOS]), **extra} for extra in scalars]

  def _convert(self, examples):
    return fc.convert_examples(
        examples, {"inputs": 2, "chosen": 2, "rejected": 2}, eos_id=EOS,
        scalars=fc.SCALARS[fc.PAIRS], description="t:train")

  def test_label_defaults_to_one_and_gold_pref_is_optional(self):
    out = self._convert(self._pairs({}, {}))
    self.assertEqual(set(out.scalars), {"label"})
    np.testing.assert_array_equal(out.scalars["label"], [1.0, 1.0])
    self.assertEqual(out.scalars["label"].dtype, np.float32)
    out = self._convert(self._pairs(
        {"label": np.float32(0.25), "gold_pref": np.float32(0.75)},
        {"label": np.float32(1.0), "gold_pref": np.float32(0.5)}))
    np.testing.assert_array_equal(out.scalars["label"], [0.25, 1.0])
    np.testing.assert_array_equal(out.scalars["gold_pref"], [0.75, 0.5])
    empty = self._convert([])
    self.assertEqual({k: v.shape for k, v in empty.scalars.items()},
                     {"label": (0,)})

  def test_bad_scalars_name_the_example(self):
    with self.assertRaisesRegex(
        errors.DataError, r"t:train: example 1, feature 'label' is 1.5; it "
        r"must be a probability in \[0, 1\]"):
      self._convert(self._pairs({"label": 0.5}, {"label": 1.5}))
    with self.assertRaisesRegex(errors.DataError, "example 0, feature "
                                "'gold_pref' is nan"):
      self._convert(self._pairs({"gold_pref": float("nan")}))
    with self.assertRaisesRegex(
        errors.DataError, r"example 1 has the float features \[\] but "
        r"example 0 has \['gold_pref'\]"):
      self._convert(self._pairs({"gold_pref": 0.5}, {}))

  def test_truncation_summary(self):
    examples = [{"inputs": np.array([3, 4, 5, EOS]), "targets": np.array(
        [EOS])}] + [{"inputs": np.array([3, EOS]),
                     "targets": np.array([EOS])}] * 7
    out = fc.convert_examples(examples, {"inputs": 3, "targets": 4},
                              eos_id=EOS)
    self.assertEqual(
        out.truncation_summary("tldr_sft:train"),
        "tldr_sft:train: inputs truncated in 12.5% of 8 examples (3 tokens), "
        "targets in 0.0% (4 tokens)")


if __name__ == "__main__":
  absltest.main()
