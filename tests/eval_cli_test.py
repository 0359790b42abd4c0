"""`ipo-md eval` as a user meets it: three kinds of checkpoint in, files out,
a rerun that does no work, and every mistake a clear message with exit 2.

The checkpoints are tiny random T5s written once per module: a params
checkpoint, a training stage (Orbax train state at step 5) and a Hugging
Face folder exported from the params checkpoint, whose responses are then
identical to it (exactly 0.5 under a symmetrised judge).
"""

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from ipo_md import checkpoints
from ipo_md.checkpoints import hf
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5_layout
from ipo_md.cli import eval as eval_cli
from ipo_md.cli import main as cli_main
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from tests.eval_llm_judge_test import FakeServer
from tests.eval_llm_judge_test import _completion

CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
# The shapes of tests/eval_side_by_side_test.py: one worker compiles once.
FAST = ["--task=synthetic_facts_prompts", "--split=validation",
        "--num_prompts=12", "--input_length=64", "--max_decode_length=12",
        "--batch_size=8", "--num_bootstrap=50"]


def _params(seed, cfg=CFG):
  return scoring.init_params(network.Transformer(cfg), jax.random.key(seed))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpts")
  a = _params(0)
  params_io.save_params(root / "a", a, CFG)
  hf.export_hf(a, CFG, root / "a_hf")
  stage = root / "run" / "ipo"
  ckpt = checkpoints.Checkpointer(stage / "checkpoints",
                                  checkpoints.CheckpointConfig(keep=2))
  ckpt.save(5, {"step": np.int32(5), "params": _params(1)},
            {"step": 5, "data_position": 5,
             "model_config": t5_layout.config_to_dict(CFG)})
  ckpt.close()
  big = CFG.replace(vocab_size=128)
  params_io.save_params(root / "big_vocab", _params(2, big), big)
  pm = checkpoints.Checkpointer(root / "pm" / "checkpoints",
                                checkpoints.CheckpointConfig(keep=1))
  pm.save(2, {"step": np.int32(2), "params": _params(3)},
          {"step": 2, "role": "preference", "model_config":
           t5_layout.config_to_dict(CFG),
           "head": {"input_length": 96, "readout": [5, 6],
                    "template": {"first": [60], "second": [61]}}})
  pm.close()
  (root / "empty").mkdir()
  return root


def _run(capsys, *argv):
  rc = cli_main.main(["eval", *argv])
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


def test_three_kinds_of_checkpoint_and_rerun(ckpts, tmp_path, capsys):
  out = tmp_path / "eval"
  argv = [f"--policy=a={ckpts / 'a'}", f"--policy=ipo={ckpts / 'run/ipo'}",
          f"--policy=hf={ckpts / 'a_hf'}", f"--out={out}", *FAST]
  rc, stdout, stderr = _run(capsys, *argv)
  assert rc == 0, stderr
  assert "## Judge `gold`: p(row > column)" in stdout
  results = json.loads((out / "results.json").read_text())
  m = np.array(results["judges"]["gold"]["matrix"])
  np.testing.assert_allclose(m + m.T, 1.0, atol=1e-12)
  assert m[0, 2] == 0.5  # The HF export samples exactly what `a` samples.
  assert results["cache"]["sampled"] == ["a", "ipo", "hf"]
  keys = [p["key"] for p in results["policies"]]
  assert keys[1].startswith(f"{(ckpts / 'run/ipo').resolve()}@5:")
  assert (out / "heatmap_gold.png").is_file()
  assert (out / "ranking_gold.png").is_file()
  rc, _, stderr = _run(capsys, *argv)
  assert rc == 0, stderr
  again = json.loads((out / "results.json").read_text())
  assert again["cache"]["sampled"] == []
  assert again["cache"]["judged_pairs"] == {"gold": 0}
  assert again["judges"]["gold"]["matrix"] == results["judges"]["gold"][
      "matrix"]
  # @STEP reads that step of a stage (the only one here: same samples), and
  # a learned preference model judges beside the gold oracle.
  rc, stdout, stderr = _run(
      capsys, *argv[:1], f"--policy=ipo={ckpts}/run/ipo@5", *argv[2:],
      "--judge=gold", "--judge=pm", f"--pm_checkpoint={ckpts / 'pm'}")
  assert rc == 0, stderr
  both = json.loads((out / "results.json").read_text())
  assert both["cache"]["sampled"] == []
  assert both["cache"]["judged_pairs"] == {"gold": 0, "pm": 3}
  pm = np.array(both["judges"]["pm"]["matrix"])
  np.testing.assert_allclose(pm + pm.T, 1.0, atol=1e-12)
  assert pm[0, 2] == 0.5
  assert "## Judges side by side (reference judge: `gold`)" in stdout
  assert "`pm` - `gold`" in stdout
  assert (out / "vs_baseline.png").is_file()


@pytest.mark.parametrize("policies,extra,message", [
    (["a=EMPTY", "a"], [],
     r"--policy a=.*/empty .*is not a checkpoint\. Pass a training stage "
     r"folder \(MODEL_DIR/<stage>, optionally @STEP\)"),
    (["a=MISSING", "a"], [], r"/missing: no such directory"),
    (["a", "b=BIG"], [],
     r"--policy a \(.*\) has vocab_size 64 but --policy b \(.*/big_vocab\) "
     r"has vocab_size 128.*same vocabulary"),
    (["a", "b=A@3"], [], r"@STEP applies to training stage folders.*Drop @3"),
    (["a"], [], r"needs at least two policies"),
    (["a", "b=A"], ["--split=test"],
     r"--task synthetic_facts_prompts --split test: .*no split 'test'; it "
     r"has \('train', 'validation'\).*Fix --task, --split"),
    (["a", "b=A"], ["--task=tldr_prompts"],
     r"--judge gold is the oracle of the synthetic facts task, but --task "
     r"tldr_prompts uses another vocabulary"),
    (["a", "b=A"], ["--num_prompts=0"], r"--num_prompts=0 must be >= 1"),
    (["a", "b=A"], ["--judge=llm"], r"--judge llm needs a server and a "
     r"model: pass --llm_base_url and --llm_model"),
    (["a", "b=A"], ["--judge=pm"], r"--judge pm needs --pm_checkpoint"),
    (["a", "b=A"], ["--judge=pm", "--pm_checkpoint=A"],
     r"--pm_checkpoint .*/a records no model head.*pass --pm_input_length "
     r"and --pm_readout"),
])
def test_mistakes_exit_2_with_the_fix(ckpts, tmp_path, capsys, monkeypatch,
                                      policies, extra, message):
  for name in ("IPO_MD_JUDGE_BASE_URL", "OPENAI_BASE_URL",
               "IPO_MD_JUDGE_MODEL"):
    monkeypatch.delenv(name, raising=False)
  paths = {"EMPTY": ckpts / "empty", "MISSING": ckpts / "missing",
           "BIG": ckpts / "big_vocab", "A": ckpts / "a"}
  argv = []
  for spec in policies:
    name, _, where = spec.partition("=")
    where = where or "A"
    path, _, step = where.partition("@")
    argv.append(f"--policy={name}={paths[path]}" + (f"@{step}" if step
                                                     else ""))
  extra = [e.replace("=A", f"={paths['A']}") for e in extra]
  rc, _, stderr = _run(capsys, *argv, f"--out={tmp_path}", *FAST, *extra)
  assert rc == 2
  assert "Traceback" not in stderr
  assert stderr.startswith("ipo-md eval: error: ")
  assert re.search(message, stderr, re.S), stderr


def test_llm_reply_that_never_parses(ckpts, tmp_path, capsys, monkeypatch):
  reply = lambda request, n: (200, {}, _completion("I like both."), 0)
  with FakeServer(reply) as server:
    monkeypatch.setenv("IPO_MD_JUDGE_BASE_URL", server.base_url)
    monkeypatch.setenv("IPO_MD_JUDGE_MODEL", "rater")
    rc, _, stderr = _run(
        capsys, f"--policy=a={ckpts / 'a'}", f"--policy=b={ckpts / 'a_hf'}",
        f"--out={tmp_path}", *FAST, "--judge=llm", "--llm_attempts=2")
  assert rc == 2
  assert "Traceback" not in stderr
  assert re.search(r"'rater' at http://127.0.0.1:\d+/v1/chat/completions "
                   r"gave no parseable verdict in 2 attempts; last reply: "
                   r"'I like both.'.*exactly one of 1 and 2", stderr, re.S)
  # Nothing was cached for the failed verdicts.
  cache = tmp_path / "llm_cache.jsonl"
  assert not cache.exists() or not cache.read_text().strip()


def test_parse_policy():
  assert eval_cli._parse_policy("x=/a/b@7") == ("x", pathlib.Path("/a/b"), 7)
  assert eval_cli._parse_policy("/a/stage") == ("stage",
                                                 pathlib.Path("/a/stage"),
                                                 None)
  assert eval_cli._parse_policy("/a/b=c") == ("b=c", pathlib.Path("/a/b=c"),
                                               None)
