"""Tests of `ipo-md data` (ipo_md.cli.data)."""

import contextlib
import io
import pathlib
import tempfile

from absl.testing import absltest
import gin
from ipo_md.cli import data as data_cli
from ipo_md.data import synthetic
import ipo_md_tasks
import seqio

from tests.testdata import make_testdata


def _run(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = data_cli.main(argv)
  return code, out.getvalue(), err.getvalue()


class InspectTest(absltest.TestCase):

  def tearDown(self):
    gin.clear_config()
    for register in ipo_md_tasks.REGISTER_FNS:  # Back to the defaults.
      register()
    super().tearDown()

  def test_examples_and_percentiles(self):
    code, out, _ = _run([
        "inspect", "--task=synthetic_facts_sft", "--split=validation",
        "--num_examples=1", "--max_examples=40",
        "--lengths=inputs=30,targets=64"])
    self.assertEqual(code, 0)
    first = synthetic.generate("validation", 1)[0]
    self.assertIn(f"): {first['inputs']}\n", out)
    self.assertNotIn("example 1 ---", out)
    self.assertIn("over the first 40 examples", out)
    self.assertRegex(out, r"feature +p50 +p90 +p95 +p99 +max +truncated")
    self.assertRegex(out, r"targets .* 0\.0% \(> 64\)")

  def test_pairs_show_their_labels(self):
    code, out, _ = _run([
        "inspect", "--task=synthetic_facts_comparisons", "--split=validation",
        "--num_examples=1", "--max_examples=0",
        "--lengths=inputs=64,targets=32"])
    self.assertEqual(code, 0)
    first = synthetic.generate_comparisons("validation", 1)[0]
    self.assertIn(f"chosen (17 tokens): {first['chosen']}\n", out)
    self.assertIn(f"label=1 gold_pref={first['gold_pref']:.4g}\n", out)
    self.assertIn("over all 1024 examples", out)
    self.assertRegex(out, r"rejected +9 +17 +17 +21 +25 +0\.0% \(> 32\)")

  def test_lengths_match_the_tokenizer(self):
    lengths = data_cli.inspect("synthetic_facts_sft", "validation",
                               num_examples=0, max_examples=20,
                               out=io.StringIO())
    vocabulary = synthetic.vocabulary()
    expected = [len(vocabulary.encode(r["targets"])) + 1
                for r in synthetic.generate("validation", 20)]
    self.assertEqual(lengths["targets"].tolist(), expected)

  def test_gin_file_and_flags_set_the_locations(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    root = pathlib.Path(tmp.name)
    make_testdata.write_jsonl(root / "valid.jsonl",
                              make_testdata.tldr_sft_rows(5))
    gin_file = root / "tldr.gin"
    gin_file.write_text(
        "from __gin__ import dynamic_registration\n"
        "import ipo_md_tasks\n"
        "ipo_md_tasks.register_tldr_tasks.sft_dir = '/nowhere'\n")
    code, out, err = _run([
        "inspect", "--task=tldr_prompts", "--split=validation",
        f"--gin_file={gin_file}", f"--tldr_sft_dir={root}",
        "--gin_binding=ipo_md_tasks.register_tldr_tasks.extra_ids = 0",
        f"--vocabulary_path={make_testdata.TINY_SPM}"])
    self.assertEqual(code, 0, err)
    self.assertIn("inputs (", out)
    self.assertIn("over all 5 examples of tldr_prompts:validation", out)
    vocabulary = seqio.get_mixture_or_task(
        "tldr_prompts").output_features["inputs"].vocabulary
    self.assertEqual(vocabulary.extra_ids, 0)  # Gin binding kept by the flags.

  def test_missing_location_is_a_clear_error(self):
    code, out, err = _run(["inspect", "--task=tldr_sft"])
    self.assertEqual(code, 2)
    self.assertEqual(out, "")
    self.assertIn("ipo-md data: error: The TL;DR SFT folder is not set", err)

  def test_parse_lengths(self):
    self.assertEqual(data_cli.parse_lengths("inputs=512,targets=64"),
                     {"inputs": 512, "targets": 64})
    code, out, err = _run(["inspect", "--task=x", "--lengths=inputs:512"])
    self.assertEqual((code, out), (2, ""))
    self.assertIn("--lengths item 'inputs:512' must look like NAME=INT", err)


if __name__ == "__main__":
  absltest.main()
