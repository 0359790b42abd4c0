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

"""XSum (Narayan et al. 2018) through TFDS `xsum:1.1.0`: document -> summary.

TFDS cannot download the BBC articles: it builds the dataset from the tarball
`xsum-extracts-from-downloads.tar.gz` in its manual folder, made with the
XSum download scripts (see `MANUAL_INSTRUCTIONS`), and from the split file
`XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json` (the ids of each split), which the
TFDS builder would download from GitHub. `prepare` runs that build once and
never uses the network: it reads the split file from `split_file` or from the
manual folder, checks it, and hands it to TFDS in place of the download. The
tasks then read the prepared TFRecords from `data_dir` (local or gs://).
"""

import functools
import json
import os

from etils import epath
from ipo_md.data import errors
import tensorflow as tf
import tensorflow_datasets as tfds

TFDS_NAME = "xsum:1.1.0"
TARBALL = "xsum-extracts-from-downloads.tar.gz"
# The split ids; TFDS's xsum builder downloads SPLIT_URL.
SPLIT_FILE = "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json"
SPLIT_URL = ("https://raw.githubusercontent.com/EdinburghNLP/XSum/master/"
             f"XSum-Dataset/{SPLIT_FILE}")
SPLITS = ("train", "validation", "test")
# T5's task prefix for summarisation.
DEFAULT_PREFIX = "summarize: "
MANUAL_INSTRUCTIONS = (
    "Make the XSum tarball with the scripts of "
    "https://github.com/EdinburghNLP/XSum/tree/master/XSum-Dataset (download "
    "the BBC pages, extract them, then `tar -czf " + TARBALL + " "
    "xsum-extracts-from-downloads`), put it in a folder MANUAL_DIR together "
    f"with the split file (`curl -fO {SPLIT_URL}`) and run `ipo-md data "
    "prepare-xsum --manual_dir=MANUAL_DIR --data_dir=DATA_DIR` once (no "
    "network needed).")


def load_split(split: str, *, data_dir: str | None,
               tfds_name: str = TFDS_NAME) -> tf.data.Dataset:
  """The prepared split, in file order: {"document", "summary"} strings.

  Args:
    split: "train", "validation" or "test".
    data_dir: TFDS data folder; None is TFDS's default (~/tensorflow_datasets).
    tfds_name: the TFDS dataset and version.

  Returns:
    The dataset; a DataError with the preparation steps if it is not built.
  """
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  try:
    return builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:  # TFDS's "could not find data in ...".
    raise errors.DataError(
        f"TFDS {tfds_name} is not prepared in data_dir={data_dir!r} "
        f"({e}). {MANUAL_INSTRUCTIONS} Then pass the same DATA_DIR to "
        "ipo_md_tasks.register_xsum_tasks(data_dir=...) (gin: "
        "`ipo_md_tasks.register_xsum_tasks.data_dir = 'DATA_DIR'`; "
        "`ipo-md data inspect`: --xsum_data_dir=DATA_DIR).") from None


def read_split_file(path: str) -> dict[str, list[str]]:
  """The ids of each split in an XSum split file, checked.

  Raises:
    MissingDataError: no file at `path` (the message says how to get it).
    DataError: the file is not JSON or lacks a list of ids per split.
  """
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise errors.MissingDataError(
        f"XSum split file {path}: no such file. TFDS builds XSum from "
        f"{SPLIT_FILE} (the ids of each split); download it once on a "
        f"machine with network (`curl -fO {SPLIT_URL}`), then put it in the "
        f"manual folder beside {TARBALL} or pass --split_file=PATH "
        "(Python: xsum.prepare(split_file=PATH)).")
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read()
  try:
    ids = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.DataError(
        f"XSum split file {path} is not valid JSON ({e}); download it again "
        f"from {SPLIT_URL}.") from None
  bad = [s for s in SPLITS if not isinstance(ids, dict)
         or not isinstance(ids.get(s), list)
         or not all(isinstance(i, str) for i in ids[s])]
  if bad:
    raise errors.DataError(
        f"XSum split file {path} has no list of string ids for {bad}; it "
        f"must be {{\"train\": [...], \"validation\": [...], \"test\": "
        f"[...]}} as {SPLIT_URL} is.")
  return {s: ids[s] for s in SPLITS}


def prepare(*, data_dir: str | None, manual_dir: str,
            split_file: str | None = None,
            tfds_name: str = TFDS_NAME) -> dict[str, int]:
  """Builds TFDS XSum in `data_dir`, offline (one-off).

  Args:
    data_dir: TFDS data folder; None is TFDS's default.
    manual_dir: folder holding TARBALL (and SPLIT_FILE unless `split_file`).
    split_file: the XSum split file, if not `manual_dir`/SPLIT_FILE.
    tfds_name: the TFDS dataset and version.

  Returns:
    Examples per split of the prepared dataset (ids of the split file that
    have no article in the tarball are left out by TFDS).
  """
  tarball = os.path.join(manual_dir, TARBALL)
  if not tf.io.gfile.exists(tarball):
    raise errors.MissingDataError(
        f"{tarball}: no such file. {MANUAL_INSTRUCTIONS}")
  split_path = split_file or os.path.join(manual_dir, SPLIT_FILE)
  read_split_file(split_path)  # Fails fast, before TFDS starts.
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  _serve_split_file_locally(builder, split_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return {s: int(builder.info.splits[s].num_examples) for s in SPLITS}


def _serve_split_file_locally(builder, split_path: str) -> None:
  """Makes the builder's download manager return `split_path` for the split
  file's URL (and refuse any other download), so preparing needs no network.

  TFDS checks a file found in the manual folder against the checksum of the
  official split file, which a trimmed split file (e.g. for a sample tarball)
  fails; serving the path directly accepts any split file `read_split_file`
  accepts.
  """
  make = builder._make_download_manager  # pylint: disable=protected-access

  def make_offline(*args, **kwargs):
    manager = make(*args, **kwargs)
    manager.download = functools.partial(_local_download, split_path)
    return manager

  # pylint: disable-next=protected-access
  builder._make_download_manager = make_offline


def _local_download(split_path: str, url):
  if url != SPLIT_URL:
    raise errors.DataError(
        f"TFDS asked to download {url!r}; `prepare` works offline and serves "
        f"only the XSum split file ({SPLIT_URL}). Is {TFDS_NAME} the "
        "dataset you meant?")
  return epath.Path(split_path)
