"""Every method's gin files: the paper's values in the large experiments,
and every tiny experiment planned with its method's objective.

Planning (every stage's objective, data, models, sources and batch checked)
is about a second for a tiny experiment but some 25 s for a large one on a
loaded 2-core CPU (the T5-L and T5-XL parameter shapes are traced), and the
full `--dry_run` traces the step too (about 3 minutes for the T5-large
Nash-MD-PG step). So by default the large files are parsed and their values
checked, and the large plans and traced dry runs run with IPO_MD_SLOW=1.
All eighteen experiments pass `ipo-md train --dry_run` (docs/methods.md).
"""

import inspect
import os
import pathlib

import gin
import pytest

from ipo_md.cli import gin_flags
from ipo_md.cli import train as train_cli
from ipo_md.trainer import objectives
from ipo_md.trainer import offline
from ipo_md.trainer import pipeline
from ipo_md.trainer import policy_gradient

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
METHODS = ("online_ipo", "ipo_md", "online_dpo", "online_slic", "nash_md_pg",
           "rlhf", "offline_ipo", "offline_dpo", "offline_slic")
# The paper's selected values (arXiv 2403.08635 App. B.3): (tau, beta, lr).
LARGE = {"online_ipo": (1.0, 0.0, 1e-4), "ipo_md": (1.0, 0.125, 1e-4),
         "online_dpo": (5.0, 0.0, 1e-4), "online_slic": (10.0, 0.0, 1e-4),
         "nash_md_pg": (0.008, 0.125, 3e-5), "rlhf": (0.05, None, 1e-4),
         "offline_ipo": (1.0, None, 1e-4), "offline_dpo": (5.0, None, 1e-4),
         "offline_slic": (10.0, None, 1e-4)}
LOSS = {"online_ipo": "ipo_loss", "ipo_md": "ipo_loss",
        "online_dpo": "dpo_loss", "online_slic": "slic_loss",
        "offline_ipo": "ipo_loss", "offline_dpo": "dpo_loss",
        "offline_slic": "slic_loss"}
SLOW = pytest.mark.skipif(os.environ.get("IPO_MD_SLOW") != "1",
                          reason="minutes on CPU; set IPO_MD_SLOW=1")


def _kind(method):
  if method == "nash_md_pg":
    return policy_gradient.NashMDPG
  if method == "rlhf":
    return policy_gradient.RLHF
  if method.startswith("offline"):
    return offline.OfflinePairwise
  return objectives.OnlinePairwise


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _flags(name):
  flags = ["--gin.MODEL_DIR='/tmp/unused'"]
  if name.endswith("_large"):
    flags.append("--gin.INITIAL_CHECKPOINT='/tmp/unused'")
    signal = "REWARD" if name.startswith("rlhf") else "PREFERENCE"
    flags.append(f"--gin.{signal}_CHECKPOINT='/tmp/unused'")
  return flags


def _parse(name):
  for path in gin_flags.DEFAULT_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(
      [str(GIN_DIR / "methods" / f"{name}.gin")],
      [f.removeprefix("--gin.") for f in _flags(name)],
      finalize_config=False)


def _value(key):
  """A binding's value, with macros (references to NAME/gin.macro)
  resolved."""
  value = gin.query_parameter(key)
  while (isinstance(value, gin.config.ConfigurableReference)
         and value.selector == "gin.macro"):
    value = gin.query_parameter(f"%{value.scopes[-1]}")
  return value


@pytest.mark.parametrize("method", METHODS)
def test_large_experiment_binds_the_papers_values(method):
  _parse(f"{method}_large")
  objective = gin.query_parameter("method/pipeline.Stage.objective")
  kind = _kind(method)
  assert objective.configurable.wrapped is kind
  assert _value("method/pipeline.Stage.name") == method
  tau, beta, lr = LARGE[method]
  scope = f"method/{kind.__module__.rsplit('.', 1)[-1]}.{kind.__name__}"
  if method in LOSS:
    assert _value(f"method/losses.{LOSS[method]}.tau") == tau
    assert (gin.query_parameter(f"{scope}.loss_fn").configurable.wrapped
            .__name__ == LOSS[method])
  else:
    assert _value(f"{scope}.tau") == tau
  if beta is not None:
    assert _value(f"{scope}.beta") == beta
  assert _value("method/pipeline.OptimizerConfig.learning_rate") == lr
  assert _value("method/pipeline.OptimizerConfig.schedule") == "constant"
  assert _value("method/loop.LoopConfig.num_steps") == (
      10000 if method == "rlhf" else 30000)
  batch = ("method_pairs" if method.startswith("offline")
           else "method_prompts")
  assert _value("method/pipeline.Stage.data").scopes == [batch]
  assert _value(f"{batch}/data_pipeline.DataConfig.batch_size") == 32


def _plan(name, monkeypatch):
  """The planned stages of gin/methods/<name>.gin, planned without tracing
  through the CLI's --dry_run."""
  planned = []
  # As the dry run plans (task vocabularies on gs:// are noted, not read).
  extra = ({"dry_run": True} if "dry_run" in inspect.signature(
      pipeline.plan).parameters else {})

  def describe(*, models, stages, mesh):
    planned.extend(pipeline.plan(models=models, stages=stages, mesh=mesh,
                                 trace=False, **extra))
    return {}

  monkeypatch.setattr(pipeline, "describe", describe)
  assert train_cli.main([f"--gin_file={GIN_DIR / 'methods' / name}.gin",
                         "--dry_run", *_flags(name)]) == 0
  return planned


def _check_planned(method, planned):
  stage = planned[-1]
  assert stage.stage.name == method
  assert type(stage.objective) is _kind(method)
  assert stage.stage.optimizer.learning_rate == gin.query_parameter(
      "%LEARNING_RATE")
  if hasattr(stage.objective, "tau"):
    assert stage.objective.tau == gin.query_parameter("%TAU")
  return stage


@pytest.mark.parametrize("method", METHODS)
def test_tiny_experiment_plans_from_the_sft_model(method, monkeypatch):
  planned = _plan(f"{method}_tiny", monkeypatch)
  stage = _check_planned(method, planned)
  signal_stage = {"rlhf": ["rm"]}.get(
      method, [] if method.startswith("offline") else ["pm"])
  assert [p.stage.name for p in planned] == ["sft", *signal_stage, method]
  assert stage.init == "sft"
  judges = set(getattr(stage.evaluation, "judges", {}))
  assert "gold" in judges


@SLOW
@pytest.mark.parametrize("method", METHODS)
def test_large_experiment_plans(method, monkeypatch):
  planned = _plan(f"{method}_large", monkeypatch)
  stage = _check_planned(method, planned)
  assert [p.stage.name for p in planned] == [method]
  assert stage.init == "initial"


@SLOW
@pytest.mark.parametrize("name,expected", [
    ("nash_md_pg_large", "[nash_md_pg] trains the policy (from initial): "
     "783.2M parameters, 2.92 GiB; reads reference from initial (783.2M), "
     "preference from initial (2849.8M)"),
    ("rlhf_tiny", "[rlhf] trains the policy (from sft): 0.2M parameters, "
     "0.00 GiB; reads reference from sft (0.2M), reward from rm (0.2M)"),
])
def test_dry_run_traces_every_stage(name, expected, capsys):
  assert train_cli.main([f"--gin_file={GIN_DIR / 'methods' / name}.gin",
                         "--dry_run", *_flags(name)]) == 0
  assert expected in capsys.readouterr().out
