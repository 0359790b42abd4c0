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

"""`ipo-md convert`: Hugging Face or T5X T5 weights -> a params checkpoint.

  ipo-md convert --from_hf /path/to/flan-t5-base --to /ckpt/flan_t5_base
  ipo-md convert --from_t5x gs-copy/t5_1_1_small --to /ckpt/t5_1_1_small

The output (config.json + params/) is what `initial_checkpoint` in the gin
files points to. Conversion runs on the host CPU, one tensor at a time.
"""

import argparse
import math
import sys

from ipo_md.cli import flag_checks
from ipo_md.model import config as config_lib

PARAMS_HINT = ("is a params checkpoint (config.json + params/), already in "
               "ipo-md's format: use it as initial_checkpoint directly, or "
               "`ipo-md export --from` it to Hugging Face")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ipo-md convert",
      description="Import Hugging Face / T5X T5 checkpoints as a params "
      "checkpoint (config.json + Orbax params/).")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--from_hf", metavar="DIR",
                      help="Hugging Face folder: config.json + "
                      "model.safetensors (or pytorch_model.bin, needs torch).")
  source.add_argument("--from_t5x", metavar="DIR",
                      help="T5X checkpoint_<step> folder (Orbax or legacy "
                      "msgpack + TensorStore), or the folder holding them.")
  parser.add_argument("--to", required=True, metavar="CHECKPOINT_DIR",
                      help="Output folder (must not exist or be empty).")
  parser.add_argument("--param_dtype", default="float32",
                      choices=config_lib.DTYPES,
                      help="dtype of the stored params (default float32).")
  parser.add_argument("--step", type=flag_checks.int_at_least(0),
                      default=None,
                      help="T5X only: which checkpoint_<step> (default latest).")
  parser.add_argument("--mlp_activations", default=None,
                      help="T5X only: comma-separated MLP activations when "
                      "not gated-GELU (v1.1) or ReLU (1.0), e.g. 'silu,linear'.")
  return parser


def _check_args(args: argparse.Namespace) -> tuple[str, ...] | None:
  """Checks every flag before any tensor is read; returns the activations."""
  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import t5x_import  # pylint: disable=g-import-not-at-top

  flag_checks.output_dir(args.to, "--to", must_be_empty=True)
  activations = _activations(args.mlp_activations)
  if args.from_hf is not None:
    if args.step is not None or activations:
      raise flag_checks.UsageError(
          "--step and --mlp_activations apply to --from_t5x only; drop them "
          "for --from_hf (a Hugging Face config.json names its activation).")
    source = flag_checks.input_dir(args.from_hf, "--from_hf",
                                   "a Hugging Face T5 checkpoint")
    if params_io.is_params_dir(source):
      raise flag_checks.UsageError(f"--from_hf {args.from_hf} {PARAMS_HINT}.")
    if not hf.is_hf_dir(source) and t5x_import.is_t5x_checkpoint(source):
      raise flag_checks.UsageError(
          f"--from_hf {args.from_hf} is a T5X checkpoint; use --from_t5x.")
    return None
  source = flag_checks.input_dir(args.from_t5x, "--from_t5x",
                                 "a T5X checkpoint")
  if params_io.is_params_dir(source):
    raise flag_checks.UsageError(f"--from_t5x {args.from_t5x} {PARAMS_HINT}.")
  if hf.is_hf_dir(source):
    raise flag_checks.UsageError(
        f"--from_t5x {args.from_t5x} is a Hugging Face folder; use --from_hf.")
  return activations


def _activations(text: str | None) -> tuple[str, ...] | None:
  if text is None:
    return None
  activations = tuple(a.strip() for a in text.split(","))
  bad = [a for a in activations if a not in config_lib.ACTIVATIONS]
  if bad or len(activations) > 2:
    raise flag_checks.UsageError(
        f"--mlp_activations={text!r}: give one or two of "
        f"{config_lib.ACTIVATIONS}, comma-separated (two is a gated MLP), "
        "e.g. --mlp_activations=silu,linear.")
  return activations


def main(argv: list[str]) -> int:
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse printed the usage and the error.
    return int(e.code or 0)
  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import t5x_import  # pylint: disable=g-import-not-at-top

  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  try:
    activations = _check_args(args)
    if args.from_hf is not None:
      params, config = hf.load_hf(args.from_hf, shardings=cpu,
                                  param_dtype=args.param_dtype)
    else:
      params, config = t5x_import.load_t5x(
          args.from_t5x, step=args.step, mlp_activations=activations,
          param_dtype=args.param_dtype, shardings=cpu)
    params_io.save_params(args.to, params, config)
  except (ValueError, OSError, ImportError) as e:
    # ValueError covers UsageError and the importers' errors, OSError a
    # file the checks could not foresee (permissions, a full disk).
    print(f"ipo-md convert: error: {e}", file=sys.stderr)
    return 2
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
  print(f"Wrote {args.to}: {count / 1e6:.1f}M params ({config.param_dtype}), "
        f"config {config}.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
