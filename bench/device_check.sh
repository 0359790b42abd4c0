#!/usr/bin/env bash
# The accelerator check of bench/device_check.py: one GPU, under 6 minutes,
# one table (update MFU in bf16, sampling tokens/s, preference model, the
# paper-config online IPO-MD step; each beside Hugging Face PyTorch).
#
#   bash bench/device_check.sh            # paper config (T5-L, T5-XL PM)
#   bash bench/device_check.sh --smoke    # tiny shapes: checks it runs (CPU)
#
# Uses $PYTHON (default: python3) with jax[cuda] (or TPU), flax, optax and,
# for the PyTorch columns, torch + transformers. JAX leaves memory to PyTorch
# (no preallocation); compiled programs are cached in $JAX_CACHE_DIR so a
# second run skips most of the compilation.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export JAX_COMPILATION_CACHE_DIR="${JAX_CACHE_DIR:-/tmp/ipo_md_device_check_cache}"
PYTHON="${PYTHON:-python3}"
"${PYTHON}" -c "import jax; print('devices:', jax.devices())"
exec timeout 540 "${PYTHON}" bench/device_check.py "$@"
