"""Every gin file parses, and the paper's large config builds abstractly."""

import pathlib

import gin
import jax
import pytest
from jax.sharding import PartitionSpec as P

from ipo_md.cli import gin_flags
from ipo_md.cli import train as train_cli

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


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


def test_large_config_builds_abstractly_with_shardings(capsys):
  described = train_cli.main([
      f"--gin_file={GIN_DIR / 'ipo_md_large.gin'}", "--dry_run",
      "--gin.MODEL_DIR=/tmp/unused", "--gin.INITIAL_CHECKPOINT='/tmp/unused'",
      "--gin.PREFERENCE=None", "--gin.partitioning.MeshConfig.model=4"])
  assert described == 0
  out = capsys.readouterr().out
  assert "[ipo_md] 783.2M parameters" in out
  assert "'data': 2, 'model': 4" in out
  # The paper's hyper-parameters, as the operative configuration holds them.
  assert gin.query_parameter("losses.ipo_loss.tau") == 1.0
  assert gin.query_parameter("objectives.OnlinePairwise.beta") == 0.125
  assert gin.query_parameter("ipo_md/data_pipeline.DataConfig.batch_size") == 32
  assert gin.query_parameter("ipo_md/pipeline.Stage.samples_per_row") == 2
  assert gin.query_parameter("ipo_md/pipeline.OptimizerConfig.learning_rate") == 1e-4
  assert gin.query_parameter("ipo_md/pipeline.OptimizerConfig.schedule") == "constant"
  assert gin.query_parameter("ipo_md/loop.LoopConfig.num_steps") == 30000
  assert gin.query_parameter("ipo_md/checkpoints.CheckpointConfig.every") == 2000
  pm = gin.query_parameter("%PREFERENCE_MODEL_CONFIG").scoped_configurable_fn()
  assert (pm.emb_dim, pm.num_encoder_layers, pm.mlp_dim) == (2048, 24, 5120)


def test_large_state_shardings():
  for path in gin_flags.DEFAULT_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(
      [str(GIN_DIR / "ipo_md_large.gin")],
      ["MODEL_DIR='/tmp/unused'", "INITIAL_CHECKPOINT='/tmp/unused'",
       "PREFERENCE=None", "partitioning.MeshConfig.model = 4"],
      finalize_config=False)
  described = gin.get_configurable(train_cli.train)(dry_run=True)
  state = described["ipo_md"]["state"]
  layer = state.params["decoder"]["layers_0"]
  assert layer["mlp"]["wi_0"]["kernel"].shape == (1024, 2816)
  assert layer["mlp"]["wi_0"]["kernel"].sharding.spec == P(None, "model")
  assert layer["self_attention"]["out"]["kernel"].sharding.spec == P("model", None)
  assert state.params["token_embedder"]["embedding"].sharding.spec == P("model", None)
  # Adafactor keeps factored statistics only (no full-size second moment).
  opt_leaves = jax.tree_util.tree_leaves(state.opt_state)
  assert sum(x.size for x in opt_leaves) < 0.01 * 783e6
