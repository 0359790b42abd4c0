#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM slice (a pod): ship this checkout's
# HEAD commit to each worker, install it, then run the same
# `ipo-md train --multihost` on all workers at once (jax.distributed.initialize
# finds the pod's hosts by itself).
#
# Resumable: rerunning the script resumes from MODEL_DIR's checkpoints and
# skips finished stages. With --preemptible it does that by itself: it reruns
# until the run finishes, recreating a preempted Spot slice first when
# ACCELERATOR_TYPE and RUNTIME_VERSION are set.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu_pod.sh [--preemptible] TPU_NAME ZONE MODEL_DIR [extra `ipo-md train` flags...]

  TPU_NAME    an existing TPU VM (e.g. a v4-32 slice), or, with --preemptible
              and ACCELERATOR_TYPE/RUNTIME_VERSION set, one to (re)create
  ZONE        its zone, e.g. us-central2-b
  MODEL_DIR   an absolute path that every worker sees and that outlives the
              VMs: a Filestore (NFS) or gcsfuse mount (see SETUP_COMMAND)
  --preemptible  rerun until the run finishes: after a failure, or after the
              trainer stopped on SIGTERM ("rerun the same command to resume")

environment:
  PROJECT          gcloud project (default: gcloud's configured one)
  GIN_FILE         the job (default: ipo_md_tiny.gin; e.g. ipo_md_large.gin)
  PIP_PACKAGES     installed beside ipo-md on each worker (default: jax[tpu])
  SETUP_COMMAND    run on every worker after the install, e.g. a mount:
                   'mkdir -p /tmp/gcs && gcsfuse --implicit-dirs BUCKET /tmp/gcs'
  ACCELERATOR_TYPE, RUNTIME_VERSION
                   with --preemptible: recreate the slice as Spot when it is
                   PREEMPTED or gone (e.g. v4-32, tpu-ubuntu2204-base)
  MAX_ATTEMPTS     with --preemptible, give up after this many runs (default 100)
  RETRY_SLEEP      seconds between attempts (default 60)
  PRINT_ONLY       set to 1 to print the gcloud commands instead of running them
USAGE
}

preemptible=0
if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then usage; exit 0; fi
if [[ $# -ge 1 && $1 == --preemptible ]]; then preemptible=1; shift; fi
if [[ $# -lt 3 ]]; then usage >&2; exit 2; fi
tpu_name=$1 zone=$2 model_dir=$3
shift 3
if [[ $model_dir != /* ]]; then
  echo "tpu_pod.sh: MODEL_DIR=${model_dir} must be an absolute path that" \
    "every worker sees (a Filestore or gcsfuse mount)." >&2
  exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
remote_dir='~/ipo-md'
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=${zone}")
if [[ -n ${PROJECT:-} ]]; then where+=("--project=${PROJECT}"); fi

run() {  # Prints the command with PRINT_ONLY=1, else runs it.
  if [[ ${PRINT_ONLY:-0} == 1 ]]; then printf '%q ' "$@"; echo; return 0; fi
  "$@"
}

# The remote commands. Everything user-given is quoted for the remote shell.
install_cmd="set -e; rm -rf ${remote_dir} && mkdir -p ${remote_dir}"
install_cmd+=" && tar -xzf ~/ipo-md.tar.gz -C ${remote_dir} && cd ${remote_dir}"
read -r -a pip_packages <<< "${PIP_PACKAGES:-jax[tpu]}"
install_cmd+=" && python3 -m pip install -q -e ."
install_cmd+=" $(printf '%q ' "${pip_packages[@]}")"
if [[ -n ${SETUP_COMMAND:-} ]]; then install_cmd+=" && ${SETUP_COMMAND}"; fi
train_cmd="cd ${remote_dir} && python3 -m ipo_md.cli.main train --multihost"
train_cmd+=" $(printf '%q ' "--gin_file=${GIN_FILE:-ipo_md_tiny.gin}" \
  "--gin.MODEL_DIR=${model_dir}" "$@")"

# With --preemptible: recreate a preempted or missing slice, as Spot.
ensure_tpu() {
  [[ -n ${ACCELERATOR_TYPE:-} && -n ${RUNTIME_VERSION:-} ]] || return 0
  local state
  if [[ ${PRINT_ONLY:-0} == 1 ]]; then
    run "${gcloud_tpu[@]}" describe "$tpu_name" "${where[@]}" \
      --format='value(state)'
    return 0
  fi
  state=$("${gcloud_tpu[@]}" describe "$tpu_name" "${where[@]}" \
    --format='value(state)' 2>/dev/null || echo MISSING)
  if [[ $state == READY ]]; then return 0; fi
  echo "tpu_pod.sh: ${tpu_name} is ${state:-MISSING}; recreating it." >&2
  if [[ $state != MISSING ]]; then
    run "${gcloud_tpu[@]}" delete "$tpu_name" "${where[@]}" --quiet || return
  fi
  run "${gcloud_tpu[@]}" create "$tpu_name" "${where[@]}" \
    "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}" \
    --spot
}

# HEAD of this checkout is what the workers run (commit first: uncommitted
# edits do not travel).
archive_dir=$(mktemp -d)
trap 'rm -rf "$archive_dir"' EXIT
archive=${archive_dir}/ipo-md.tar.gz
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD

install() {
  run "${gcloud_tpu[@]}" scp "$archive" "${tpu_name}:~/ipo-md.tar.gz" \
    "${where[@]}" --worker=all || return
  run "${gcloud_tpu[@]}" ssh "$tpu_name" "${where[@]}" --worker=all \
    "--command=${install_cmd}"
}

train() {  # Returns 0 when the run finished, 3 when it stopped to resume later.
  local log status
  log=$(mktemp)
  set +e
  run "${gcloud_tpu[@]}" ssh "$tpu_name" "${where[@]}" --worker=all \
    "--command=${train_cmd}" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  # The trainer exits 0 after a SIGTERM too, saying how to resume.
  if (( status == 0 )) &&
     grep -q "rerun the same command to resume" "$log"; then
    status=3
  fi
  rm -f "$log"
  return "$status"
}

if (( ! preemptible )); then
  install
  train && exit 0 || status=$?
  if (( status == 3 )); then
    echo "tpu_pod.sh: the run stopped early; rerun this script to resume." >&2
  fi
  exit "$status"
fi

attempt=0
while :; do
  attempt=$((attempt + 1))
  echo "tpu_pod.sh: attempt ${attempt} of ${MAX_ATTEMPTS:-100}." >&2
  status=0
  { ensure_tpu && install && train; } || status=$?
  if (( status == 0 )); then
    echo "tpu_pod.sh: finished after ${attempt} attempt(s)." >&2
    exit 0
  fi
  if (( attempt >= ${MAX_ATTEMPTS:-100} )); then
    echo "tpu_pod.sh: giving up after ${attempt} attempts (last status" \
      "${status}); rerun this script to resume from ${model_dir}." >&2
    exit 1
  fi
  echo "tpu_pod.sh: status ${status}; resuming in ${RETRY_SLEEP:-60}s." >&2
  sleep "${RETRY_SLEEP:-60}"
done
