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

"""Decisions taken by process 0 and shared with every host.

Why: on a pod, file-system decisions (which checkpoint to restore, whether
the run lock was taken) must be made once, by one process, and every other
process must act on the same answer, or the collective restore and save that
follow hang or diverge. With one process these are plain values.
"""

import jax
from jax.experimental import multihost_utils
import numpy as np


def is_primary() -> bool:
  return jax.process_index() == 0


def broadcast_int(value: int) -> int:
  """Process 0's `value`, on every process (others pass anything)."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def all_true(flag: bool) -> bool:
  """Whether `flag` is True on every process."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.min(flags))
