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

"""`ipo-md export`: a trained policy -> a Hugging Face T5 folder.

  ipo-md export --from /ckpt/flan_t5_base --to_hf /out/hf_model
  ipo-md export --from MODEL_DIR/<stage> --to_hf /out/hf_model [--step N]

`--from` is a params checkpoint (config.json + params/) or a training stage
folder (its checkpoints/<step>/, the latest unless --step); only the policy
params are read. The output loads with
`transformers.T5ForConditionalGeneration.from_pretrained(DIR)`.
"""

import argparse
import sys

from ipo_md.cli import flag_checks


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ipo-md export",
      description="Export a policy to Hugging Face (config.json + "
      "model.safetensors).")
  parser.add_argument("--from", dest="source", required=True,
                      metavar="CHECKPOINT_DIR",
                      help="Params checkpoint, or a training stage folder "
                      "(MODEL_DIR/<stage>, its checkpoints/ or one step).")
  parser.add_argument("--to_hf", required=True, metavar="DIR",
                      help="Output folder for config.json + model.safetensors "
                      "(must not exist or be empty).")
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16", "float16"),
                      help="dtype of the written weights (default float32).")
  parser.add_argument("--step", type=flag_checks.int_at_least(0),
                      default=None,
                      help="Training checkpoints only: which step (default "
                      "the latest).")
  return parser


def _check_args(args: argparse.Namespace) -> bool:
  """Checks every flag before any tensor is read; True for a params
  checkpoint, False for a training stage."""
  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import t5x_import  # pylint: disable=g-import-not-at-top

  source = flag_checks.input_dir(
      args.source, "--from", "a params checkpoint or a training stage")
  flag_checks.output_dir(args.to_hf, "--to_hf", must_be_empty=True)
  if params_io.is_params_dir(source):
    if args.step is not None:
      raise flag_checks.UsageError(
          f"--step applies to training checkpoints, and --from {args.source} "
          "is a params checkpoint (one set of weights); drop --step.")
    return True
  if hf.is_hf_dir(source):
    raise flag_checks.UsageError(
        f"--from {args.source} is a Hugging Face folder already; load it with "
        "transformers, or import it with `ipo-md convert --from_hf`.")
  if t5x_import.is_t5x_checkpoint(source):
    raise flag_checks.UsageError(
        f"--from {args.source} is a T5X checkpoint; import it first with "
        "`ipo-md convert --from_t5x`, then export the result.")
  return False


def main(argv: list[str]) -> int:
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse printed the usage and the error.
    return int(e.code or 0)
  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top

  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  try:
    if _check_args(args):
      params, config = params_io.load_params(args.source, shardings=cpu)
    else:
      params, config = params_io.load_train_params(
          args.source, step=args.step, shardings=cpu)
    hf.export_hf(params, config, args.to_hf, dtype=args.dtype)
  except (ValueError, OSError) as e:
    # ValueError covers UsageError and the loaders' errors, OSError a file
    # the checks could not foresee (permissions, a full disk).
    print(f"ipo-md export: error: {e}", file=sys.stderr)
    return 2
  print(f"Wrote {args.to_hf} (config.json + model.safetensors, {args.dtype}).")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
