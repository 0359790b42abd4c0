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

"""ipo_md.cli.gin_flags: command-line bindings of the task registrations and
where the gin files are found, in-process and without training."""

import argparse
import os
import pathlib

import gin
from ipo_md.cli import data as data_cli
from ipo_md.cli import gin_flags
from ipo_md.data import pipeline
import ipo_md_tasks
import numpy as np
import pytest
import seqio

from tests.testdata import make_testdata

REPO = pathlib.Path(__file__).resolve().parents[1]
MICRO = str(REPO / "tests" / "testdata" / "gin" / "micro.gin")


@pytest.fixture(autouse=True)
def _clean():
  gin.clear_config()
  yield
  gin.clear_config()
  for register in ipo_md_tasks.REGISTER_FNS:
    register()


def _parse(argv: list[str], gin_files=(MICRO,)) -> None:
  argv, dot_bindings = gin_flags.split_gin_dot_flags(argv)
  parser = argparse.ArgumentParser()
  gin_flags.add_flags(parser)
  args = parser.parse_args([f"--gin_file={f}" for f in gin_files] + argv)
  gin_flags.parse(args, dot_bindings)


def test_task_locations_bind_on_the_command_line(tmp_path):
  # micro.gin imports ipo_md_tasks but binds no registration function.
  assert "register_tldr_tasks" not in pathlib.Path(MICRO).read_text()
  rows = make_testdata.tldr_sft_rows(3)
  make_testdata.write_jsonl(tmp_path / "valid.jsonl", rows)
  _parse([f"--gin.ipo_md_tasks.register_tldr_tasks.sft_dir={tmp_path}",
          "--gin.ipo_md_tasks.register_tldr_tasks.vocabulary_path="
          f"{make_testdata.TINY_SPM}",
          "--gin_bindings=ipo_md_tasks.register_tldr_tasks.extra_ids = 0",
          "--gin.losses.ipo_loss.tau=0.5", f"--gin.MODEL_DIR={tmp_path}"])
  assert gin.query_parameter(
      "ipo_md_tasks.register_tldr_tasks.sft_dir") == str(tmp_path)
  assert gin.query_parameter("losses.ipo_loss.tau") == 0.5
  data_cli.register_tasks_from_gin()  # What `ipo-md train` does next.
  batch = pipeline.load_batch(pipeline.DataConfig(
      task="tldr_sft", split="validation", kind="sft", batch_size=3,
      feature_lengths={"inputs": 128, "targets": 32}), 3)
  vocabulary = seqio.get_mixture_or_task(
      "tldr_sft").output_features["targets"].vocabulary
  assert vocabulary.extra_ids == 0
  for row, source in zip(batch["targets"], rows):
    assert vocabulary.decode(row.tolist()) == source["summary"].strip()
  assert np.all(batch["inputs"][:, 0] != 0)


def test_command_line_overrides_a_gin_file_binding(tmp_path):
  gin_file = tmp_path / "tldr.gin"
  gin_file.write_text(
      "from __gin__ import dynamic_registration\n"
      "import ipo_md_tasks\n"
      f"include '{MICRO}'\n"
      "ipo_md_tasks.register_tldr_tasks.sft_dir = '/from/the/file'\n")
  _parse([], gin_files=(str(gin_file),))
  assert gin.query_parameter(
      "ipo_md_tasks.register_tldr_tasks.sft_dir") == "/from/the/file"
  gin.clear_config()
  _parse(["--gin.ipo_md_tasks.register_tldr_tasks.sft_dir=/cmd"],
         gin_files=(str(gin_file),))
  assert gin.query_parameter(
      "ipo_md_tasks.register_tldr_tasks.sft_dir") == "/cmd"


def test_a_misspelled_task_parameter_is_named():
  with pytest.raises(SystemExit, match=r"Configurable 'ipo_md_tasks."
                     r"register_tldr_tasks' doesn't have a parameter named "
                     r"'sft_dirr'"):
    _parse(["--gin.ipo_md_tasks.register_tldr_tasks.sft_dirr=/x"])


@pytest.mark.parametrize("binding,is_task", [
    ("ipo_md_tasks.register_tldr_tasks.sft_dir='/x'", True),
    ("scope/ipo_md_tasks.register_xsum_tasks.data_dir = '/x'", True),
    ("losses.ipo_loss.tau=1.0", False),
    ("MODEL_DIR='/ipo_md_tasks.x'", False),
])
def test_is_task_binding(binding, is_task):
  assert gin_flags.is_task_binding(binding) == is_task


def test_gin_files_resolve_from_any_folder(tmp_path, monkeypatch):
  gin_dir = pathlib.Path(gin_flags.gin_dir())
  assert (gin_dir / "runs" / "train.gin").is_file()
  assert str(gin_dir) == gin_flags.DEFAULT_SEARCH_PATHS[0]
  monkeypatch.chdir(tmp_path)
  search = list(gin_flags.DEFAULT_SEARCH_PATHS)
  for name in ("ipo_md_tiny.gin", "gin/ipo_md_tiny.gin",
               "models/t5_1_1_tiny.gin", "gin/models/t5_1_1_tiny.gin"):
    resolved = gin_flags.resolve(name, search)
    assert os.path.samefile(resolved, gin_dir / name.removeprefix("gin/"))
  with pytest.raises(FileNotFoundError, match="gin file 'gin/nope.gin' not "
                     "found .*--gin_search_paths"):
    gin_flags.resolve("gin/nope.gin", search)
  # The includes resolve through the search path too.
  _parse(["--gin.MODEL_DIR=/tmp/unused"], gin_files=("gin/ipo_md_tiny.gin",))
  assert gin.query_parameter("%MODEL_DIR") == "/tmp/unused"


def test_a_gin_file_and_its_include_on_a_bucket():
  """--gin_file=gs://... and an `include` beside it are read through epath
  (here the in-memory gs:// of tests/checkpoints_fakefs.py, which fails if
  anything went through pathlib/os); the shipped files still resolve."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  from tests import checkpoints_fakefs  # pylint: disable=g-import-not-at-top

  with checkpoints_fakefs.fake_gcs():
    epath.Path("gs://bucket/exp/base.gin").write_text(
        "from __gin__ import dynamic_registration\n"
        "from ipo_md import losses\n"
        "losses.ipo_loss.tau = 0.25\n")
    epath.Path("gs://bucket/exp/run.gin").write_text(
        "include 'ipo_md_tiny.gin'\n"
        "include 'gs://bucket/exp/base.gin'\n")
    _parse(["--gin.MODEL_DIR=gs://bucket/run"],
           gin_files=("gs://bucket/exp/run.gin",))
    assert gin.query_parameter("losses.ipo_loss.tau") == 0.25
    assert gin.query_parameter("%MODEL_DIR") == "gs://bucket/run"
    with pytest.raises(FileNotFoundError, match="gs://bucket/exp/nope.gin"):
      gin_flags.resolve("gs://bucket/exp/nope.gin", [])
