"""`side_by_side.evaluate` end to end on tiny random T5 policies.

Three policies (two random models and an exact copy of the first) are judged
on a few synthetic prompts by the gold oracle, a position-biased fake signal
and an LLM judge behind a local HTTP server. The numbers checked: the matrix
is antisymmetric, a policy against its own copy is exactly 0.5, the judge's
bias is measured and removed, win rates equal the matrix column, ROUGE and
lengths match hand values, and a rerun samples and judges nothing.
"""

import json
import pathlib
import tempfile

from absl.testing import absltest
import jax
import numpy as np

import ipo_md_tasks  # noqa: F401  (registers the synthetic tasks)
from ipo_md.decoding import sampling
from ipo_md.eval import judges
from ipo_md.eval import llm_judge
from ipo_md.eval import side_by_side
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from tests.eval_judges_test import TanhSignal
from tests.eval_llm_judge_test import FakeServer
from tests.eval_llm_judge_test import prefer_longer

CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
SAMPLING = sampling.SamplingConfig(max_decode_length=12)
BIAS = 0.1


def _policies():
  model = network.Transformer(CFG)
  p0 = scoring.init_params(model, jax.random.key(0))
  p1 = scoring.init_params(model, jax.random.key(1))
  return [side_by_side.Policy(name="a", params=p0, config=CFG, key="a"),
          side_by_side.Policy(name="b", params=p1, config=CFG, key="b"),
          side_by_side.Policy(name="a_copy", params=p0, config=CFG,
                              key="a_copy")]


class EvaluateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.prompts = side_by_side.load_prompts(
        "synthetic_facts_prompts", "validation", num_prompts=12,
        input_length=64)
    cls.policies = _policies()
    cls.fake = judges.SignalJudge(TanhSignal(BIAS), {"scale": np.float32(1)},
                                  name="biased")
    cls.gold = judges.gold_judge()

  def setUp(self):
    super().setUp()
    self.out = pathlib.Path(tempfile.mkdtemp())
    self.logs = []

  def _evaluate(self, judge_list, **kwargs):
    kwargs.setdefault("sampling_cfg", SAMPLING)
    kwargs.setdefault("write_files", False)  # Figures cost ~1 s; one test.
    return side_by_side.evaluate(
        self.policies, judge_list, self.prompts, out_dir=self.out,
        batch_size=8, num_bootstrap=100, log=self.logs.append, **kwargs)

  def test_prompts(self):
    self.assertEqual(self.prompts.inputs.shape, (12, 64))
    self.assertEqual(sorted(self.prompts.references), ["ideal", "targets"])
    self.assertIn(" owns a ", self.prompts.texts[0])
    self.assertEqual(self.prompts.decode(self.prompts.inputs[0]),
                     self.prompts.texts[0])

  def test_matrix_numbers_and_rerun(self):
    results = self._evaluate([self.gold, self.fake])
    for name in ("gold", "biased"):
      r = results["judges"][name]
      m = np.array(r["matrix"])
      off = ~np.eye(3, dtype=bool)
      np.testing.assert_allclose((m + m.T)[off], 1.0, atol=1e-12)
      # Common random numbers: the copy samples what its original samples.
      self.assertEqual(m[0, 2], 0.5)
      self.assertEqual(r["low"][0][2], 0.5)
      for i, policy in enumerate("a b a_copy".split()):
        self.assertEqual(r["vs_baseline"][policy]["mean"], m[i, 0])
      p = r["per_prompt"]
      np.testing.assert_allclose(p.mean(-1), m, atol=1e-12)
      self.assertTrue(np.all((m > np.array(r["low"]) - 1e-12)
                             & (m < np.array(r["high"]) + 1e-12)))
      ranking = r["bradley_terry"]["ranking"]
      self.assertEqual(sorted(ranking), ["a", "a_copy", "b"])
    self.assertAlmostEqual(results["judges"]["biased"]["position_bias"], BIAS,
                           places=6)
    self.assertAlmostEqual(results["judges"]["gold"]["position_bias"], 0.0,
                           places=6)
    self.assertEqual(results["cache"]["sampled"], ["a", "b", "a_copy"])
    self.assertEqual(results["cache"]["judged_pairs"], {"gold": 3,
                                                        "biased": 3})
    # Rerun: nothing is sampled or judged again, and the numbers agree.
    calls = []
    original = side_by_side.sample_responses
    side_by_side.sample_responses = lambda *a, **k: calls.append(1) or (
        original(*a, **k))
    try:
      fake_calls = self.fake.calls
      again = self._evaluate([self.gold, self.fake])
    finally:
      side_by_side.sample_responses = original
    self.assertEqual(calls, [])
    self.assertEqual(self.fake.calls, fake_calls)
    self.assertEqual(again["cache"]["sampled"], [])
    self.assertEqual(again["cache"]["reused_pairs"], {"gold": 3, "biased": 3})
    self.assertEqual(again["judges"]["gold"]["matrix"],
                     results["judges"]["gold"]["matrix"])
    # Another temperature is another sample.
    hot = self._evaluate([self.gold], sampling_cfg=sampling.SamplingConfig(
        max_decode_length=12, temperature=2.0))
    self.assertEqual(hot["cache"]["sampled"], ["a", "b", "a_copy"])

  def test_files(self):
    results = self._evaluate([self.gold, self.fake], write_files=True)
    saved = json.loads((self.out / "results.json").read_text())
    self.assertEqual(saved["judges"]["gold"]["matrix"],
                     results["judges"]["gold"]["matrix"])
    self.assertNotIn("per_prompt", saved["judges"]["gold"])
    report = (self.out / "report.md").read_text()
    for text in ("## Judge `gold`", "## Judge `biased`",
                 "Judges side by side (reference judge: `gold`)",
                 "`biased` - `gold`", "ROUGE-1 / 2 / L vs ideal",
                 "First-position bias of the judge"):
      self.assertIn(text, report)
    for name in ("heatmap_gold.png", "ranking_biased.png", "vs_baseline.png"):
      self.assertEqual((self.out / name).read_bytes()[:4], b"\x89PNG")
    samples = sorted((self.out / "samples").glob("a.*.jsonl"))
    rows = [json.loads(x) for x in samples[0].read_text().splitlines()]
    self.assertLen(rows, 13)
    self.assertEqual(rows[0]["header"]["policy"], "a")
    self.assertEqual(self.prompts.decode(rows[1]["tokens"]), rows[1]["text"])
    self.assertEqual(rows[1]["prompt"], self.prompts.texts[0])

  def test_llm_judge_rerun_sends_no_request(self):
    with FakeServer(prefer_longer) as server:
      config = llm_judge.LLMJudgeConfig(
          base_url=server.base_url, model="m", concurrency=4,
          cache_path=str(self.out / "llm_cache.jsonl"))
      first = self._evaluate([llm_judge.LLMJudge(config)])
      sent = len(server.requests)
      self.assertGreater(sent, 0)
      m = np.array(first["judges"]["llm"]["matrix"])
      np.testing.assert_allclose(m + m.T, 1.0, atol=1e-12)
      # A fresh judge and fresh verdict files: the LLM cache alone suffices.
      for path in (self.out / "verdicts").rglob("*.json"):
        path.unlink()
      again = self._evaluate([llm_judge.LLMJudge(config)])
      self.assertLen(server.requests, sent)
      self.assertEqual(again["judges"]["llm"]["matrix"], m.tolist())

  def test_describe_lengths_and_rouge(self):
    tokens = np.array([[5, 6, 1, 0], [5, 1, 0, 0], [7, 7, 7, 7]], np.int32)
    texts = ("alice red boat", "bob", "x y z")
    prompts = side_by_side.Prompts(
        inputs=np.zeros((3, 4), np.int32), texts=("", "", ""),
        references={"ref": ("alice red boat", "carol", "x y w")},
        decode=str, vocab_size=64, key="k", description="d")
    out = side_by_side._describe(
        side_by_side.Responses("p", tokens, texts, "k"), prompts, eos_id=1)
    self.assertAlmostEqual(out["mean_length"], (2 + 1 + 4) / 3)
    self.assertAlmostEqual(out["no_eos_fraction"], 1 / 3)
    # ROUGE-1 F1: 1, 0 and 2/3.
    self.assertAlmostEqual(out["rouge"]["ref"]["rouge1"], (1 + 0 + 2 / 3) / 3)

  def test_bad_inputs(self):
    other = side_by_side.Policy(
        name="big_vocab", params=self.policies[0].params,
        config=CFG.replace(vocab_size=128))
    with self.assertRaisesRegex(
        ValueError, r"Policies 'a' \(vocab_size 64\) and 'big_vocab' "
        r"\(vocab_size 128\) have different vocabularies"):
      side_by_side.evaluate([self.policies[0], other], [self.gold],
                            self.prompts, out_dir=self.out,
                            sampling_cfg=SAMPLING)
    with self.assertRaisesRegex(ValueError, r"names \['a'\] are not unique"):
      side_by_side.evaluate([self.policies[0]] * 2, [self.gold], self.prompts,
                            out_dir=self.out, sampling_cfg=SAMPLING)
    with self.assertRaisesRegex(ValueError, r"baseline='z' is not a policy"):
      self._evaluate([self.gold], baseline="z")
    with self.assertRaisesRegex(ValueError, r"level=1.5 .* must be in \(0, "
                                r"1\)"):
      self._evaluate([self.gold], level=1.5)
    with self.assertRaisesRegex(ValueError, r"no reference feature 'summary'"):
      side_by_side.load_prompts("synthetic_facts_prompts", "validation",
                                num_prompts=2, input_length=64,
                                references=["summary"])
    self.assertFalse((self.out / "samples").exists())


if __name__ == "__main__":
  absltest.main()
