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

"""`ipo-md data`: look at a task before training on it, and prepare XSum.

  ipo-md data inspect --task=tldr_sft --split=validation \
      --tldr_sft_dir=/data/tldr_3_filtered --vocabulary_path=/data/spm.model
  ipo-md data inspect --task=synthetic_facts_sft --lengths=inputs=64,targets=32
  ipo-md data prepare-xsum --manual_dir=/data/xsum_manual \
      --data_dir=/data/tfds [--split_file=/data/xsum_split.json]

`inspect` prints a few decoded examples and the token-length percentiles
(50/90/95/99/max, EOS included) of every token feature, so that maximum lengths
can be chosen; with --lengths it also prints how many examples those lengths
would truncate. Data locations come from gin files (which `import
ipo_md_tasks` and bind its `register_*_tasks` arguments) and from plain flags,
which win over gin. `prepare-xsum` builds TFDS XSum with no network (the
split file comes from --split_file or the manual folder).

Every mistake (a flag, a path, a data file) ends in one line naming the thing,
its value and the fix, with exit status 2 and no traceback.
"""

import argparse
from collections.abc import Callable, Mapping, Sequence
import inspect as pyinspect
import sys
from typing import TextIO

import gin
from ipo_md.cli import flag_checks
from ipo_md.cli import gin_flags
from ipo_md.data import errors
from ipo_md.data import feature_converters
from ipo_md.data import pipeline
from ipo_md.data import xsum
import ipo_md_tasks
import numpy as np

PERCENTILES = (50, 90, 95, 99)
# --lengths names feature lengths: pairs share "targets" (chosen, rejected).
_LENGTH_KEY = {"chosen": "targets", "rejected": "targets"}
# Float features printed with an example (the soft and the gold label).
_SCALAR_FEATURES = tuple(feature_converters.SCALARS[feature_converters.PAIRS])


def register_tasks_from_gin() -> None:
  """Re-registers the tasks whose registration function gin configures.

  Call after parsing gin files that bind, e.g.,
  `ipo_md_tasks.register_tldr_tasks.sft_dir = 'gs://bucket/tldr'`.
  """
  for fn in ipo_md_tasks.REGISTER_FNS:
    configured = _configured(fn)
    if configured is not fn:
      configured()


def _configured(fn: Callable[..., object]) -> Callable[..., object]:
  """The gin-configured version of `fn`, or `fn` when gin does not know it."""
  try:
    return gin.get_configurable(fn)
  except ValueError:
    return fn


def _apply_location_flags(args: argparse.Namespace) -> None:
  """Re-registers TL;DR and XSum with the locations given as flags."""
  for flag in ("tldr_sft_dir", "tldr_comparisons_dir", "xsum_data_dir"):
    value = getattr(args, flag)
    if value is not None and "://" not in value:
      flag_checks.input_dir(value, f"--{flag}", "the data files")
  vocab = ({"vocabulary_path": args.vocabulary_path}
           if args.vocabulary_path else {})
  tldr = {k: v for k, v in (("sft_dir", args.tldr_sft_dir),
                            ("comparisons_dir", args.tldr_comparisons_dir))
          if v}
  if tldr or vocab:
    _configured(ipo_md_tasks.register_tldr_tasks)(**tldr, **vocab)
  xsum_kwargs = {"data_dir": args.xsum_data_dir} if args.xsum_data_dir else {}
  if xsum_kwargs or vocab:
    _configured(ipo_md_tasks.register_xsum_tasks)(**xsum_kwargs, **vocab)


def parse_lengths(text: str) -> dict[str, int]:
  """"inputs=512,targets=64" -> {"inputs": 512, "targets": 64}."""
  lengths = {}
  for item in filter(None, text.split(",")):
    name, _, value = item.partition("=")
    if not name.strip() or not value.strip().isdigit():
      raise argparse.ArgumentTypeError(
          f"--lengths item {item!r} must look like NAME=INT, e.g. "
          "--lengths=inputs=512,targets=64.")
    if int(value) < 2:
      raise argparse.ArgumentTypeError(
          f"--lengths item {item!r}: a length counts EOS, so it must be >= 2.")
    lengths[name.strip()] = int(value)
  return lengths


def _check_length_names(task: str, lengths: Mapping[str, int]) -> None:
  features = pipeline.get_task(task).output_features
  known = {_LENGTH_KEY.get(f, f) for f in features}
  unknown = sorted(set(lengths) - known)
  if unknown:
    raise flag_checks.UsageError(
        f"--lengths names {unknown}, which task {task!r} does not have; its "
        f"lengths are {sorted(known)} (pairs: 'targets' is the length of "
        "chosen and rejected).")


def inspect(
    task: str,
    split: str,
    *,
    num_examples: int = 3,
    max_examples: int = 2000,
    lengths: Mapping[str, int] | None = None,
    max_chars: int = 1500,
    out: TextIO | None = None,
) -> dict[str, np.ndarray]:
  """Prints decoded examples and length percentiles of a task split.

  Args:
    task: registered seqio task.
    split: its split.
    num_examples: examples to decode and print.
    max_examples: examples to measure (0: the whole split).
    lengths: optional feature -> length, to report truncation rates.
    max_chars: longest decoded text printed per feature (0: no limit).
    out: where to print (default: stdout).

  Returns:
    feature -> [examples] token lengths (EOS included), for tests.
  """
  out = out or sys.stdout
  _check_length_names(task, lengths or {})
  features = pipeline.get_task(task).output_features
  token_lengths = {}
  measured = 0
  for i, example in enumerate(pipeline.task_examples(
      task, split, limit=max_examples or None)):
    present = sorted((f for f in features if f in example),
                     key=lambda f: (f != "inputs", f))
    if i < num_examples:
      _print_example(i, example, present, features, max_chars, out)
    for f in present:
      token_lengths.setdefault(f, []).append(len(example[f]))
    measured += 1
  token_lengths = {f: np.asarray(v) for f, v in token_lengths.items()}
  scope = ("all" if not max_examples or measured < max_examples
           else "the first")
  print(f"\nToken lengths (EOS included) over {scope} {measured} examples "
        f"of {task}:{split}:", file=out)
  print(_length_table(token_lengths, lengths or {}), file=out)
  return token_lengths


def _print_example(index, example, present, features, max_chars, out):
  print(f"\n--- example {index} ---", file=out)
  for f in present:
    tokens = example[f].tolist()
    text = features[f].vocabulary.decode(tokens)
    if max_chars and len(text) > max_chars:
      text = text[:max_chars] + f" [... {len(text) - max_chars} more chars]"
    print(f"{f} ({len(tokens)} tokens): {text}", file=out)
  scalars = [f"{k}={float(example[k]):.4g}" for k in _SCALAR_FEATURES
             if k in example]
  if scalars:
    print(" ".join(scalars), file=out)


def _length_table(token_lengths: Mapping[str, np.ndarray],
                  lengths: Mapping[str, int]) -> str:
  header = ["feature"] + [f"p{p}" for p in PERCENTILES] + ["max"]
  if lengths:
    header.append("truncated at --lengths")
  rows = [header]
  for f, values in token_lengths.items():
    row = [f] + [str(int(np.percentile(values, p, method="higher")))
                 for p in PERCENTILES] + [str(int(values.max()))]
    if lengths:
      limit = lengths.get(_LENGTH_KEY.get(f, f))
      row.append("-" if limit is None else
                 f"{np.mean(values > limit):.1%} (> {limit})")
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                   for r in rows)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ipo-md data", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  count = flag_checks.int_at_least(0)
  ins = commands.add_parser(
      "inspect", help="Decoded examples and token-length percentiles.")
  ins.add_argument("--task", required=True, help="seqio task name.")
  ins.add_argument("--split", default="train")
  ins.add_argument("--num_examples", type=count, default=3,
                   help="Examples to decode and print.")
  ins.add_argument("--max_examples", type=count, default=2000,
                   help="Examples to measure; 0 for the whole split.")
  ins.add_argument("--lengths", type=parse_lengths, default={},
                   help="e.g. inputs=512,targets=64: report truncation.")
  ins.add_argument("--max_chars", type=count, default=1500,
                   help="Longest text printed per feature; 0: no limit.")
  ins.add_argument("--gin_file", action="append", default=[],
                   help="Gin file that binds ipo_md_tasks.register_*_tasks.")
  ins.add_argument("--gin_binding", action="append", default=[],
                   help="One gin binding, e.g. \"ipo_md_tasks."
                   "register_xsum_tasks.prefix = ''\".")
  for flag, text in (
      ("--tldr_sft_dir", "Folder of OpenAI's tldr_3_filtered/*.jsonl."),
      ("--tldr_comparisons_dir", "Folder of the comparisons/*.json files."),
      ("--xsum_data_dir", "TFDS data folder with xsum:1.1.0 prepared."),
      ("--vocabulary_path", "SentencePiece model for TL;DR and XSum."),
  ):
    ins.add_argument(flag, default=None, help=text)
  prep = commands.add_parser(
      "prepare-xsum", help="Build TFDS xsum:1.1.0 from the manual tarball, "
      "offline.")
  prep.add_argument("--manual_dir", required=True,
                    help=f"Folder holding {xsum.TARBALL} (and "
                    f"{xsum.SPLIT_FILE} unless --split_file).")
  prep.add_argument("--split_file", default=None,
                    help=f"The XSum split file ({xsum.SPLIT_URL}); default "
                    f"MANUAL_DIR/{xsum.SPLIT_FILE}.")
  prep.add_argument("--data_dir", default=None,
                    help="TFDS data folder (default ~/tensorflow_datasets).")
  return parser


def _prepare_xsum(args: argparse.Namespace) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  flag_checks.input_dir(args.manual_dir, "--manual_dir",
                        f"the XSum tarball {xsum.TARBALL}")
  if args.data_dir is not None:
    flag_checks.output_dir(args.data_dir, "--data_dir", must_be_empty=False)
  tfds.disable_progress_bar()
  counts = xsum.prepare(data_dir=args.data_dir, manual_dir=args.manual_dir,
                        split_file=args.split_file)
  where = args.data_dir or "the default TFDS folder"
  print(f"Prepared {xsum.TFDS_NAME} in {where}: "
        + ", ".join(f"{s} {n} examples" for s, n in counts.items()) + ".")


def _parse_gin(args: argparse.Namespace) -> None:
  files, search = [], list(gin_flags.DEFAULT_SEARCH_PATHS)
  for name in args.gin_file:
    try:
      files.append(gin_flags.resolve(name, search))
    except FileNotFoundError:
      raise flag_checks.UsageError(
          f"--gin_file {name}: no such file (looked in the current folder and "
          f"{search}); check the path.") from None
  try:
    gin_flags.parse_files_and_bindings(files, args.gin_binding)
  except (ValueError, KeyError, SyntaxError, ImportError, OSError) as e:
    raise flag_checks.UsageError(
        f"invalid gin configuration: {' '.join(str(e).split())}. Bind the "
        "registration functions as NAME.PARAM = VALUE with PARAM one of "
        + "; ".join(f"{fn.__name__}: {', '.join(_parameters(fn))}"
                    for fn in ipo_md_tasks.REGISTER_FNS)
        + ", e.g. --gin_binding=\"ipo_md_tasks.register_tldr_tasks.sft_dir = "
        "'/data/tldr'\".") from None


def _parameters(fn: Callable[..., object]) -> list[str]:
  return list(pyinspect.signature(fn).parameters)


def main(argv: Sequence[str]) -> int:
  try:
    args = _parser().parse_args(list(argv))
  except SystemExit as e:  # argparse printed the usage and the error.
    return int(e.code or 0)
  try:
    if args.command == "prepare-xsum":
      _prepare_xsum(args)
      return 0
    _parse_gin(args)
    register_tasks_from_gin()
    _apply_location_flags(args)
    inspect(args.task, args.split, num_examples=args.num_examples,
            max_examples=args.max_examples, lengths=args.lengths,
            max_chars=args.max_chars)
  except (errors.DataError, flag_checks.UsageError, ValueError,
          OSError) as e:
    # DataError and UsageError say what to fix; ValueError and OSError come
    # from gin or TFDS with the path in their message.
    print(f"ipo-md data: error: {e}", file=sys.stderr)
    return 2
  return 0
