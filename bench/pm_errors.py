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

"""Where a trained preference model of the main job disagrees with the gold oracle.

An analysis, not a benchmark: it loads the `pm` stage of a main-job run
(gin/ipo_md_tiny.gin), scores the held-out `synthetic_facts_comparisons` pairs
symmetrised (as the policy stage and `PreferenceEvaluation` do), and prints

  * accuracy on the noisy labels beside the gold oracle's (the ceiling), on
    the validation pairs and on the first training pairs (underfitting shows
    as the two being alike);
  * agreement with the gold preference on the pairs that are not ties, by
    which of the gold oracle's counts differ between the two summaries
    (`synthetic.summary_counts`: covered, invented, repeated, over_budget,
    length) and by the gold score margin |s(y) - s(y')|;
  * with --examples=N, the first N validation pairs of each kind that the
    model ranks against the gold oracle: the document, both summaries, their
    gold scores and counts, and the model's p(chosen > rejected).

  PYTHONPATH=. python bench/pm_errors.py --model_dir=/tmp/ipo_md_tiny
  PYTHONPATH=. python bench/pm_errors.py --model_dir=/tmp/ipo_md_tiny \
      --examples=3

The preference model's head (`learned.PairwiseHead`) and the lengths
(`INPUT_LENGTH`, `TARGET_LENGTH`) come from the run's gin configuration, read
as `ipo-md train` reads it: `--gin_file` (default: the main job's
ipo_md_tiny.gin) and any `--gin.KEY=VALUE` the run was trained with.
"""

import argparse
import collections
import sys

import gin
import jax
import numpy as np

import ipo_md_tasks  # pylint: disable=unused-import  (registers the tasks)
from ipo_md import rollouts
from ipo_md.checkpoints import params_io
from ipo_md.cli import gin_flags
from ipo_md.data import pipeline as data_pipeline
from ipo_md.data import synthetic
from ipo_md.model import network
from ipo_md.preference import learned
from ipo_md.trainer import evaluation

BATCH = 256


def _text(vocab, ids) -> str:
  return vocab.decode([t for t in ids.tolist() if t > 1])


def _counts(counts: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in counts.items()
                   if k in ("covered", "invented", "repeated", "over_budget"))


def _scores(pm, params, arrays, n):
  fn = jax.jit(lambda p, x, a, b: rollouts.judge(pm, p, x, a, b))
  return np.concatenate([
      np.asarray(fn(params, arrays["inputs"][i:i + BATCH],
                    arrays["chosen"][i:i + BATCH],
                    arrays["rejected"][i:i + BATCH]))
      for i in range(0, n, BATCH)])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True,
                      help="the run's MODEL_DIR (its pm/ stage is read)")
  parser.add_argument("--validation_pairs", type=int, default=1024)
  parser.add_argument("--train_pairs", type=int, default=4096)
  parser.add_argument("--examples", type=int, default=0,
                      help="print this many misranked validation pairs of "
                      "each kind")
  gin_flags.add_flags(parser)
  rest, dot_bindings = gin_flags.split_gin_dot_flags(
      sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  args.gin_file = args.gin_file or ["ipo_md_tiny.gin"]
  gin_flags.parse(args, dot_bindings + ["MODEL_DIR = 'unused'"])
  head = gin.get_configurable(learned.PairwiseHead)()
  input_length = gin.query_parameter("%INPUT_LENGTH")
  target_length = gin.query_parameter("%TARGET_LENGTH")

  params, config = params_io.load_train_params(f"{args.model_dir}/pm")
  pm = learned.PreferenceModel(network=network.Transformer(config), head=head)
  vocab = synthetic.vocabulary()
  for split, n in (("validation", args.validation_pairs),
                   ("train", args.train_pairs)):
    data = data_pipeline.DataConfig(
        task="synthetic_facts_comparisons", split=split, kind="pairs",
        batch_size=BATCH, feature_lengths={"inputs": input_length,
                                           "targets": target_length})
    arrays = data_pipeline.load_batch(data, n)
    p = _scores(pm, params, arrays, n)
    gold = arrays["gold_pref"][:n]
    metrics, _ = evaluation.preference_metrics(p, arrays["label"][:n], gold)
    not_tie = gold != .5
    agree = (p > .5) == (gold > .5)
    print(f"{split} ({n} pairs): accuracy {metrics['eval/accuracy']:.4f}, "
          f"gold ceiling {metrics['eval/gold_accuracy']:.4f}, gold agreement "
          f"{metrics['eval/gold_agreement']:.4f} "
          f"({np.mean(agree[not_tie]):.4f} of the {np.sum(not_tie)} that "
          "are not ties)")
    if split != "validation":
      continue
    by_counts = collections.defaultdict(list)
    by_margin = collections.defaultdict(list)
    misranked = collections.defaultdict(list)
    for i in np.flatnonzero(not_tie):
      doc = _text(vocab, arrays["inputs"][i])
      a, b = (_text(vocab, arrays[k][i]) for k in ("chosen", "rejected"))
      ca, cb = (synthetic.summary_counts(doc, s) for s in (a, b))
      differ = ", ".join(k for k in ca if k != "num_facts" and ca[k] != cb[k])
      by_counts[differ].append(agree[i])
      sa, sb = (synthetic.score_summary(doc, s) for s in (a, b))
      margin = abs(sa - sb)
      if not agree[i] and len(misranked[differ]) < args.examples:
        misranked[differ].append(
            f"  p(chosen > rejected) = {p[i]:.3f}; document: {doc}\n"
            f"    chosen   (gold score {sa:+.2f}, {_counts(ca)}): {a}\n"
            f"    rejected (gold score {sb:+.2f}, {_counts(cb)}): {b}")
      by_margin[min(round(margin * 4) / 4, 2.0)].append(agree[i])
    print("\ngold agreement by the counts that differ (pairs, agreement):")
    for key in sorted(by_counts, key=lambda k: -len(by_counts[k])):
      print(f"  {key:52s} {len(by_counts[key]):4d}  "
            f"{np.mean(by_counts[key]):.3f}")
    print("\ngold agreement by gold score margin (2.0: 2 or more):")
    for key in sorted(by_margin):
      print(f"  {key:4.2f} {len(by_margin[key]):4d}  "
            f"{np.mean(by_margin[key]):.3f}")
    for key in sorted(misranked, key=lambda k: -len(by_counts[k])):
      print(f"\nranked against the gold oracle, differing in {key}:")
      print("\n".join(misranked[key]))


if __name__ == "__main__":
  main()
