#!/usr/bin/env bash
# The README's main job on this machine's CPU: SFT warm start, then online
# IPO-MD on the built-in synthetic task against the programmatic oracle
# (gin/ipo_md_tiny.gin). Rerunning the same command resumes from MODEL_DIR.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/local_cpu.sh MODEL_DIR [extra `ipo-md train` flags...]

  MODEL_DIR   where checkpoints, metrics.jsonl, TensorBoard and config.gin go;
              rerun the same command to resume (finished stages are skipped).
  extra flags e.g. --gin.sft/loop.LoopConfig.num_steps=100 or --dry_run.

environment:
  PYTHON      the Python with ipo-md installed (default: python3)
  GIN_FILE    the job (default: ipo_md_tiny.gin, found in the repo's gin/)
  PRINT_ONLY  set to 1 to print the command instead of running it
USAGE
}

if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then usage; exit 0; fi
if [[ $# -lt 1 || $1 == -* ]]; then usage >&2; exit 2; fi
model_dir=$1
shift

export JAX_PLATFORMS=cpu
cmd=("${PYTHON:-python3}" -m ipo_md.cli.main train
     "--gin_file=${GIN_FILE:-ipo_md_tiny.gin}" "--gin.MODEL_DIR=${model_dir}"
     "$@")
if [[ ${PRINT_ONLY:-0} == 1 ]]; then
  printf '%q ' env JAX_PLATFORMS=cpu "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
