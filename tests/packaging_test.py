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

"""A non-editable install ships every gin file, task and asset.

The sources are copied to a temporary folder and installed from there with
`pip install --no-deps --no-build-isolation --target` (so the checkout gets
no build/ folder); a fresh interpreter in another folder, with only that
install on its path, must then find every gin file as NAME and gin/NAME,
parse the main job's configuration with its includes, and register the tasks.
"""

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN_FILES = sorted(str(p.relative_to(REPO / "gin"))
                   for p in (REPO / "gin").rglob("*.gin"))
# Run in the installed copy, from another folder.
CHECK = r"""
import json, os, sys
import gin
import ipo_md, ipo_md_tasks, seqio
from ipo_md.cli import gin_flags
from ipo_md.data import synthetic
names = json.loads(sys.argv[1])
search = list(gin_flags.DEFAULT_SEARCH_PATHS)
resolved = {n: [gin_flags.resolve(n, search),
                gin_flags.resolve("gin/" + n, search)] for n in names}
for path in search:
  gin.add_config_file_search_path(path)
gin.parse_config_files_and_bindings(
    [resolved["ipo_md_tiny.gin"][0]], ["MODEL_DIR = '/tmp/unused'"],
    finalize_config=False)
print(json.dumps({
    "ipo_md": ipo_md.__file__, "ipo_md_tasks": ipo_md_tasks.__file__,
    "gin_dir": gin_flags.gin_dir(), "resolved": resolved,
    "tasks": sorted(seqio.TaskRegistry.names()),
    "vocab_size": synthetic.vocabulary().vocab_size,
    "stages": len(gin.query_parameter("train_script.train.stages")),
}))
"""


def _can_build_wheels() -> bool:
  """pip builds this setup.py project without isolation only with the wheel
  package or setuptools >= 70.1 (which bundles bdist_wheel)."""
  try:
    importlib.metadata.version("wheel")
    return True
  except importlib.metadata.PackageNotFoundError:
    version = importlib.metadata.version("setuptools").split(".")
    return tuple(int(v) for v in version[:2] if v.isdigit()) >= (70, 1)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("packaging")
  src = root / "src"
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
  for name in ("ipo_md", "tasks", "gin"):
    shutil.copytree(REPO / name, src / name, ignore=ignore)
  shutil.copy(REPO / "setup.py", src / "setup.py")
  target = root / "site"
  if _can_build_wheels():
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
               "--no-build-isolation", "--no-compile", "--no-index",
               "--target", str(target), str(src)]
  else:  # build_py lays out exactly the files a pure-Python wheel holds.
    command = [sys.executable, "setup.py", "-q", "build_py", "--build-lib",
               str(target)]
  done = subprocess.run(command, cwd=src, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stdout + done.stderr
  return target


def test_every_gin_file_task_and_asset_is_shipped(site):
  assert "ipo_md_tiny.gin" in GIN_FILES and "runs/train.gin" in GIN_FILES
  shipped = sorted(str(p.relative_to(site / "ipo_md_gin"))
                   for p in (site / "ipo_md_gin").rglob("*.gin"))
  assert shipped == GIN_FILES
  for name in GIN_FILES:
    assert ((site / "ipo_md_gin" / name).read_bytes()
            == (REPO / "gin" / name).read_bytes()), name
  assert (site / "ipo_md" / "data" / "assets" /
          "synthetic_words.model").is_file()
  assert (site / "ipo_md_tasks" / "synthetic.py").is_file()


def test_installed_copy_finds_its_gin_files_from_another_folder(
    site, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3",
             JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, "-c", CHECK, json.dumps(GIN_FILES)], cwd=tmp_path,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  got = json.loads(done.stdout.strip().splitlines()[-1])
  assert got["ipo_md"].startswith(str(site)), got["ipo_md"]
  assert got["ipo_md_tasks"].startswith(str(site)), got["ipo_md_tasks"]
  assert got["gin_dir"] == str(site / "ipo_md_gin")
  for name, paths in got["resolved"].items():
    assert paths == [str(site / "ipo_md_gin" / name)] * 2, (name, paths)
  assert {"synthetic_facts_sft", "synthetic_facts_prompts",
          "synthetic_facts_comparisons", "tldr_sft",
          "xsum_sft"} <= set(got["tasks"])
  assert got["vocab_size"] == 55
  assert got["stages"] >= 2
