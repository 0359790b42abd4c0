"""`ipo-md theory` end to end, on small settings, into a temporary folder."""

import json
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np

from ipo_md.cli import main as cli_main
from ipo_md.cli import theory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TheoryCommandTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.out = pathlib.Path(cls.tmp.name) / "theory"
    # Through the `ipo-md` dispatcher, as a user runs it.
    cls.returncode = cli_main.main([
        "theory", "--out", str(cls.out), "--seed", "3", "--tau", "0.1",
        "--steps", "400", "--learning-rate", "0.02", "--sampled-steps", "600",
        "--betas", "0.25", "0.5", "--beta-grid", "5", "--random-games", "6",
    ])
    cls.results = json.loads((cls.out / "results.json").read_text())

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_exit_code_and_figures(self):
    self.assertEqual(self.returncode, 0)
    for name in ("simplex.png", "exploitability.png",
                 "fixed_point_vs_beta.png"):
      data = (self.out / name).read_bytes()
      self.assertGreater(len(data), 10_000, msg=name)
      self.assertEqual(data[:8], PNG_MAGIC, msg=name)

  def test_config_round_trips(self):
    config = self.results["config"]
    self.assertEqual(config["seed"], 3)
    self.assertEqual(config["betas"], [0.25, 0.5])
    self.assertEqual(config["num_steps"], 400)

  def test_trajectories_reach_their_fixed_points(self):
    runs = {r["name"]: r for r in self.results["trajectories"]}
    self.assertEqual(set(runs), {"online IPO", "offline IPO", "IPO-MD(0.25)",
                                 "IPO-MD(0.5)"})
    self.assertLess(runs["online IPO"]["final_exploitability"], 1e-6)
    np.testing.assert_allclose(runs["online IPO"]["final_policy"],
                               self.results["game"]["nash"], atol=1e-4)
    for run in runs.values():
      self.assertLess(run["distance_to_fixed_point"], 1e-4, msg=run["name"])
      self.assertLen(run["steps"], len(run["exploitability"]))
    # Regularised sampling costs exploitability at tau, more with more beta.
    self.assertLess(runs["IPO-MD(0.25)"]["final_exploitability"],
                    runs["IPO-MD(0.5)"]["final_exploitability"])
    self.assertLess(self.results["sampled"]["final_exploitability"], 1e-3)

  def test_fixed_point_mixture_is_nash_at_effective_tau(self):
    rows = self.results["fixed_points"]
    self.assertEqual([r["beta"] for r in rows], [0.0, 0.25, 0.5, 0.75, 1.0])
    for row in rows[:-1]:
      self.assertLess(row["mixture_minus_nash_tau_eff"], 1e-6)
    np.testing.assert_allclose(rows[0]["policy"], self.results["game"]["nash"],
                               atol=1e-9)
    self.assertNotIn("nash_tau_eff", rows[-1])

  def test_headline_numbers(self):
    dpo = {r["p"]: r for r in self.results["online_dpo_vs_nash"]}
    np.testing.assert_allclose(dpo[0.7]["nash"], [0.401, 0.599], atol=5e-4)
    np.testing.assert_allclose(dpo[0.7]["online_dpo"], [0.155, 0.845],
                               atol=5e-4)
    variance = self.results["variance"]
    self.assertEqual(variance["num_games"], 6)
    self.assertLessEqual(variance["max_ratio"], 1.0)

  def test_bad_flags_exit_with_a_message(self):
    self.assertEqual(theory.main(["--out", str(self.out / "bad"),
                                  "--betas", "1.5"]), 2)
    self.assertFalse((self.out / "bad").exists())


if __name__ == "__main__":
  absltest.main()
