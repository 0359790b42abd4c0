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

"""Hostile input to `ipo-md data | convert | export | theory`, in-process.

Every case must end in one message naming the thing, its value and the fix,
with exit status 2, no traceback, nothing on stdout and nothing written.
(`ipo-md train`'s cases are in cli_train_test.py.)
"""

import contextlib
import io
import json
import pathlib
import re

import gin
from ipo_md.checkpoints import hf
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5_layout
from ipo_md.cli import main as cli_main
from ipo_md.model import config as config_lib
import ipo_md_tasks
import numpy as np
import pytest

from tests.testdata import make_testdata

CONFIG = config_lib.T5Config(vocab_size=32, emb_dim=8, num_heads=2,
                             head_dim=4, mlp_dim=16, num_encoder_layers=1,
                             num_decoder_layers=1)
SPM = str(make_testdata.TINY_SPM)
SYN = ["data", "inspect", "--task=synthetic_facts_sft", "--num_examples=0",
       "--max_examples=5"]
QUICK = ["--steps", "10", "--sampled-steps", "10", "--random-games", "1",
         "--beta-grid", "2", "--betas", "0.5"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> pathlib.Path:
  """Checkpoints, data files and traps (a regular file, a full folder)."""
  root = tmp_path_factory.mktemp("fx")
  rng = np.random.default_rng(0)
  params = t5_layout.unflatten({
      p: rng.standard_normal(s).astype(np.float32)
      for p, s in t5_layout.param_shapes(CONFIG).items()})
  params_io.save_params(root / "params", params, CONFIG)
  hf.export_hf(params, CONFIG, root / "hf")
  (root / "file.txt").write_text("x")
  (root / "full").mkdir()
  (root / "full" / "a").write_text("a")
  (root / "empty").mkdir()
  make_testdata.write_jsonl(root / "tldr" / "valid.jsonl",
                            make_testdata.tldr_sft_rows(3))
  rows = [json.dumps(r) for r in make_testdata.tldr_sft_rows(2)]
  latin1 = rows[1].replace('"title": "', '"title": "caf\u00e9 ')
  (root / "latin1").mkdir()
  (root / "latin1" / "valid.jsonl").write_bytes(
      (rows[0] + "\n" + latin1 + "\n").encode("latin1"))
  (root / "blank").mkdir()
  (root / "blank" / "valid.jsonl").write_text("\n")
  make_testdata.write_jsonl(
      root / "cmp" / "batch1.json",
      make_testdata.tldr_comparison_rows(4, splits=("unknown",)))
  (root / "bad_spm.model").write_bytes(b"not a sentencepiece model")
  (root / "manual").mkdir()
  (root / "manual" / "xsum-extracts-from-downloads.tar.gz").write_bytes(b"")
  (root / "garbage.json").write_text("[1, 2")
  (root / "wrong.json").write_text(json.dumps({"train": [1]}))
  return root


def _run(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli_main.main(argv)
  except SystemExit as e:  # argparse.
    code = e.code
  finally:
    gin.clear_config()
    for register in ipo_md_tasks.REGISTER_FNS:
      register()
  return code, out.getvalue(), err.getvalue()


# (argv with FX for the fixture folder, regex of the last stderr line).
CASES = [
    # data inspect
    (["data", "inspect", "--task=synthetic_facts_stf"],
     r"No seqio task named 'synthetic_facts_stf' is registered\. Did you "
     r"mean 'synthetic_facts_sft'\?"),
    (SYN + ["--split=test"], r"has no split 'test'; it has \('train', "
     r"'validation'\)"),
    (SYN + ["--lengths=inputs=0"],
     r"--lengths item 'inputs=0': a length counts EOS, so it must be >= 2"),
    (SYN + ["--lengths=bogus=5"], r"--lengths names \['bogus'\], which task "
     r"'synthetic_facts_sft' does not have; its lengths are \['inputs', "
     r"'targets'\]"),
    (SYN + ["--num_examples=-1"],
     r"argument --num_examples: -1 is not an integer >= 0"),
    (SYN + ["--max_examples=1.5"],
     r"argument --max_examples: '1.5' is not an integer >= 0"),
    (SYN + ["--gin_file=FX/nope.gin"],
     r"--gin_file FX/nope.gin: no such file .*check the path"),
    (SYN + ["--gin_binding=garbage"], r"invalid gin configuration: Couldn't "
     r"parse .*register_tldr_tasks: sft_dir, comparisons_dir"),
    (SYN + ["--gin_binding=ipo_md_tasks.register_tldr_tasks.nope = 1"],
     r"doesn't have a parameter named 'nope'.* PARAM one of "),
    (["data", "inspect", "--task=tldr_sft", "--tldr_sft_dir=FX/nowhere"],
     r"--tldr_sft_dir FX/nowhere: no such folder"),
    (["data", "inspect", "--task=tldr_sft", "--tldr_sft_dir=FX/file.txt"],
     r"--tldr_sft_dir FX/file.txt is a file, not a folder"),
    (["data", "inspect", "--task=tldr_sft", "--split=validation",
      "--tldr_sft_dir=FX/tldr", "--vocabulary_path=FX/no_spm.model"],
     r"Task 'tldr_sft': cannot read its vocabulary FX/no_spm.model "
     r"\(NotFoundError: .*\)\. Set vocabulary_path of "
     r"ipo_md_tasks\.register_tldr_tasks \(gin: "),
    (["data", "inspect", "--task=tldr_sft", "--split=validation",
      "--tldr_sft_dir=FX/tldr", "--vocabulary_path=FX/bad_spm.model"],
     r"cannot read its vocabulary FX/bad_spm.model \(DecodeError: .*--"
     r"vocabulary_path="),
    (["data", "inspect", "--task=tldr_sft", "--split=validation",
      "--tldr_sft_dir=FX/latin1", f"--vocabulary_path={SPM}"],
     r"FX/latin1/valid.jsonl, line 2: field '<line>' is not UTF-8 "),
    (["data", "inspect", "--task=tldr_sft", "--split=validation",
      "--tldr_sft_dir=FX/blank", f"--vocabulary_path={SPM}"],
     r"FX/blank/valid.jsonl is empty: it has no JSON lines"),
    (["data", "inspect", "--task=tldr_comparisons", "--split=validation",
      "--tldr_comparisons_dir=FX/cmp", f"--vocabulary_path={SPM}"],
     r"the files have the split values \{'unknown': 4\} .*"
     r"comparison_splits = \{'validation': \('unknown',\)\}"),
    # data prepare-xsum
    (["data", "prepare-xsum", "--manual_dir=FX/nowhere"],
     r"--manual_dir FX/nowhere: no such folder"),
    (["data", "prepare-xsum", "--manual_dir=FX/manual",
      "--data_dir=FX/tfds"],
     r"XSum split file FX/manual/XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json: "
     r"no such file\..*curl -fO .*--split_file=PATH"),
    (["data", "prepare-xsum", "--manual_dir=FX/manual",
      "--split_file=FX/garbage.json", "--data_dir=FX/tfds"],
     r"XSum split file FX/garbage.json is not valid JSON"),
    (["data", "prepare-xsum", "--manual_dir=FX/manual",
      "--split_file=FX/wrong.json", "--data_dir=FX/tfds"],
     r"has no list of string ids for \['train', 'validation', 'test'\]"),
    (["data", "prepare-xsum", "--manual_dir=FX/manual",
      "--data_dir=FX/file.txt"], r"--data_dir FX/file.txt is a file"),
    # convert
    (["convert", "--from_hf", "FX/nowhere", "--to", "FX/out"],
     r"--from_hf FX/nowhere: no such folder; give the folder of a Hugging "
     r"Face T5 checkpoint"),
    (["convert", "--from_hf", "FX/hf", "--to", "FX/file.txt/sub"],
     r"--to FX/file.txt/sub lies under FX/file.txt, which is a file"),
    (["convert", "--from_hf", "FX/hf", "--to", "FX/file.txt"],
     r"--to FX/file.txt is a file; give a folder path"),
    (["convert", "--from_hf", "FX/hf", "--to", "FX/full"],
     r"--to FX/full already exists and is not empty; choose a new folder"),
    (["convert", "--from_hf", "FX/hf", "--to", ""], r"--to is empty"),
    (["convert", "--from_hf", "FX/params", "--to", "FX/out"],
     r"--from_hf FX/params is a params checkpoint .*use it as "
     r"initial_checkpoint directly"),
    (["convert", "--from_t5x", "FX/hf", "--to", "FX/out"],
     r"--from_t5x FX/hf is a Hugging Face folder; use --from_hf"),
    (["convert", "--from_hf", "FX/hf", "--step=3", "--to", "FX/out"],
     r"--step and --mlp_activations apply to --from_t5x only; drop them"),
    (["convert", "--from_t5x", "FX/empty", "--step=-1", "--to", "FX/out"],
     r"argument --step: -1 is not an integer >= 0"),
    (["convert", "--from_t5x", "FX/empty", "--mlp_activations=swish",
      "--to", "FX/out"], r"--mlp_activations='swish': give one or two of "),
    (["convert", "--from_t5x", "FX/empty", "--to", "FX/out"],
     r"No T5X checkpoint in FX/empty"),
    # export
    (["export", "--from", "FX/nowhere", "--to_hf", "FX/out"],
     r"--from FX/nowhere: no such folder"),
    (["export", "--from", "FX/file.txt", "--to_hf", "FX/out"],
     r"--from FX/file.txt is a file, not a folder"),
    (["export", "--from", "FX/hf", "--to_hf", "FX/out"],
     r"--from FX/hf is a Hugging Face folder already"),
    (["export", "--from", "FX/params", "--to_hf", "FX/file.txt/sub"],
     r"--to_hf FX/file.txt/sub lies under FX/file.txt, which is a file"),
    (["export", "--from", "FX/params", "--to_hf", "FX/full"],
     r"--to_hf FX/full already exists and is not empty"),
    (["export", "--from", "FX/params", "--to_hf", "FX/out", "--step=3"],
     r"--step applies to training checkpoints, and --from FX/params is a "
     r"params checkpoint .*drop --step"),
    (["export", "--from", "FX/empty", "--to_hf", "FX/out"],
     r"No training checkpoint in FX/empty"),
    (["export", "--from", "FX/params", "--to_hf", "FX/out", "--step=1.5"],
     r"argument --step: '1.5' is not an integer >= 0"),
    # theory
    (["theory", "--out", "FX/file.txt/sub"] + QUICK,
     r"--out FX/file.txt/sub lies under FX/file.txt, which is a file"),
    (["theory", "--out", "FX/file.txt"] + QUICK, r"--out FX/file.txt is a "
     r"file"),
    (["theory", "--out", "FX/th", "--tau=0"],
     r"argument --tau: 0.0 is not a finite number > 0"),
    (["theory", "--out", "FX/th", "--tau=nan"],
     r"argument --tau: 'nan' is not a finite number > 0"),
    (["theory", "--out", "FX/th", "--eps=0.5"],
     r"argument --eps: 0.5 is not a number in \[-1/3, 1/3\]"),
    (["theory", "--out", "FX/th", "--betas", "0.5", "1.5"],
     r"argument --betas: 1.5 is not a number in \(0, 1\)"),
    (["theory", "--out", "FX/th", "--steps=1.5"],
     r"argument --steps: '1.5' is not an integer >= 1"),
    (["theory", "--out", "FX/th", "--learning-rate=-1"],
     r"argument --learning-rate: -1.0 is not a finite number > 0"),
    (["theory", "--out", "FX/th", "--beta-grid=1"],
     r"argument --beta-grid: 1 is not an integer >= 2"),
    (["theory", "--out", "FX/th", "--seed=-1"],
     r"argument --seed: -1 is not an integer >= 0"),
]


@pytest.mark.parametrize("argv,expected", CASES,
                         ids=[" ".join(a)[:70] for a, _ in CASES])
def test_one_clear_message_and_exit_2(fx, argv, expected):
  before = sorted(p.relative_to(fx) for p in fx.rglob("*"))
  code, out, err = _run([a.replace("FX", str(fx)) for a in argv])
  last = err.strip().splitlines()[-1] if err.strip() else ""
  assert code == 2, (code, err)
  assert "Traceback" not in err, err
  assert out == "", out
  assert re.search(expected.replace("FX", re.escape(str(fx))), last), last
  if "usage:" not in err:  # argparse prints its usage before the error.
    assert len(err.strip().splitlines()) == 1, err
  assert sorted(p.relative_to(fx) for p in fx.rglob("*")) == before
