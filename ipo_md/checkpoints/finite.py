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

"""Finding NaN or Inf in a (sharded) pytree with one device program.

Why: a diverged run must never write NaN parameters over its good
checkpoints, and a run must not resume from such a checkpoint. Checking leaf
by leaf from the host would cost one transfer per leaf (hundreds for T5);
here one jitted program reduces every floating leaf on the devices where it
lives, and a single [leaves, 2] boolean array comes back to the host.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _flags(leaves: tuple[jax.Array, ...]) -> jax.Array:
  """[len(leaves), 2] bool: (has NaN, has Inf) per leaf."""
  return jnp.stack([jnp.stack([jnp.any(jnp.isnan(x)), jnp.any(jnp.isinf(x))])
                    for x in leaves])


def _is_floating(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def non_finite_leaves(tree: Any) -> list[tuple[str, str]]:
  """(key path, "NaN" / "Inf" / "NaN and Inf") of every floating leaf of
  `tree` that is not finite, in tree order; [] when all are finite.

  Integer, boolean and PRNG-key leaves are skipped. Works on arrays sharded
  over several hosts (the flags come back replicated).
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  floats = [(path, x) for path, x in flat if _is_floating(x)]
  if not floats:
    return []
  flags = np.asarray(jax.device_get(_flags(tuple(x for _, x in floats))))
  found = []
  for (path, _), (nan, inf) in zip(floats, flags):
    if nan or inf:
      kind = "NaN and Inf" if nan and inf else ("NaN" if nan else "Inf")
      found.append((key_path_str(path), kind))
  return found


def key_path_str(path: tuple[Any, ...]) -> str:
  """'params/encoder/layers_0/...' for a jax key path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


class NonFiniteStateError(FloatingPointError):
  """A state with NaN or Inf was about to be checkpointed (or restored).

  Attributes:
    step: the step of the state.
    leaves: (key path, kind) of every non-finite leaf.
  """

  def __init__(self, step: int, leaves: list[tuple[str, str]],
               last_good: str | None):
    self.step, self.leaves = step, leaves
    path, kind = leaves[0]
    more = f" ({len(leaves)} leaves in all)" if len(leaves) > 1 else ""
    good = (f"The newest finite checkpoint is {last_good}."
            if last_good else "There is no earlier checkpoint.")
    super().__init__(
        f"Refusing to checkpoint step {step}: {path} holds {kind}{more}. "
        f"Nothing was written. {good} The run diverged: lower the learning "
        "rate, clip gradients, or check the data and the loss's "
        "hyper-parameters, then rerun (it resumes from that checkpoint).")
