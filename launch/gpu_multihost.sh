#!/usr/bin/env bash
# One process per host of a multi-node GPU job, each driving all the GPUs of
# its host. Start it on every host with the same arguments except PROCESS_ID
# (0 on the coordinator host, 1 .. NUM_PROCESSES-1 elsewhere). The hosts meet
# through jax.distributed.initialize() at COORDINATOR_ADDRESS. MODEL_DIR must
# be one folder that every host sees (NFS, Lustre, a mounted bucket).
# Rerunning the same commands resumes from MODEL_DIR's checkpoints.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/gpu_multihost.sh COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID MODEL_DIR [extra `ipo-md train` flags...]

  COORDINATOR_ADDRESS  host:port of process 0, reachable from every host
                       (e.g. 10.0.0.2:12345)
  NUM_PROCESSES        number of hosts (one process each)
  PROCESS_ID           this host's index, 0 .. NUM_PROCESSES-1
  MODEL_DIR            a folder shared by all hosts; rerun to resume

  Under SLURM (one task per node):
    srun --ntasks-per-node=1 bash -c 'launch/gpu_multihost.sh \
      "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):12345" \
      "$SLURM_NNODES" "$SLURM_NODEID" /shared/runs/ipo_md'

environment:
  PYTHON      the Python with ipo-md and jax[cuda12] installed (default: python3)
  GIN_FILE    the job (default: ipo_md_tiny.gin; e.g. ipo_md_large.gin)
  PRINT_ONLY  set to 1 to print the command instead of running it
USAGE
}

if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then usage; exit 0; fi
if [[ $# -lt 4 ]]; then usage >&2; exit 2; fi
coordinator=$1 num_processes=$2 process_id=$3 model_dir=$4
shift 4
if [[ ! $num_processes =~ ^[1-9][0-9]*$ || ! $process_id =~ ^[0-9]+$ ]] ||
   (( process_id >= num_processes )); then
  echo "gpu_multihost.sh: NUM_PROCESSES=${num_processes} must be >= 1 and" \
    "PROCESS_ID=${process_id} in [0, NUM_PROCESSES)." >&2
  exit 2
fi
if [[ $coordinator != *:* ]]; then
  echo "gpu_multihost.sh: COORDINATOR_ADDRESS=${coordinator} must be" \
    "host:port." >&2
  exit 2
fi

# Read by `ipo-md train --multihost` (jax.distributed.initialize). cuda, not
# a silent fall back to the CPU; JAX_PLATFORMS=rocm for AMD GPUs.
export JAX_COORDINATOR_ADDRESS=$coordinator
export JAX_NUM_PROCESSES=$num_processes
export JAX_PROCESS_ID=$process_id
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
cmd=("${PYTHON:-python3}" -m ipo_md.cli.main train --multihost
     "--gin_file=${GIN_FILE:-ipo_md_tiny.gin}" "--gin.MODEL_DIR=${model_dir}"
     "$@")
if [[ ${PRINT_ONLY:-0} == 1 ]]; then
  printf '%q ' env "JAX_COORDINATOR_ADDRESS=${coordinator}" \
    "JAX_NUM_PROCESSES=${num_processes}" "JAX_PROCESS_ID=${process_id}" \
    "JAX_PLATFORMS=${JAX_PLATFORMS}" "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
