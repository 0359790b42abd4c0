"""Tests of the XSum tasks: TFDS mock data, and the real tarball if present."""

import contextlib
import importlib.util
import io
import json
import pathlib
import tarfile
import tempfile
from unittest import mock

from absl.testing import absltest
from ipo_md.cli import data as data_cli
from ipo_md.data import errors
from ipo_md.data import pipeline
from ipo_md.data import xsum
import ipo_md_tasks
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from tests.conftest import SHARED_DATA
from tests.testdata import make_testdata

XSUM_SAMPLE = SHARED_DATA / "xsum"
# TFDS builds datasets (download_and_prepare) only with this package.
HAS_IMPORTLIB_RESOURCES = importlib.util.find_spec("importlib_resources")
T5_SPM = SHARED_DATA / "t5_spiece.model"


def _tempdir(test) -> pathlib.Path:
  tmp = tempfile.TemporaryDirectory()
  test.addClassCleanup(tmp.cleanup)
  return pathlib.Path(tmp.name)


def _config(task, kind="sft", split="train", lengths=None):
  return pipeline.DataConfig(
      task=task, split=split, kind=kind, batch_size=2,
      feature_lengths=lengths or {"inputs": 64, "targets": 16})


class XsumMockTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.empty_dir = _tempdir(cls)
    ipo_md_tasks.register_xsum_tasks(
        data_dir=str(cls.empty_dir), prefix="tl;dr: ",
        vocabulary_path=str(make_testdata.TINY_SPM), extra_ids=0,
        name_prefix="test_xsum")
    cls.vocabulary = seqio.get_mixture_or_task(
        "test_xsum_sft").output_features["inputs"].vocabulary

  def test_default_tasks_are_registered(self):
    for name in ("xsum_sft", "xsum_prompts"):
      self.assertEqual(tuple(seqio.get_mixture_or_task(name).splits),
                       ("train", "validation", "test"))

  def test_mock_examples_get_the_prefix_and_eos(self):
    with tfds.testing.mock_data(num_examples=6):
      batch = pipeline.load_batch(_config("test_xsum_sft"), 6)
      prompts = pipeline.load_batch(
          _config("test_xsum_prompts", kind="prompts", split="validation",
                  lengths={"inputs": 64}), 3)
    prefix = self.vocabulary.encode("tl;dr:")
    for row in batch["inputs"]:
      self.assertEqual(row[: len(prefix)].tolist(), prefix)
      self.assertEqual(row[np.flatnonzero(row)[-1]], 1)
    self.assertEqual(batch["targets"].shape, (6, 16))
    self.assertEqual(set(prompts), {"inputs"})

  def test_unprepared_data_says_how_to_prepare_it(self):
    with self.assertRaisesRegex(ValueError, r"not prepared.*prepare-xsum"):
      pipeline.make_iterator(_config("test_xsum_sft"))

  def test_prepare_needs_the_tarball(self):
    with self.assertRaisesRegex(FileNotFoundError, xsum.TARBALL):
      xsum.prepare(data_dir=str(self.empty_dir),
                   manual_dir=str(self.empty_dir))

  def test_prepare_without_split_file_fails_fast_with_the_fix(self):
    manual = _tempdir(self)
    (manual / xsum.TARBALL).write_bytes(b"")
    with mock.patch.object(tfds.download.DownloadManager, "download",
                           side_effect=AssertionError("network used")):
      with self.assertRaisesRegex(
          errors.MissingDataError,
          rf"XSum split file {manual}/{xsum.SPLIT_FILE}: no such file\. .*"
          rf"curl -fO {xsum.SPLIT_URL}.*--split_file=PATH"):
        xsum.prepare(data_dir=str(manual / "tfds"), manual_dir=str(manual))
    self.assertFalse((manual / "tfds").exists())

  def test_split_file_is_checked(self):
    folder = _tempdir(self)
    for text, message in (
        ("{", "is not valid JSON"),
        (json.dumps({"train": ["1"], "validation": [2]}),
         r"no list of string ids for \['validation', 'test'\]")):
      (folder / "split.json").write_text(text)
      with self.assertRaisesRegex(errors.DataError, message):
        xsum.read_split_file(str(folder / "split.json"))
    ids = {"train": ["a"], "validation": ["b"], "test": ["c", "d"]}
    (folder / "split.json").write_text(json.dumps(ids))
    self.assertEqual(xsum.read_split_file(str(folder / "split.json")), ids)


def _prepare_sample(data_dir: pathlib.Path) -> dict[str, list[str]]:
  """Builds TFDS xsum offline from the sample tarball and a local split file."""
  with tarfile.open(XSUM_SAMPLE / xsum.TARBALL) as tar:
    ids = sorted(pathlib.Path(n).stem for n in tar.getnames()
                 if n.endswith(".data"))
  split_ids = {"train": ids[:200], "validation": ids[200:260],
               "test": ids[260:]}
  split_file = data_dir / "split.json"
  split_file.write_text(json.dumps(split_ids))
  # No network: the split file is passed; everything else is local too.
  with mock.patch.object(tfds.download.DownloadManager, "download",
                         side_effect=AssertionError("network used")):
    counts = xsum.prepare(data_dir=str(data_dir / "tfds"),
                          manual_dir=str(XSUM_SAMPLE),
                          split_file=str(split_file))
  assert counts == {s: len(v) for s, v in split_ids.items()}, counts
  return split_ids


@pytest.mark.shared_data
@pytest.mark.skipif(not (XSUM_SAMPLE / xsum.TARBALL).is_file(),
                    reason=f"{XSUM_SAMPLE} (../shared/data) not present")
@pytest.mark.skipif(not HAS_IMPORTLIB_RESOURCES,
                    reason="TFDS needs `pip install importlib_resources` to "
                    "build datasets")
class XsumSampleTest(absltest.TestCase):
  """TFDS xsum:1.1.0 built from the real tarball of ../shared/data/xsum."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = _tempdir(cls)
    cls.split_ids = _prepare_sample(cls.data_dir)
    ipo_md_tasks.register_xsum_tasks(
        data_dir=str(cls.data_dir / "tfds"), vocabulary_path=str(T5_SPM),
        name_prefix="sample_xsum")

  def test_splits_match_the_cleaned_sample(self):
    sample = [json.loads(line) for line in
              (XSUM_SAMPLE / "xsum_test_sample.jsonl").open()]
    by_id = {row["id"]: row for row in sample}
    built = xsum.load_split("validation", data_dir=str(self.data_dir / "tfds"))
    summaries = sorted(ex["summary"].decode() for ex in tfds.as_numpy(built))
    self.assertEqual(
        summaries,
        sorted(by_id[i]["summary"] for i in self.split_ids["validation"]))

  def test_prepare_xsum_command_offline(self):
    # The split file in the documented place: the manual folder.
    manual = self.data_dir / "manual"
    manual.mkdir()
    (manual / xsum.TARBALL).symlink_to(XSUM_SAMPLE / xsum.TARBALL)
    (manual / xsum.SPLIT_FILE).write_text(json.dumps(self.split_ids))
    out = io.StringIO()
    with mock.patch.object(tfds.download.DownloadManager, "download",
                           side_effect=AssertionError("network used")):
      with contextlib.redirect_stdout(out):
        code = data_cli.main(["prepare-xsum", f"--manual_dir={manual}",
                              f"--data_dir={self.data_dir / 'tfds2'}"])
    self.assertEqual(code, 0)
    self.assertEqual(
        out.getvalue().strip().splitlines()[-1],
        f"Prepared {xsum.TFDS_NAME} in {self.data_dir / 'tfds2'}: train 200 "
        "examples, validation 60 examples, test 61 examples.")

  def test_prompts_with_the_t5_prefix(self):
    batch = pipeline.load_batch(
        _config("sample_xsum_prompts", kind="prompts", split="test",
                lengths={"inputs": 512, "targets": 64}), 4)
    vocabulary = seqio.get_mixture_or_task(
        "sample_xsum_prompts").output_features["inputs"].vocabulary
    for row in batch["inputs"]:
      self.assertTrue(vocabulary.decode(row.tolist()).startswith(
          "summarize: "))
    self.assertTrue(np.all(batch["targets"][:, 0] != 0))


if __name__ == "__main__":
  absltest.main()
