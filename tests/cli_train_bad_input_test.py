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

"""Hostile input to `ipo-md train`, in-process, on the micro job.

Every case must end in one message naming the thing, its value and the fix,
with exit status 2, no Python traceback on the console (the traceback goes
to the log file the message names), before any stage trains: the checks run
before anything is compiled, so each case costs well under a second to a
few seconds. A mistake in the last stage (beta, tau, label_mode, a missing
model, another vocabulary) is reported before the first stage trains.
"""

import contextlib
import dataclasses
import io
import json
import pathlib
import re
import time

import gin
import numpy as np
import pytest

from ipo_md import checkpoints
from ipo_md.checkpoints import lock as lock_lib
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5_layout
from ipo_md.cli import main as cli_main
from ipo_md.model import config as config_lib
from ipo_md.trainer import loop as loop_lib
import ipo_md_tasks

from tests.testdata import make_testdata

MICRO = "--gin_file=tests/testdata/gin/micro.gin"
# The micro job's policy (and preference model) architecture.
MICRO_CONFIG = config_lib.t5_1_1("tiny", vocab_size=64, num_encoder_layers=1,
                                 num_decoder_layers=1)
# Every check runs before compilation; generous for a loaded 2-core machine.
FAST_S = 60
TLDR = ["--gin.ipo_md_tasks.register_tldr_tasks.sft_dir='FX/tldr'",
        "--gin.ipo_md_tasks.register_tldr_tasks.vocabulary_path="
        f"'{make_testdata.TINY_SPM}'"]
EMPTY = ["--gin.ipo_md_tasks.register_tldr_tasks.sft_dir='FX/empty'",
         TLDR[1]]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> pathlib.Path:
  """Data files, traps and a checkpoint of another size."""
  root = tmp_path_factory.mktemp("fx")
  for split in ("train", "valid", "test"):
    make_testdata.write_jsonl(root / "tldr" / f"{split}.jsonl",
                              make_testdata.tldr_sft_rows(16))
    (root / "empty").mkdir(exist_ok=True)
    (root / "empty" / f"{split}.jsonl").write_text("")
  (root / "a_file").write_text("not a folder")
  (root / "bad.gin").write_text("this is not gin ((\n")
  (root / "include.gin").write_text("include 'nowhere.gin'\n")
  (root / "no_import.gin").write_text(
      "from __gin__ import dynamic_registration\n"
      "include 'tests/testdata/gin/micro.gin'\n"
      "faults.NaNAtSteps.steps = (1,)\n")
  other = dataclasses.replace(MICRO_CONFIG, mlp_dim=32)
  rng = np.random.default_rng(0)
  params = t5_layout.unflatten({
      p: rng.standard_normal(s).astype(np.float32)
      for p, s in t5_layout.param_shapes(other).items()})
  params_io.save_params(root / "pm_mlp32", params, other)
  return root


def _run(argv) -> tuple[int, str, str, float]:
  out, err = io.StringIO(), io.StringIO()
  start = time.monotonic()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli_main.main(["train", *argv])
  except SystemExit as e:  # argparse.
    code = e.code
  finally:
    gin.clear_config()
    for register in ipo_md_tasks.REGISTER_FNS:
      register()
  return code, out.getvalue(), err.getvalue(), time.monotonic() - start


def _fails(argv, pattern: str) -> tuple[str, str]:
  """Runs `ipo-md train argv`; asserts one clear error matching `pattern`
  (exit 2, no traceback, nothing trained, before any long work)."""
  code, out, err, seconds = _run(argv)
  assert code == 2, (code, out[-3000:], err[-3000:])
  assert re.search(pattern, err), err
  assert err.startswith("ipo-md train: error: "), err
  assert err.count("ipo-md train: error: ") == 1, err
  assert "Traceback" not in err + out, err + out
  assert not re.search(r"\] step +\d+/", out), "nothing may train"
  log = re.search(r"\(The full traceback is in (\S+)\.\)", err)
  if log:
    assert "Traceback" in pathlib.Path(log.group(1)).read_text()
  assert seconds < FAST_S, seconds
  return out, err


# (id, argv, regex of the message): FX stands for the fixture folder;
# --gin.MODEL_DIR is added last unless the argv names it (@RUN@) or says
# NO_RUN. MODEL_DIR must not be created by any of these.
CASES = [
    # gin files and bindings
    ("gin_file_misspelled", ["--gin_file=tests/testdata/gin/mikro.gin"],
     r"gin file 'tests/testdata/gin/mikro.gin' not found .*Check the "
     r"spelling, or add its folder with --gin_search_paths"),
    ("no_gin_file", [], r"No --gin_file given; e\.g\. --gin_file="),
    ("gin_file_is_a_folder", ["--gin_file=FX"], r"gin file '\S+' not found"),
    ("gin_syntax_error", ["--gin_file=FX/bad.gin"],
     r"Invalid gin configuration: Couldn't parse statement.*bad\.gin, line 1"
     r"(.|\n)*Check the names"),
    ("gin_include_missing", ["--gin_file=FX/include.gin"],
     r"Invalid gin configuration: Unable to open file: nowhere\.gin"),
    ("gin_module_not_imported", ["--gin_file=FX/no_import.gin"],
     r"Invalid gin configuration: 'faults' was not provided by an import "
     r"statement"),
    ("binding_parameter_misspelled", [MICRO, "--gin.losses.ipo_loss.taux=1"],
     r"Configurable 'losses.ipo_loss' doesn't have a parameter named 'taux'"),
    ("binding_configurable_misspelled", [MICRO, "--gin.losses.ipo_los.tau=1"],
     r"No configurable matching 'losses.ipo_los'"),
    ("binding_without_value", [MICRO, "--gin.ipo_md/loop.LoopConfig.seed"],
     r"Flag '--gin.ipo_md/loop.LoopConfig.seed' has no value; write "
     r"--gin.KEY=VALUE"),
    ("binding_unclosed_bracket", [MICRO, "--gin.MODEL_DIR=@RUN@",
                                  "--gin.losses.ipo_loss.tau=(1"],
     r"ends inside an unclosed bracket or string .*Close it"),
    ("macro_misspelled", [MICRO, "--gin.VOCAB_SIZ=128"],
     r"--gin.VOCAB_SIZ=128 sets the macro VOCAB_SIZ, which no gin file or "
     r"binding uses, so it would change nothing\. Did you mean VOCAB_SIZE\?"),
    # %gin.REQUIRED
    ("model_dir_required", [MICRO, "NO_RUN"],
     r"MODEL_DIR is not set: the gin files mark it %gin.REQUIRED\. Pass it "
     r"on the command line, e\.g\. --gin\.MODEL_DIR="),
    ("every_required_value_at_once", ["--gin_file=gin/ipo_md_large.gin"],
     r"INITIAL_CHECKPOINT, PREFERENCE_CHECKPOINT are not set: the gin files "
     r"mark them %gin.REQUIRED\. Pass each on the command line, e\.g\. "
     r"--gin\.INITIAL_CHECKPOINT=\.\.\. --gin\.PREFERENCE_CHECKPOINT="),
    # wrong types and values (each names its gin scope)
    ("num_steps_fractional", [MICRO, "--gin.sft/loop.LoopConfig.num_steps=2.5"],
     r"LoopConfig\.num_steps=2\.5 must be an int \(e\.g\. 1\)\. \(gin: "
     r"sft/LoopConfig\)"),
    ("num_steps_negative", [MICRO,
                            "--gin.ipo_md/loop.LoopConfig.num_steps=-1"],
     r"LoopConfig\.num_steps=-1 must be >= 0\. \(gin: ipo_md/LoopConfig\)"),
    ("batch_size_string",
     [MICRO, "--gin.sft/data_pipeline.DataConfig.batch_size='8'"],
     r"DataConfig\.batch_size='8' must be an int\. \(gin: sft/DataConfig\)"),
    ("log_every_zero", [MICRO, "--gin.pm/loop.LoopConfig.log_every=0"],
     r"LoopConfig\.log_every=0 must be >= 1\. \(gin: pm/LoopConfig\)"),
    ("learning_rate_negative",
     [MICRO, "--gin.ipo_md/pipeline.OptimizerConfig.learning_rate=-0.001"],
     r"OptimizerConfig\.learning_rate=-0\.001 must be a finite float > 0 "
     r".*\(gin: ipo_md/OptimizerConfig\)"),
    ("learning_rate_string",
     [MICRO, "--gin.ipo_md/pipeline.OptimizerConfig.learning_rate='fast'"],
     r"OptimizerConfig\.learning_rate='fast' must be a finite float > 0"),
    ("schedule_unknown",
     [MICRO, "--gin.ipo_md/pipeline.OptimizerConfig.schedule='cosine'"],
     r"OptimizerConfig\.schedule='cosine'; choose one of \('constant'"),
    ("nonfinite_policy_unknown",
     [MICRO, "--gin.ipo_md/loop.LoopConfig.nonfinite='ignore'"],
     r"GuardConfig\.nonfinite='ignore'; choose one of \('stop', 'skip'\)"),
    ("checkpoint_keep_zero",
     [MICRO, "--gin.ipo_md/checkpoints.CheckpointConfig.keep=0"],
     r"CheckpointConfig\(every=0, keep=0\): every must be >= 0 and keep >= "
     r"1\. \(gin: ipo_md/CheckpointConfig\)"),
    ("temperature_negative",
     [MICRO, "--gin.sampling.SamplingConfig.temperature=-1.0"],
     r"temperature=-1\.0 must be > 0; for greedy decoding use top_k=1"),
    ("target_length_zero", [MICRO, "--gin.TARGET_LENGTH=0"],
     r"feature_lengths\['targets'\]=0 must be >= 2 .*\(gin: sft/DataConfig\)"),
    ("feature_lengths_missing", [
        MICRO, "--gin.sft/data_pipeline.DataConfig.feature_lengths="
        "{'inputs': 64}"],
     r"feature_lengths=\{'inputs': 64\} does not fit kind='sft': it needs "
     r"the keys \['inputs', 'targets'\]"),
    ("no_stages", [MICRO, "--gin.train_script.train.stages=[]"],
     r"The run has no stages; set train\.stages = \[\.\.\.\]"),
    # the last stage's hyper-parameters, before the first stage trains
    ("beta_above_one", [MICRO, "--gin.objectives.OnlinePairwise.beta=1.5"],
     r"stage 'ipo_md': building its objective: OnlinePairwise\.beta=1\.5 "
     r"must be a float in \[0, 1\]"),
    ("tau_zero", [MICRO, "--gin.losses.ipo_loss.tau=0"],
     r"stage 'ipo_md': .*tau=0 must be a finite .*float > 0"),
    ("tau_negative", [MICRO, "--gin.losses.ipo_loss.tau=-1.0"],
     r"stage 'ipo_md': .*tau=-1\.0 must be a finite .*float > 0"),
    ("label_mode_unknown",
     [MICRO, "--gin.objectives.OnlinePairwise.label_mode='hardest'"],
     r"stage 'ipo_md': building its objective: OnlinePairwise\.label_mode="
     r"'hardest'; choose one of \('soft', 'bernoulli', 'argmax'\)"),
    # stages, models and data kinds
    ("trains_unknown_role", [MICRO, "--gin.pm/pipeline.Stage.trains='critic'"],
     r"stage 'pm': trains='critic'; choose one of \('policy', 'preference', "
     r"'reward'\)"),
    ("two_stages_one_name", [MICRO, "--gin.pm/pipeline.Stage.name='sft'"],
     r"stage 'sft': two stages have this name; give each a unique name"),
    ("reads_a_model_no_stage_provides", [
        MICRO, "--gin.ipo_md/pipeline.Stage.frozen={'reference': 'sft', "
        "'preference': 'pn'}"],
     r"stage 'ipo_md': reads the preference model from 'pn', which is not an "
     r"earlier stage \(earlier: \['sft', 'pm'\]\) nor 'initial'; no stage "
     r"or checkpoint provides it"),
    ("pairs_task_on_an_online_stage", [
        MICRO, "--gin.ipo_md/data_pipeline.DataConfig.task="
        "'synthetic_facts_comparisons'",
        "--gin.ipo_md/data_pipeline.DataConfig.kind='pairs'",
        "--gin.ipo_md/data_pipeline.DataConfig.feature_lengths={'inputs': 64, "
        "'targets': 12}"],
     r"stage 'ipo_md': its objective OnlinePairwise reads 'prompts' batches "
     r"but its data is kind 'pairs'"),
    ("prompts_task_on_an_sft_stage", [
        MICRO, "--gin.sft/data_pipeline.DataConfig.task="
        "'synthetic_facts_prompts'"],
     r"stage 'sft': task 'synthetic_facts_prompts' is a 'prompts' task, but "
     r"the stage reads 'sft' batches"),
    ("task_misspelled", [
        MICRO, "--gin.sft/data_pipeline.DataConfig.task='synthetic_facts_stf'"],
     r"No seqio task named 'synthetic_facts_stf' is registered\. Did you mean "
     r"'synthetic_facts_sft'\?"),
    ("split_unknown_in_the_last_stage", [
        MICRO, "--gin.ipo_md/data_pipeline.DataConfig.split='test'"],
     r"stage 'ipo_md': its data: Task 'synthetic_facts_prompts' has no split "
     r"'test'; it has \('train', 'validation'\)"),
    # vocabularies
    ("vocab_size_below_the_task_vocabulary", [MICRO, "--gin.VOCAB_SIZE=32"],
     r"stage 'sft': its data, read by the policy model: Task "
     r"'synthetic_facts_sft' has a vocabulary of 55 ids but the model embeds "
     r"only vocab_size=32.*Set the model's VOCAB_SIZE to at least 55"),
    ("task_vocabulary_larger_than_the_model", [
        MICRO, *TLDR, "--gin.sft/data_pipeline.DataConfig.task='tldr_sft'"],
     r"stage 'sft': its data, read by the policy model: Task 'tldr_sft' has a "
     r"vocabulary of 228 ids but the model embeds only vocab_size=64"),
    ("oracle_on_another_vocabulary", [
        MICRO, *TLDR, "--gin.VOCAB_SIZE=256",
        "--gin.ipo_md/data_pipeline.DataConfig.task='tldr_prompts'",
        "--gin.objectives.OnlinePairwise.preference=@oracle.FactsOracle()"],
     r"stage 'ipo_md': its objective's signal \(FactsOracle\) does not fit "
     r"task 'tldr_prompts': FactsOracle is the gold oracle of the synthetic "
     r"facts task .*'shorter wins'\. Judge this task with a learned model"),
    ("gold_judge_on_another_vocabulary", [
        MICRO, *TLDR, "--gin.VOCAB_SIZE=256",
        "--gin.eval/data_pipeline.DataConfig.task='tldr_prompts'"],
     r"stage 'sft': its evaluation's signal 'gold' \(FactsOracle\) does not "
     r"fit task 'tldr_prompts'"),
    ("vocabulary_unreadable_offline", [
        MICRO, "--gin.ipo_md_tasks.register_tldr_tasks.sft_dir='FX/tldr'",
        "--gin.ipo_md_tasks.register_tldr_tasks.vocabulary_path="
        "'FX/nowhere.model'",
        "--gin.sft/data_pipeline.DataConfig.task='tldr_sft'"],
     r"stage 'sft': its data: Task 'tldr_sft': cannot read its vocabulary "
     r"\S+nowhere\.model .*Set vocabulary_path of "
     r"ipo_md_tasks\.register_tldr_tasks"),
    # meshes and batches (conftest: 8 devices)
    ("mesh_does_not_use_the_devices", [
        MICRO, "--gin.partitioning.MeshConfig.data=3"],
     r"Mesh \(data=3, model=1\) does not use the 8 devices; set data \* "
     r"model = 8 \(or data=-1\)"),
    ("mesh_model_axis_too_large", [
        MICRO, "--gin.partitioning.MeshConfig.model=16"],
     r"MeshConfig\.model=16 must be a positive divisor of the 8 available "
     r"devices"),
    ("mesh_cannot_split_a_parameter", [
        MICRO, "--gin.partitioning.MeshConfig.data=1",
        "--gin.partitioning.MeshConfig.model=8"],
     r"models\['\w+'\] on mesh \{'data': 1, 'model': 8\}: Cannot shard \S+: "
     r"shape \(\d+, \d+\), a dimension of size \d+ is not "
     r"divisible by mesh axis 'model' of size 8"),
    ("batch_the_data_axis_does_not_divide", [
        MICRO, "--gin.pm/data_pipeline.DataConfig.batch_size=6"],
     r"stage 'pm': DataConfig\.batch_size=6 must be divisible by the data "
     r"mesh size 8; set it to a multiple of 8"),
    ("evaluation_batch_the_data_axis_does_not_divide", [
        MICRO, "--gin.eval/data_pipeline.DataConfig.batch_size=6"],
     r"stage 'sft': its evaluation DataConfig\.batch_size=6 must be divisible "
     r"by the data mesh size 8"),
    ("microbatches_do_not_divide_the_batch", [
        MICRO, "--gin.sft/loop.LoopConfig.num_microbatches=3"],
     r"stage 'sft': batch_size=8 must be divisible by num_microbatches=3"),
    # initial checkpoints
    ("initial_checkpoint_missing", [
        MICRO, "--gin.train_script.train.initial_checkpoint='FX/nowhere'"],
     r"stage 'sft': the policy model's initial checkpoint: Initial checkpoint "
     r"\S+nowhere is not a directory\. Set train\.initial_checkpoint"),
]


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_one_clear_error_before_anything_is_written(fx, tmp_path, argv,
                                                    pattern):
  run = tmp_path / "run"
  named = "NO_RUN" in argv or any("@RUN@" in a for a in argv)
  argv = [a.replace("FX", str(fx)).replace("@RUN@", str(run))
          for a in argv if a != "NO_RUN"]
  _fails(argv + ([] if named else [f"--gin.MODEL_DIR={run}"]), pattern)
  assert not run.exists(), "nothing may be written before the checks"


# --- Cases that need MODEL_DIR (checked, or holding a run). ----------------


@pytest.mark.parametrize("where,pattern", [
    ("a_file", r"MODEL_DIR='\S+a_file' is a file, not a folder\. Choose a "
     r"folder \(it is created if absent\), e\.g\. --gin\.MODEL_DIR="),
    ("a_file/run", r"MODEL_DIR='\S+a_file/run' is not writable \(Not a "
     r"directory\)\. Choose a folder you can write"),
])
def test_model_dir_that_cannot_be_a_folder(fx, where, pattern):
  _fails([MICRO, f"--gin.MODEL_DIR={fx / where}"], pattern)
  assert (fx / "a_file").read_text() == "not a folder"


def test_an_empty_json_lines_file_of_a_later_stage(fx, tmp_path):
  """The IPO-MD stage reads an empty file: refused before SFT trains."""
  run = tmp_path / "run"
  _fails([MICRO, f"--gin.MODEL_DIR={run}", *[a.replace("FX", str(fx))
                                             for a in EMPTY],
          "--gin.VOCAB_SIZE=256",
          "--gin.ipo_md/data_pipeline.DataConfig.task='tldr_prompts'"],
         r"stage 'ipo_md': its data \(tldr_prompts:validation\): \S+/empty/"
         r"valid\.jsonl is empty: it has no JSON lines\. Point the task at the "
         r"complete file")
  assert not (run / "sft").exists()


def test_a_preference_checkpoint_of_another_size(fx, tmp_path):
  _fails([MICRO, f"--gin.MODEL_DIR={tmp_path / 'run'}",
          f"--gin.pm/models.ModelSpec.initial_checkpoint='{fx / 'pm_mlp32'}'",
          "--gin.pm/pipeline.Stage.init='initial'"],
         r"stage 'pm': the preference model's initial checkpoint: .*mlp_dim: "
         r"checkpoint 32 vs model 128")
  assert not (tmp_path / "run" / "sft").exists()


def test_a_second_run_on_the_same_model_dir(tmp_path):
  run = tmp_path / "run"
  with lock_lib.RunLock(run):
    _, err = _fails([MICRO, f"--gin.MODEL_DIR={run}"],
                    rf"MODEL_DIR {run} is in use by another run: PID \d+ on "
                    r"host .*It is still running on this host: wait for it, "
                    r"or stop it first; or use another MODEL_DIR")
    assert not (run / "config.gin").exists()
    assert not (run / "sft").exists()
  assert not (run / lock_lib.LOCK_FILE).exists()


def _fake_checkpoint(stage_dir: pathlib.Path, step: int, **data) -> None:
  """A sealed checkpoint whose meta says `step` (a stand-in state: the run
  reads only the meta before it refuses)."""
  ck = checkpoints.Checkpointer(stage_dir / "checkpoints",
                                checkpoints.CheckpointConfig())
  stream = {"task": "synthetic_facts_sft", "split": "validation", "seed": 0,
            "shuffle": True, "batch_size": 8, "max_examples": None, **data}
  ck.save(step, {"w": np.zeros(2, np.float32)}, {
      "step": step, "data_position": step, "data": stream,
      "model_config": dataclasses.asdict(MICRO_CONFIG)})
  ck.close()


@pytest.mark.parametrize("saved,pattern", [
    (dict(step=5), r"stage 'sft': \S+/sft already holds a checkpoint at step "
     r"5, beyond num_steps=3\. Set num_steps >= 5 to continue it, or use a "
     r"fresh MODEL_DIR"),
    (dict(step=2, batch_size=16), r"The checkpoint \S+/sft/checkpoints/2 was "
     r"written reading another data stream \(saved vs configured: "
     r"\{'batch_size': \(16, 8\)\}\).*Set DataConfig back to the saved values "
     r"to resume \(the mesh and the number of hosts may change\)"),
])
def test_a_rejected_rerun_rewrites_nothing(tmp_path, saved, pattern):
  """A finished stage rerun with fewer steps, or resumed with another global
  batch: refused, and MODEL_DIR/config.gin is left as it was."""
  run = tmp_path / "run"
  step = saved.pop("step")
  _fake_checkpoint(run / "sft", step, **saved)
  (run / "config.gin").write_text("# the first run's config\n")
  _fails([MICRO, f"--gin.MODEL_DIR={run}"], pattern)
  assert (run / "config.gin").read_text() == "# the first run's config\n"
  assert not (run / "pm").exists()
  assert not (run / lock_lib.LOCK_FILE).exists()


def test_dry_run_notes_a_vocabulary_it_cannot_read(fx, tmp_path):
  """Under --dry_run (e.g. on a laptop without network for the T5 vocabulary
  on gs://) an unreadable vocabulary is a note, not an error."""
  code, out, err, _ = _run([
      MICRO, f"--gin.MODEL_DIR={tmp_path / 'run'}", "--dry_run",
      f"--gin.ipo_md_tasks.register_tldr_tasks.sft_dir='{fx / 'tldr'}'",
      "--gin.ipo_md_tasks.register_tldr_tasks.vocabulary_path="
      f"'{fx / 'nowhere.model'}'",
      "--gin.ipo_md/data_pipeline.DataConfig.task='tldr_prompts'"])
  assert code == 0, err
  assert out.count("note: the vocabulary of task 'tldr_prompts' cannot be "
                   "read here") == 1, out
  assert "Dry run: every stage planned, checked and traced" in out, out
  assert not (tmp_path / "run").exists()


def test_a_resume_compares_the_saved_data_stream():
  """What check_same_data compares is what _save writes."""
  from ipo_md.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top

  data = data_pipeline.DataConfig(task="synthetic_facts_sft", kind="sft",
                                  batch_size=8, feature_lengths={
                                      "inputs": 8, "targets": 8})
  stream = loop_lib.data_stream(data)
  loop_lib.check_same_data({"data": json.loads(json.dumps(stream))}, data,
                           "here")
  with pytest.raises(ValueError, match=r"\{'seed': \(1, 0\)\}"):
    loop_lib.check_same_data({"data": {**stream, "seed": 1}}, data, "here")
  loop_lib.check_same_data({}, data, "here")  # Older checkpoints: unchecked.
