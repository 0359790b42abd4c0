"""Every gin file parses, and the paper's large config builds abstractly."""

import pathlib

import gin
import jax
import pytest
import seqio
from jax.sharding import PartitionSpec as P

from ipo_md.cli import gin_flags
from ipo_md.cli import train as train_cli
import ipo_md_tasks

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()
  # A gin file may re-register the synthetic tasks (pm_synthetic.gin: more
  # comparisons per document); later tests in this process expect defaults.
  ipo_md_tasks.register_synthetic_tasks()


@pytest.mark.parametrize("size,expected_millions", [
    ("tiny", 4.31), ("small", 76.96), ("base", 247.58), ("large", 783.15),
    ("xl", 2849.76)])
def test_model_gin_files(size, expected_millions):
  for path in gin_flags.DEFAULT_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings([str(GIN_DIR / "runs/train.gin"),
                                       str(GIN_DIR / f"models/t5_1_1_{size}.gin")],
                                      ["MODEL_DIR = '/tmp/unused'"])
  cfg = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  from ipo_md.model import network, scoring  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  abstract = nn.unbox(scoring.abstract_params(network.Transformer(cfg)))
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract))
  assert count / 1e6 == pytest.approx(expected_millions, abs=0.01)


LARGE_FLAGS = ["--gin.MODEL_DIR='/tmp/unused'",
               "--gin.INITIAL_CHECKPOINT='/tmp/unused'",
               "--gin.PREFERENCE_CHECKPOINT='/tmp/unused'",
               "--gin.partitioning.MeshConfig.model=4"]


def test_large_config_builds_abstractly_with_shardings(capsys):
  """Policy T5-L + reference T5-L + preference model T5-XL on a (2,4) mesh,
  planned and traced abstractly (no memory, no checkpoint read), through
  the gin entry point the CLI calls (one trace: about 55 s of CPU)."""
  for path in gin_flags.DEFAULT_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(
      [str(GIN_DIR / "ipo_md_large.gin")],
      [f.removeprefix("--gin.") for f in LARGE_FLAGS],
      finalize_config=False)
  described = gin.get_configurable(train_cli.train)(dry_run=True)
  out = capsys.readouterr().out
  assert ("[ipo_md] trains the policy (from initial): 783.2M parameters, "
          "2.92 GiB; reads reference from initial (783.2M), preference from "
          "initial (2849.8M); mesh {'data': 2, 'model': 4}") in out, out
  # The paper's hyper-parameters, as the operative configuration holds them.
  assert gin.query_parameter("losses.ipo_loss.tau") == 1.0
  assert gin.query_parameter("objectives.OnlinePairwise.beta") == 0.125
  assert gin.query_parameter("ipo_md/data_pipeline.DataConfig.batch_size") == 32
  assert gin.query_parameter("ipo_md/pipeline.OptimizerConfig.learning_rate") == 1e-4
  assert gin.query_parameter("ipo_md/pipeline.OptimizerConfig.schedule") == "constant"
  assert gin.query_parameter("ipo_md/loop.LoopConfig.num_steps") == 30000
  assert gin.query_parameter("ipo_md/checkpoints.CheckpointConfig.every") == 2000
  pm = gin.query_parameter("%PREFERENCE_MODEL_CONFIG").scoped_configurable_fn()
  assert (pm.emb_dim, pm.num_encoder_layers, pm.mlp_dim) == (2048, 24, 5120)
  state = described["ipo_md"]["state"]
  layer = state.params["decoder"]["layers_0"]
  assert layer["mlp"]["wi_0"]["kernel"].shape == (1024, 2816)
  assert layer["mlp"]["wi_0"]["kernel"].sharding.spec == P(None, "model")
  assert layer["self_attention"]["out"]["kernel"].sharding.spec == P("model", None)
  assert state.params["token_embedder"]["embedding"].sharding.spec == P("model", None)
  # Adafactor keeps factored statistics only (no full-size second moment).
  opt_leaves = jax.tree_util.tree_leaves(state.opt_state)
  assert sum(x.size for x in opt_leaves) < 0.01 * 783e6
  # The frozen T5-XL preference model is sharded on the same mesh.
  pm = described["ipo_md"]["frozen_params"].preference
  pm_mlp = pm["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert pm_mlp.shape == (2048, 5120)
  assert pm_mlp.sharding.spec == P(None, "model")
  ref = described["ipo_md"]["frozen_params"].reference
  assert ref["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].shape == (1024,
                                                                       2816)


@pytest.mark.parametrize("gin_file,expected", [
    ("pm_tldr_xl.gin", "[pm] trains the preference (from initial): 2849.8M"),
    ("rm_tldr_xl.gin", "[rm] trains the reward (from initial): 2849.8M"),
    ("pm_synthetic.gin", "[pm] trains the preference (from sft): 0.2M"),
    ("ipo_md_tiny.gin", "[ipo_md] trains the policy (from sft): 0.2M "
     "parameters, 0.00 GiB; reads reference from sft (0.2M), preference from "
     "pm (0.2M)"),
])
def test_other_configs_plan_and_trace_abstractly(gin_file, expected, capsys):
  assert train_cli.main([f"--gin_file={GIN_DIR / gin_file}", "--dry_run",
                         "--gin.MODEL_DIR=/tmp/unused"]) == 0
  assert expected in capsys.readouterr().out


def test_pm_synthetic_trains_on_more_comparisons_per_document():
  assert train_cli.main([f"--gin_file={GIN_DIR / 'pm_synthetic.gin'}",
                         "--dry_run", "--gin.MODEL_DIR=/tmp/unused"]) == 0
  source = seqio.get_mixture_or_task("synthetic_facts_comparisons").source
  assert source.num_input_examples("train") == 32 * 8192
  assert source.num_input_examples("validation") == 1024


def _lengths(gin_file: str) -> dict[str, int]:
  for path in gin_flags.DEFAULT_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings([str(GIN_DIR / gin_file)],
                                      ["MODEL_DIR = '/tmp/unused'"])
  return {
      "inputs": gin.query_parameter("%INPUT_LENGTH"),
      "targets": gin.query_parameter("%TARGET_LENGTH"),
      "pm_inputs": gin.query_parameter("learned.PairwiseHead.input_length"),
      "pm_decoder": gin.query_parameter(
          "learned.PairwiseHead.decoder_length"),
  }


def test_main_job_lengths_hold_every_example_of_the_synthetic_task():
  """The main job's lengths cut no document, summary or candidate (with its
  EOS) of the splits it reads, and the PM's decoder holds two of the
  longest samples; gin/methods/embedded.gin (read here through a method's
  file) keeps the lengths its README results were measured with."""
  from ipo_md.data import synthetic  # pylint: disable=g-import-not-at-top
  lengths = _lengths("ipo_md_tiny.gin")
  assert (lengths["inputs"], lengths["targets"]) == (56, 28)
  assert lengths["pm_inputs"] == lengths["inputs"] + 1
  assert lengths["pm_decoder"] == 1 + 2 * (lengths["targets"] + 1)
  vocab = synthetic.vocabulary()
  size = lambda text: len(vocab.encode(text)) + 1  # + EOS
  longest = {"inputs": 0, "targets": 0}
  for split in ("train", "validation"):
    for ex in synthetic.generate(split):
      longest["inputs"] = max(longest["inputs"], size(ex["inputs"]))
      longest["targets"] = max(longest["targets"], size(ex["targets"]),
                               size(ex["ideal"]))
    for ex in synthetic.generate_comparisons(split):
      longest["targets"] = max(longest["targets"], size(ex["chosen"]),
                               size(ex["rejected"]))
  # By construction: 4 facts of 6 pieces and 4 distractors of at most 7;
  # 6 clauses of 4 (4 facts, one invented, one repeated).
  assert longest == {"inputs": 53, "targets": 25}
  assert longest["inputs"] <= lengths["inputs"]
  assert longest["targets"] <= lengths["targets"]
  gin.clear_config()
  assert _lengths("methods/online_ipo_tiny.gin") == {
      "inputs": 64, "targets": 32, "pm_inputs": 65, "pm_decoder": 67}
