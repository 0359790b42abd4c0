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
XSum download scripts (see `MANUAL_INSTRUCTIONS`), plus the split file it
downloads from GitHub. `prepare` runs that build once; the tasks then read the
prepared TFRecords from `data_dir` (local or gs://).
"""

from ipo_md.data import errors
import tensorflow as tf
import tensorflow_datasets as tfds

TFDS_NAME = "xsum:1.1.0"
TARBALL = "xsum-extracts-from-downloads.tar.gz"
SPLITS = ("train", "validation", "test")
# T5's task prefix for summarisation.
DEFAULT_PREFIX = "summarize: "
MANUAL_INSTRUCTIONS = (
    "Make the XSum tarball with the scripts of "
    "https://github.com/EdinburghNLP/XSum/tree/master/XSum-Dataset (download "
    "the BBC pages, extract them, then `tar -czf " + TARBALL + " "
    "xsum-extracts-from-downloads`), put it in a folder MANUAL_DIR and run "
    "`ipo-md data prepare-xsum --manual_dir=MANUAL_DIR --data_dir=DATA_DIR` "
    "once (it also downloads the split file from GitHub).")


def load_split(split: str, *, data_dir: str | None,
               tfds_name: str = TFDS_NAME) -> tf.data.Dataset:
  """The prepared split, in file order: {"document", "summary"} strings.

  Args:
    split: "train", "validation" or "test".
    data_dir: TFDS data folder; None is TFDS's default (~/tensorflow_datasets).
    tfds_name: the TFDS dataset and version.

  Returns:
    The dataset; a ValueError with the preparation steps if it is not built.
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


def prepare(*, data_dir: str | None, manual_dir: str,
            tfds_name: str = TFDS_NAME) -> None:
  """Builds TFDS XSum in `data_dir` from `manual_dir`/TARBALL (one-off)."""
  tarball = tf.io.gfile.join(manual_dir, TARBALL)
  if not tf.io.gfile.exists(tarball):
    raise errors.MissingDataError(f"{tarball}: no such file. {MANUAL_INSTRUCTIONS}")
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
