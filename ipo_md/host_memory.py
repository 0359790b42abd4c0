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

"""The host memory that compilation leaves behind, given back before a step.

XLA's compiler, and a program that initialises parameters, allocate and
free many buffers through the C library's malloc. glibc keeps most of that
freed memory in the process (it is free inside the heap, not returned to the
operating system), while an XLA:CPU step takes its temporary buffers as new
memory. So on a CPU a training step's peak RSS held the step's own buffers
plus what compilation had left: for the T5-small IPO update in bf16 with
`remat="full"`, run as bench/sampler_and_update.py runs it, 2.80-2.86 GB
against 2.32-2.34 GB when that memory is given back first (alternating runs;
jax 0.10.2, glibc, the 2-core dev VM), with step times within the runs'
spread.

`precompile` compiles a jitted function for its arguments ahead of the first
call (jax reuses that executable for the call) and then calls glibc's
`malloc_trim(0)`, which returns free heap pages to the operating system.
The Trainer does this before each stage's first step. Elsewhere (not Linux
with glibc) `release` does nothing.

`reuse_freed_memory` then keeps the steps' own buffers: by default glibc
takes every buffer over 32 MiB from the kernel with mmap and unmaps it when
it is freed, and trims the heap's free top, so each call of an XLA:CPU step
faults its buffers in again, 4 KiB at a time (about 600,000 page faults per
T5-small update). With mmap and trimming off, the freed buffers stay in the
heap and the next call reuses them. Measured on the 2-core dev VM, alternating
processes, with `ipo_md.cli.runtime.configure_cpu_dispatch` (which puts the
step's allocations on the main thread, whose heap this governs): the T5-small
IPO update took 2.60-2.72 s against 3.29-3.34 s in bf16 and 6.03-6.13 s
against 6.63-6.76 s in float32, the tiny one 59 against 84 ms, the update's
peak RSS the same; the README's main job ran in 4 min 32 s against 5 min 18 s,
its peak RSS 2.2 GB against 1.9 GB. The Trainer turns it on before its first
step when JAX runs on the CPU; IPO_MD_REUSE_HOST_BUFFERS=0 leaves glibc as it
is.
"""

import ctypes
import ctypes.util
import functools
import os
import time
from typing import Any, Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
  """glibc's malloc_trim, or None where the C library has none."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    trim = libc.malloc_trim
  except (OSError, AttributeError):
    return None
  trim.argtypes = [ctypes.c_size_t]
  trim.restype = ctypes.c_int
  return trim


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_enabled() -> bool:
  """False when the environment sets IPO_MD_REUSE_HOST_BUFFERS to "0"."""
  return os.environ.get("IPO_MD_REUSE_HOST_BUFFERS", "1") not in ("", "0")


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
  """glibc's mallopt, or None where the C library has none."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    fn = libc.mallopt
  except (OSError, AttributeError):
    return None
  fn.argtypes = [ctypes.c_int, ctypes.c_int]
  fn.restype = ctypes.c_int
  return fn


@functools.cache
def reuse_freed_memory() -> bool:
  """Makes glibc keep freed memory in the process for reuse: no mmap for
  large buffers (M_MMAP_MAX 0), no trimming of the heap's top
  (M_TRIM_THRESHOLD at its maximum). Process-wide, for the rest of the
  process; once. `release` still returns free pages when called. Returns
  whether it took effect (False where the C library has no mallopt, or
  when IPO_MD_REUSE_HOST_BUFFERS is "0")."""
  mallopt = _mallopt()
  if mallopt is None or not reuse_enabled():
    return False
  # mallopt takes an int; glibc stores the threshold as size_t, so -1 is
  # the largest threshold there is.
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(
      mallopt(_M_TRIM_THRESHOLD, -1))


def release() -> bool:
  """Returns the heap's free pages to the operating system (glibc's
  malloc_trim(0)). Returns whether the C library could do it."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def precompile(jitted: Callable, *args: Any) -> float:
  """Compiles `jitted` (a `jax.jit` function) for `args`, then `release`s
  the memory the compiler freed. A later call `jitted(*args)` with arguments
  of the same shapes, dtypes and shardings runs that executable without
  compiling again. Returns the seconds it took."""
  start = time.perf_counter()
  jitted.lower(*args).compile()
  release()
  return time.perf_counter() - start
