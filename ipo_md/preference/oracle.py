"""A programmatic preference oracle for the built-in synthetic facts task.

The oracle scores a summary y of a document x by

  s(y) = covered facts - invented_weight * invented facts
         - repeat_weight * repeated facts - length_weight * tokens over budget

and returns the Bradley-Terry preference p(y > y') = sigmoid(bt_scale * (s(y) -
s(y'))). A *fact* of x is a sentence "NAME owns a COLOR OBJECT ."; a fact
*claimed* by y is any "NAME COLOR OBJECT" trigram before y's EOS. The budget is
4 tokens per fact of x (the length of a perfect summary). Everything runs on
token ids with fixed shapes, so the oracle runs inside the jitted train step.
"""

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ipo_md.data import synthetic

_NO_FACT = -1
_NO_CLAIM = -2


@dataclasses.dataclass(frozen=True, kw_only=True)
class FactsOracle:
  """Bradley-Terry oracle on the synthetic task (see the module docstring).

  Attributes:
    bt_scale: slope of the Bradley-Terry link; 0 makes every pair a tie.
    invented_weight: penalty per claimed fact that is not in the document.
    repeat_weight: penalty per claim of an already claimed fact.
    length_weight: penalty per token beyond the budget.
    eos_id: end-of-sequence id of the vocabulary.
  """

  bt_scale: float = 2.0
  invented_weight: float = 1.0
  repeat_weight: float = 0.5
  length_weight: float = 0.25
  eos_id: int = 1

  def __post_init__(self):
    for name in ("bt_scale", "invented_weight", "repeat_weight",
                 "length_weight"):
      if getattr(self, name) < 0:
        raise ValueError(
            f"FactsOracle.{name}={getattr(self, name)} must be >= 0."
        )

  def check_vocabulary(self, vocabulary) -> None:
    """Raises unless `vocabulary` is the synthetic task's own.

    The oracle reads the token ids of the synthetic words; on any other
    vocabulary no id is a name, colour or object, every summary covers
    nothing and the shorter one wins. Compared by file (not by encoding):
    another task's vocabulary may be on gs://, which a machine without
    network cannot read.
    """
    path = str(getattr(vocabulary, "sentencepiece_model_file", "") or "")
    same = (path and "://" not in path and os.path.isfile(path)
            and pathlib.Path(path).read_bytes()
            == synthetic.VOCAB_PATH.read_bytes())
    if not same:
      raise ValueError(
          f"FactsOracle is the gold oracle of the synthetic facts task and "
          f"reads only its vocabulary ({synthetic.VOCAB_PATH.name}), but this "
          f"data uses {path or vocabulary!r}: it would score every summary "
          "as 'shorter wins'. Judge this task with a learned model "
          "('preference' or 'reward') or a signal made for its vocabulary.")

  def __call__(self, params, inputs_BxLi, y_BxT, yp_BxT) -> jax.Array:
    del params  # The oracle has none.
    s_y = self.score(inputs_BxLi, y_BxT)
    s_yp = self.score(inputs_BxLi, yp_BxT)
    return jax.nn.sigmoid(self.bt_scale * (s_y - s_yp))

  def score(self, inputs_BxLi: jax.Array, y_BxT: jax.Array) -> jax.Array:
    """The oracle score s(y) of each summary, shape [batch]."""
    c = self.components(inputs_BxLi, y_BxT)
    return (c["covered"] - self.invented_weight * c["invented"]
            - self.repeat_weight * c["repeated"]
            - self.length_weight * c["over_budget"])

  def components(self, inputs_BxLi, y_BxT) -> dict[str, jax.Array]:
    """Counts behind the score: covered, invented, repeated, over_budget,
    num_facts and length, each [batch] float32."""
    tables = _tables()
    facts_BxLi = _document_facts(inputs_BxLi, tables)
    claims_BxT = _summary_claims(y_BxT, tables, self.eos_id)
    is_claim = claims_BxT != _NO_CLAIM
    true_BxT = jnp.any(
        claims_BxT[:, :, None] == facts_BxLi[:, None, :], axis=-1)
    t = y_BxT.shape[1]
    earlier_TxT = jnp.tril(jnp.ones((t, t), bool), k=-1)
    same_BxTxT = claims_BxT[:, :, None] == claims_BxT[:, None, :]
    repeat_BxT = is_claim & jnp.any(same_BxTxT & earlier_TxT[None], axis=-1)
    num_facts = jnp.sum(facts_BxLi != _NO_FACT, axis=-1)
    length = _length(y_BxT, self.eos_id)
    f32 = lambda x: x.astype(jnp.float32)
    return {
        "covered": f32(jnp.sum(true_BxT & ~repeat_BxT, axis=-1)),
        "invented": f32(jnp.sum(is_claim & ~true_BxT, axis=-1)),
        "repeated": f32(jnp.sum(repeat_BxT & true_BxT, axis=-1)),
        "over_budget": f32(jnp.maximum(length - 4 * num_facts, 0)),
        "num_facts": f32(num_facts),
        "length": f32(length),
    }


def _tables() -> dict[str, np.ndarray]:
  """Per-token category masks of the synthetic vocabulary."""
  ids = synthetic.word_ids()
  size = max(ids.values()) + 1

  def mask(words):
    m = np.zeros(size, bool)
    m[[ids[w] for w in words]] = True
    return m

  return {
      "name": mask(synthetic.NAMES), "color": mask(synthetic.COLORS),
      "object": mask(synthetic.OBJECTS), "owns": ids["owns"], "a": ids["a"],
      "size": size,
  }


def _lookup(table: np.ndarray, tokens: jax.Array) -> jax.Array:
  safe = jnp.clip(tokens, 0, table.shape[0] - 1)
  return jnp.asarray(table)[safe] & (tokens < table.shape[0])


def _shift(x_BxL: jax.Array, k: int, fill) -> jax.Array:
  """x[:, i + k], padded with `fill` past the end."""
  pad = jnp.full((x_BxL.shape[0], k), fill, x_BxL.dtype)
  return jnp.concatenate([x_BxL[:, k:], pad], axis=1)


def _code(name, color, obj, size):
  return (name * size + color) * size + obj


def _document_facts(x_BxL, tables) -> jax.Array:
  """Code of the fact starting at each position ("N owns a C O"), else -1."""
  n, o, a, c, ob = (_shift(x_BxL, k, 0) for k in range(5))
  hit = (_lookup(tables["name"], n) & (o == tables["owns"]) & (a == tables["a"])
         & _lookup(tables["color"], c) & _lookup(tables["object"], ob))
  return jnp.where(hit, _code(n, c, ob, tables["size"]), _NO_FACT)


def _summary_claims(y_BxT, tables, eos_id) -> jax.Array:
  """Code of the claim starting at each position ("N C O" before EOS), else -2."""
  before_eos = jnp.cumsum(y_BxT == eos_id, axis=1) == 0
  y = jnp.where(before_eos, y_BxT, 0)
  n, c, ob = (_shift(y, k, 0) for k in range(3))
  hit = (_lookup(tables["name"], n) & _lookup(tables["color"], c)
         & _lookup(tables["object"], ob))
  return jnp.where(hit, _code(n, c, ob, tables["size"]), _NO_CLAIM)


def _length(y_BxT, eos_id) -> jax.Array:
  """Tokens before the first EOS (the whole row when there is none)."""
  return jnp.sum(jnp.cumsum(y_BxT == eos_id, axis=1) == 0, axis=1)
