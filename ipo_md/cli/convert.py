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

from ipo_md.model import config as config_lib


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
  parser.add_argument("--step", type=int, default=None,
                      help="T5X only: which checkpoint_<step> (default latest).")
  parser.add_argument("--mlp_activations", default=None,
                      help="T5X only: comma-separated MLP activations when "
                      "not gated-GELU (v1.1) or ReLU (1.0), e.g. 'silu,linear'.")
  return parser


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import t5x_import  # pylint: disable=g-import-not-at-top

  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  try:
    if args.from_hf:
      if args.step is not None or args.mlp_activations:
        raise ValueError("--step and --mlp_activations apply to --from_t5x.")
      params, config = hf.load_hf(args.from_hf, shardings=cpu,
                                  param_dtype=args.param_dtype)
    else:
      activations = (tuple(args.mlp_activations.split(","))
                     if args.mlp_activations else None)
      params, config = t5x_import.load_t5x(
          args.from_t5x, step=args.step, mlp_activations=activations,
          param_dtype=args.param_dtype, shardings=cpu)
    params_io.save_params(args.to, params, config)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"ipo-md convert: {e}", file=sys.stderr)
    return 1
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
  print(f"Wrote {args.to}: {count / 1e6:.1f}M params ({config.param_dtype}), "
        f"config {config}.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
