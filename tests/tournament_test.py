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
