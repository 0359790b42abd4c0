"""Shared type aliases and the small pytree carriers that cross module borders."""

from typing import Any, Mapping

import flax.struct
import jax
import numpy as np

PyTree = Any
PRNGKey = jax.Array
Array = jax.Array
# A host batch: feature name -> fixed-shape numpy array, e.g. "inputs" [B, L].
Batch = Mapping[str, np.ndarray]


@flax.struct.dataclass
class SequenceLogProbs:
  """Per-sequence log-probabilities of a batch of targets.

  Attributes:
    sequence: [batch] log pi(y|x), summed (or averaged) over target tokens.
    token: [batch, length] log pi(y_n | x, y_<n), zero where `mask` is 0.
    mask: [batch, length] 1.0 on scored tokens (up to and including EOS).
  """

  sequence: jax.Array
  token: jax.Array
  mask: jax.Array


@flax.struct.dataclass
class Frozen:
  """The frozen (never trained) parameter trees a stage reads, by role.

  A field is None when the stage does not read that role. Frozen trees are
  passed to the train step as their own argument, never inside the optimizer
  state, and no gradient flows into them.

  Attributes:
    reference: the reference policy pi_ref (the SFT model in the paper).
    preference: a pairwise preference model p(y > y' | x).
    reward: a Bradley-Terry reward model r(x, y).
  """

  reference: PyTree = None
  preference: PyTree = None
  reward: PyTree = None
