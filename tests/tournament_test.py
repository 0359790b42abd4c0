"""The tournament's bookkeeping: stages per entrant and seed, and the method
tables (Table 2, beta sweep, online vs offline) from a policy matrix whose
values are known."""

import functools

import numpy as np
import pytest

from ipo_md import tournament
from ipo_md.data import pipeline as data_pipeline
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import pipeline


def _objective(**kwargs):
  return kwargs


def _stage(name):
  return pipeline.Stage(
      name=name, objective=functools.partial(_objective, beta=0.125),
      data=data_pipeline.DataConfig(task="t", kind="prompts", batch_size=8,
                                    feature_lengths={"inputs": 8}),
      loop=loop_lib.LoopConfig(num_steps=3), init="sft",
      frozen={"reference": "sft"})


def test_expand_names_seeds_and_sweep():
  entrants = [tournament.Entrant(name="ipo_md", stage=_stage("x")),
              tournament.Entrant(name="online_ipo", stage=_stage("y"))]
  stages, groups = tournament.expand(entrants, (0, 1),
                                     sweep_template=_stage("z"),
                                     sweep_betas=(0.5, 1.0), sweep_seeds=(3,))
  assert [s.name for s in stages] == [
      "ipo_md_s0", "ipo_md_s1", "online_ipo_s0", "online_ipo_s1",
      "ipo_md_beta0.5_s3", "ipo_md_beta1_s3"]
  assert [s.loop.seed for s in stages] == [0, 1, 0, 1, 3, 3]
  assert [s.data.seed for s in stages] == [0, 1, 0, 1, 3, 3]
  assert groups["ipo_md_s1"] == "ipo_md"
  assert groups["ipo_md_beta1_s3"] == "ipo_md_beta1"
  # The sweep overrides beta; the entrants keep their own.
  assert stages[0].objective(models=None)["beta"] == 0.125
  assert stages[4].objective(models=None)["beta"] == 0.5
  with pytest.raises(ValueError, match="sweep_betas is set without"):
    tournament.expand(entrants, (0,), sweep_betas=(0.5,))


def test_method_tables_from_a_known_policy_matrix():
  """Policies: sft, a_s0, a_s1, b_s0, b_s1, off_s0. p(a > b) is 0.7 for every
  seed pair except a_s1 > b_s1 = 0.6; everything else is antisymmetric."""
  names = ["sft", "a_s0", "a_s1", "b_s0", "b_s1", "off_s0"]
  groups = {"a_s0": "a", "a_s1": "a", "b_s0": "b", "b_s1": "b",
            "off_s0": "off"}
  m = np.full((6, 6), 0.5)

  def put(i, j, p):
    m[i, j], m[j, i] = p, 1 - p

  for i in (1, 2):
    for j in (3, 4):
      put(i, j, 0.7)
  put(2, 4, 0.6)
  put(1, 2, 0.55)  # Seeds of one method: not part of any cell but the
  put(3, 4, 0.45)  # diagonal of the method table.
  for i in (1, 2):
    put(i, 0, 0.8)
  for j in (3, 4):
    put(j, 0, 0.65)
  put(5, 0, 0.6)
  put(1, 5, 0.9)
  put(2, 5, 0.7)
  entrants = [tournament.Entrant(name="a", stage=None, family="ipo"),
              tournament.Entrant(name="b", stage=None),
              tournament.Entrant(name="off", stage=None, family="ipo",
                                 online=False)]
  summary = tournament.summarise({"matrix": m.tolist()}, names, groups,
                                 entrants, sweep_betas=(),
                                 pm_vs_reference={"a_s0": 0.9, "a_s1": 0.7})
  ab = summary["table"]["a"]["b"]
  np.testing.assert_allclose(ab["mean"], (0.7 * 3 + 0.6) / 4)
  np.testing.assert_allclose(ab["std"], np.std([0.7, 0.7, 0.7, 0.6]))
  np.testing.assert_allclose(summary["table"]["b"]["a"]["mean"],
                             1 - ab["mean"])
  np.testing.assert_allclose(summary["vs_reference"]["a"]["mean"], 0.8)
  np.testing.assert_allclose(summary["vs_reference"]["b"]["mean"], 0.65)
  np.testing.assert_allclose(summary["pm_vs_reference"]["a"]["mean"], 0.8)
  np.testing.assert_allclose(summary["pm_vs_reference"]["a"]["std"], 0.1)
  bt = summary["bradley_terry"]
  assert bt["a"] > bt["b"] > bt["sft"], bt
  ipo = summary["online_vs_offline"]["ipo"]
  np.testing.assert_allclose(ipo["online_vs_offline"]["mean"], 0.8)
  np.testing.assert_allclose(ipo["offline_vs_reference"]["mean"], 0.6)
  text = tournament.markdown(summary, seeds=(0, 1))
  assert "| **a** | 0.500 | 0.675 (0.043) |" in text, text
  assert "Ranking (Bradley-Terry strength, logit scale): a " in text


def test_beta_sweep_against_the_reference_and_online_ipo():
  names = ["sft", "online_ipo_s0", "ipo_md_beta0.5_s0", "ipo_md_beta1_s0"]
  groups = {"online_ipo_s0": "online_ipo",
            "ipo_md_beta0.5_s0": "ipo_md_beta0.5",
            "ipo_md_beta1_s0": "ipo_md_beta1"}
  m = np.full((4, 4), 0.5)
  for (i, j, p) in ((1, 0, 0.7), (2, 0, 0.66), (3, 0, 0.55), (2, 1, 0.48),
                    (3, 1, 0.4), (3, 2, 0.45)):
    m[i, j], m[j, i] = p, 1 - p
  entrants = [tournament.Entrant(name="online_ipo", stage=None)]
  summary = tournament.summarise({"matrix": m.tolist()}, names, groups,
                                 entrants, sweep_betas=(0.5, 1.0))
  sweep = summary["beta_sweep"]
  np.testing.assert_allclose(sweep["0.5"]["vs_reference"]["mean"], 0.66)
  np.testing.assert_allclose(sweep["1"]["vs_online_ipo"]["mean"], 0.4)


def test_tournament_tiny_gin_holds_every_method_with_its_values():
  """gin/tournament_tiny.gin: the nine methods of gin/methods/, each with
  the objective, loss, tau and data kind of its tiny method file, every one
  from the SFT model; the beta sweep over IPO-MD's stage. (Parsed and
  built only: planning every stage is `ipo-md tournament --dry_run`.)"""
  import gin  # pylint: disable=g-import-not-at-top

  import ipo_md_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ipo_md.cli import gin_flags  # pylint: disable=g-import-not-at-top
  from ipo_md.cli import tournament as tournament_cli  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import objectives  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import offline  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import policy_gradient  # pylint: disable=g-import-not-at-top

  want_names = ("online_ipo", "ipo_md", "online_dpo", "online_slic",
                "nash_md_pg", "rlhf", "offline_ipo", "offline_dpo",
                "offline_slic")
  got = {}
  gin.clear_config()
  for path in gin_flags.DEFAULT_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(
      ["tournament_tiny.gin"], ["MODEL_DIR = '/tmp/unused'"],
      finalize_config=False)
  try:
    entrants = gin.query_parameter(
        "tournament_script.tournament.entrants")
    with gin.config_scope(None):
      built = [e.scoped_configurable_fn() for e in entrants]
    template = gin.query_parameter(
        "tournament_script.tournament.sweep_template").scoped_configurable_fn()
    betas = gin.query_parameter("tournament_script.tournament.sweep_betas")
    bindings = {}
    for name in want_names:
      for key in (f"objectives.OnlinePairwise.beta",
                  "policy_gradient.NashMDPG.beta",
                  "losses.ipo_loss.tau", "losses.dpo_loss.tau",
                  "losses.slic_loss.tau", "policy_gradient.NashMDPG.tau",
                  "policy_gradient.RLHF.tau"):
        try:
          bindings[f"method/{name}/{key}"] = gin.query_parameter(
              f"method/{name}/{key}")
        except ValueError:
          pass
  finally:
    gin.clear_config()
  del tournament_cli
  want = {  # name: (objective class, loss, tau, data kind, family, online)
      "online_ipo": (objectives.OnlinePairwise, "ipo_loss", 0.1, "prompts",
                     "ipo", True),
      "ipo_md": (objectives.OnlinePairwise, "ipo_loss", 0.1, "prompts", "ipo",
                 True),
      "online_dpo": (objectives.OnlinePairwise, "dpo_loss", 0.5, "prompts",
                     "dpo", True),
      "online_slic": (objectives.OnlinePairwise, "slic_loss", 1.0, "prompts",
                      "slic", True),
      "nash_md_pg": (policy_gradient.NashMDPG, None, 0.01, "prompts", None,
                     True),
      "rlhf": (policy_gradient.RLHF, None, 0.05, "prompts", None, True),
      "offline_ipo": (offline.OfflinePairwise, "ipo_loss", 0.1, "pairs", "ipo",
                      False),
      "offline_dpo": (offline.OfflinePairwise, "dpo_loss", 0.5, "pairs", "dpo",
                      False),
      "offline_slic": (offline.OfflinePairwise, "slic_loss", 1.0, "pairs",
                       "slic", False),
  }
  assert [e.name for e in built] == list(want) == list(want_names)
  for e in built:
    cls, loss, tau, kind, family, online = want[e.name]
    stage = e.stage
    assert stage.name == e.name and stage.init == "sft", e.name
    assert stage.frozen["reference"] == "sft", e.name
    assert (e.family, e.online) == (family, online), e.name
    assert stage.data.kind == kind, e.name
    assert stage.objective.__name__ == cls.__name__, e.name
    got[e.name] = {k: bindings.get(f"method/{e.name}/{k}") for k in (
        f"{cls.__module__.rsplit('.', 1)[1]}.{cls.__name__}.beta",
        f"losses.{loss}.tau" if loss else
        f"policy_gradient.{cls.__name__}.tau")}
    tau_key = (f"losses.{loss}.tau" if loss else
               f"policy_gradient.{cls.__name__}.tau")
    assert got[e.name][tau_key] == tau, (e.name, got[e.name])
  by_name = {e.name: e.stage for e in built}
  assert got["ipo_md"]["objectives.OnlinePairwise.beta"] == 0.125
  assert got["online_ipo"]["objectives.OnlinePairwise.beta"] == 0.0
  assert got["nash_md_pg"]["policy_gradient.NashMDPG.beta"] == 0.125
  assert by_name["rlhf"].frozen == {"reference": "sft", "reward": "rm"}
  assert by_name["nash_md_pg"].frozen == {"reference": "sft",
                                          "preference": "pm"}
  assert by_name["offline_ipo"].frozen == {"reference": "sft"}
  assert template.name == "ipo_md"
  assert tuple(betas) == (0.0, 0.125, 0.25, 0.5, 1.0)
