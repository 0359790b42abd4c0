#!/usr/bin/env bash
# One process on one GPU (of this machine). Rerunning the same command
# resumes from MODEL_DIR's latest checkpoints.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/gpu_single.sh MODEL_DIR [extra `ipo-md train` flags...]

  MODEL_DIR   where checkpoints, metrics.jsonl, TensorBoard and config.gin go;
              rerun the same command to resume (finished stages are skipped).
  extra flags e.g. the large job's required values:
              --gin.INITIAL_CHECKPOINT=/ckpt/t5_large_sft --gin.PREFERENCE_CHECKPOINT=/ckpt/pm_tldr_xl/pm

environment:
  PYTHON      the Python with ipo-md and jax[cuda12] installed (default: python3)
  GIN_FILE    the job (default: ipo_md_tiny.gin; e.g. ipo_md_large.gin)
  GPU         which GPU (CUDA_VISIBLE_DEVICES; default: 0)
  PRINT_ONLY  set to 1 to print the command instead of running it
USAGE
}

if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then usage; exit 0; fi
if [[ $# -lt 1 || $1 == -* ]]; then usage >&2; exit 2; fi
model_dir=$1
shift

# cuda (not a silent fall back to the CPU when the GPU is missing); set
# JAX_PLATFORMS=rocm for AMD GPUs.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export CUDA_VISIBLE_DEVICES=${GPU:-0}
cmd=("${PYTHON:-python3}" -m ipo_md.cli.main train
     "--gin_file=${GIN_FILE:-ipo_md_tiny.gin}" "--gin.MODEL_DIR=${model_dir}"
     "$@")
if [[ ${PRINT_ONLY:-0} == 1 ]]; then
  printf '%q ' env "JAX_PLATFORMS=${JAX_PLATFORMS}" \
    "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES}" "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
