"""Tests of ipo_md.data.tldr and ipo_md.data.jsonl: schemas and bad input."""

import json
import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
from ipo_md.data import errors
from ipo_md.data import tldr

from tests.testdata import make_testdata


def _tempdir(test: absltest.TestCase) -> pathlib.Path:
  tmp = tempfile.TemporaryDirectory()
  test.addCleanup(tmp.cleanup)
  return pathlib.Path(tmp.name)


def _write_lines(path: pathlib.Path, lines: list[str]) -> str:
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


class PromptTest(absltest.TestCase):

  def test_openai_format(self):
    self.assertEqual(
        tldr.format_prompt("tifu", "A title", "The post.\nMore."),
        "SUBREDDIT: r/tifu\n\nTITLE: A title\n\nPOST: The post.\nMore."
        "\n\nTL;DR:")

  def test_segments_join_to_the_prompt(self):
    record = tldr.prompt_record("tifu", "A title", "The post.")
    self.assertEqual(
        record["inputs_head"] + " " + record["inputs_body"]
        + record["inputs_tail"], record["inputs_pretokenized"])
    self.assertEqual(record["inputs_body"], "The post.")
    self.assertEqual(record["inputs_tail"], "\n\nTL;DR:")


class ReadSftTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = _tempdir(self)
    self.rows = make_testdata.tldr_sft_rows(3)

  def _file(self, rows) -> str:
    return str(make_testdata.write_jsonl(self.dir / "train.jsonl", rows))

  def test_reads_records_in_order(self):
    records = tldr.read_sft(self._file(self.rows))
    self.assertEqual([r["id"] for r in records], [r["id"] for r in self.rows])
    self.assertEqual(records[1]["targets"], self.rows[1]["summary"])
    self.assertEqual(set(records[0]), set(tldr.SFT_KEYS))

  @parameterized.named_parameters(
      ("missing_field", "summary", None, r"line 2: field 'summary' is missing"),
      ("empty_post", "post", "  \n", r"line 2: field 'post' is empty"),
      ("not_text", "title", 7, r"line 2: field 'title' is int '7', not a"),
  )
  def test_bad_field_names_file_line_field_and_fix(self, field, value,
                                                   message):
    rows = [dict(r) for r in self.rows]
    if value is None:
      del rows[1][field]
    else:
      rows[1][field] = value
    path = self._file(rows)
    with self.assertRaisesRegex(ValueError, message) as ctx:
      tldr.read_sft(path)
    self.assertIn(path, str(ctx.exception))
    self.assertIn("on_bad_example='skip'", str(ctx.exception))

  def test_bad_json(self):
    path = _write_lines(self.dir / "bad.jsonl",
                        [json.dumps(self.rows[0]), "{not json", "[1, 2]"])
    with self.assertRaisesRegex(ValueError, r"line 2: .* not valid JSON"):
      tldr.read_sft(path)

  def test_skip_drops_bad_lines_with_a_warning(self):
    rows = [dict(r) for r in self.rows]
    rows[0]["post"] = ""
    with self.assertLogs(level="WARNING") as logs:
      records = tldr.read_sft(self._file(rows), on_bad_example="skip")
    self.assertLen(records, 2)
    self.assertIn("Skipped 1 bad lines", logs.output[0])

  def test_non_utf8_line_names_file_line_and_fix(self):
    path = self.dir / "latin1.jsonl"
    lines = [json.dumps(r) for r in self.rows]
    latin1 = lines[1].replace('"title": "', '"title": "caf\u00e9 ')
    path.write_bytes((lines[0] + "\n" + latin1 + "\n").encode("latin1"))
    with self.assertRaisesRegex(
        errors.DataError, r"latin1\.jsonl, line 2: field '<line>' is not "
        r"UTF-8 \(byte b'\\xe9' at column \d+\); re-encode the file as "
        r"UTF-8 .*on_bad_example='skip'"):
      tldr.read_sft(str(path))
    self.assertLen(tldr.read_sft(str(path), on_bad_example="skip"), 1)

  def test_empty_file_is_an_error(self):
    for text in ("", "\n  \n"):
      path = self.dir / "empty.jsonl"
      path.write_text(text)
      with self.assertRaisesRegex(
          errors.DataError, r"empty\.jsonl is empty: it has no JSON lines.*"
          "openaipublic"):
        tldr.read_sft(str(path))
    with self.assertRaisesRegex(errors.DataError, "is a folder"):
      tldr.read_sft(str(self.dir))

  def test_missing_file_says_where_to_get_it(self):
    with self.assertRaisesRegex(FileNotFoundError,
                                r"nope\.jsonl: no such file.*openaipublic"):
      tldr.read_sft(str(self.dir / "nope.jsonl"))

  def test_unset_folder_says_how_to_configure_it(self):
    with self.assertRaisesRegex(ValueError, r"register_tldr_tasks\(sft_dir="):
      tldr.sft_path(None, tldr.SFT_FILES, "train")
    with self.assertRaisesRegex(ValueError, "No TL;DR SFT file for split"):
      tldr.sft_path("/data", {"train": "train.jsonl"}, "test")

  def test_bad_on_bad_example(self):
    with self.assertRaisesRegex(ValueError, "on_bad_example='ignore'"):
      tldr.read_sft(self._file(self.rows), on_bad_example="ignore")


class ReadComparisonsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = _tempdir(self)
    self.rows = make_testdata.tldr_comparison_rows(6)

  def _paths(self, rows) -> list[str]:
    make_testdata.write_jsonl(self.dir / "batch1.json", rows)
    return tldr.comparison_paths(str(self.dir))

  def test_split_filter_and_choice(self):
    records = tldr.read_comparisons(self._paths(self.rows), splits=("train",))
    train = [r for r in self.rows if r["split"] == "train"]
    self.assertLen(records, len(train))
    for record, row in zip(records, train):
      texts = [s["text"] for s in row["summaries"]]
      self.assertEqual(record["chosen"], texts[row["choice"]])
      self.assertEqual(record["rejected"], texts[1 - row["choice"]])
      self.assertEqual(record["inputs_body"], row["info"]["post"])

  def test_min_confidence(self):
    rows = [dict(r) for r in self.rows]
    for i, row in enumerate(rows):
      row["extra"] = {"confidence": i + 1} if i != 5 else {}
    records = tldr.read_comparisons(
        self._paths(rows), splits=("train", "valid1"), min_confidence=4)
    self.assertLen(records, 2)  # Confidences 4 and 5; the last has none.

  def test_cnndm_lines_are_left_out(self):
    cnndm = dict(self.rows[0], info={"id": "x", "article": "An article.",
                                     "site": "cnn"})
    records = tldr.read_comparisons(
        self._paths([cnndm] + self.rows), splits=("train", "valid1"))
    self.assertLen(records, len(self.rows))

  @parameterized.named_parameters(
      ("choice_2", {"choice": 2}, r"field 'choice' is 2, not 0 or 1"),
      ("choice_bool", {"choice": True}, r"field 'choice' is True"),
      ("one_summary", {"summaries": [{"text": " a"}]},
       r"field 'summaries' has 1 entries"),
      ("empty_summary", {"summaries": [{"text": " a"}, {"text": " "}]},
       r"field 'summaries\[1\].text' is empty"),
      ("no_post", {"info": {"id": "x", "title": "t", "subreddit": "s"}},
       r"field 'info.post' is missing"),
      ("no_split", {"split": None}, r"field 'split' is NoneType"),
  )
  def test_bad_line(self, change, message):
    rows = [dict(r) for r in self.rows]
    rows[3].update(change)
    paths = self._paths(rows)
    with self.assertRaisesRegex(ValueError, r"batch1\.json, line 4: "
                                + message):
      tldr.read_comparisons(paths, splits=("train",))

  def test_no_line_of_the_split_names_the_values_found(self):
    rows = [dict(r, split="unknown") for r in self.rows]
    rows[0]["split"] = "valid2"
    with self.assertRaises(errors.DataError) as ctx:
      tldr.read_comparisons(self._paths(rows), splits=("valid1",),
                            seqio_split="validation")
    self.assertEqual(
        str(ctx.exception),
        f"No TL;DR comparison for split 'validation' in 1 file(s) "
        f"({self.dir / 'batch1.json'}): it keeps lines whose \"split\" field "
        "is in ['valid1'], and the files have the split values {'unknown': 5,"
        " 'valid2': 1} (lines per value). Map the task splits to the values "
        "of your files with comparison_splits (default {'train': ('train',), "
        "'validation': ('valid1',), 'test': ('valid2',)}), e.g. gin: "
        "ipo_md_tasks.register_tldr_tasks.comparison_splits = {'validation': "
        "('unknown',)}.")

  def test_min_confidence_that_keeps_nothing_says_so(self):
    with self.assertRaisesRegex(
        errors.DataError, r"all have extra.confidence below min_confidence=10"
        r".*min_confidence = None"):
      tldr.read_comparisons(self._paths(self.rows), splits=("train",),
                            min_confidence=10)

  def test_locations(self):
    with self.assertRaisesRegex(ValueError, "comparisons_dir=DIR"):
      tldr.comparison_paths(None)
    with self.assertRaisesRegex(FileNotFoundError, r"No TL;DR comparison"):
      tldr.comparison_paths(str(self.dir))


if __name__ == "__main__":
  absltest.main()
