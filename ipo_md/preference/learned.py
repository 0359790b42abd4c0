"""Learned preference and reward models: T5 networks read out as p or r.

The paper aligns its policy against a *learned* pairwise preference model
p(y > y' | x): a T5 that reads the prompt and both responses and whose one
designated decoder logit, through a sigmoid, is the probability that the
first response is better (arXiv 2403.08635 §6; arXiv 2312.00886 App. G.1). Its
RL baseline uses a Bradley-Terry reward model r(x, y) of the same network,
read out as a scalar. Both are here, behind the protocols of
`ipo_md.preference.base`, so the train step uses them exactly like the
programmatic oracle.

How a model reads its input. The pieces are laid out at token level,

  pairwise: prefix + prompt + first + response_a + second + response_b
            + suffix + EOS
  reward:   prefix + prompt + first + response + suffix + EOS

where prompt and responses lose their padding and their EOS (and anything
after it), the kept tokens are packed to the left and the rest is padding.
The template pieces are token ids, so any vocabulary works; `text_template`
encodes strings with a seqio vocabulary (e.g. SteamSHP's "POST: ... RESPONSE
A: ... RESPONSE B: ... Which response is better? RESPONSE" layout). The packed
input must fit `input_length` for the longest prompt and responses the shapes
allow, otherwise tracing raises a ValueError that names the length needed
(whole-run validation traces every stage before the first one trains).

The read-out is the decoder's first-step logits (decoder input: the start
token 0): `readout=(t,)` gives sigmoid(logit[t]) (the papers' recipe) or the
reward logit[t]; `readout=(a, b)` gives sigmoid(logit[a] - logit[b]), the
probability of label token a over b, which is how text-to-text pairwise models
such as SteamSHP ("A"/"B") answer, so their Hugging Face checkpoints work
unchanged after `ipo-md convert --from_hf`.
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ipo_md.model import network
from ipo_md.model import scoring

EOS_ID = 1
PAD_ID = 0
PREFERENCE_ROLE = "preference"
REWARD_ROLE = "reward"

Ids = tuple[int, ...]


def _ids(value, name: str) -> Ids:
  if isinstance(value, int):
    value = (value,)
  ids = tuple(value)
  if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
             for i in ids):
    raise ValueError(
        f"{name}={value!r} must be a tuple of token ids (non-negative ints); "
        "use learned.text_template(...) to encode strings.")
  return ids


@dataclasses.dataclass(frozen=True, kw_only=True)
class Template:
  """Token pieces around the prompt and the response(s) (see module doc).

  Attributes:
    prefix: ids before the prompt.
    first: ids between the prompt and the (first) response.
    second: ids between the first and the second response (pairwise only).
    suffix: ids after the last response, before the final EOS.
  """

  prefix: Ids = ()
  first: Ids = ()
  second: Ids = ()
  suffix: Ids = ()

  def __post_init__(self):
    for name in ("prefix", "first", "second", "suffix"):
      object.__setattr__(self, name, _ids(getattr(self, name), name))


def text_template(*, vocabulary, prefix: str = "", first: str = "",
                  second: str = "", suffix: str = "") -> Template:
  """A Template whose pieces are strings encoded with a seqio vocabulary."""
  encode = lambda s: tuple(int(i) for i in vocabulary.encode(s)) if s else ()
  return Template(prefix=encode(prefix), first=encode(first),
                  second=encode(second), suffix=encode(suffix))


def content_mask(tokens_BxL: jax.Array, eos_id: int = EOS_ID,
                 pad_id: int = PAD_ID) -> jax.Array:
  """True on the tokens a template keeps: non-pad, before the first EOS."""
  before_eos = jnp.cumsum(tokens_BxL == eos_id, axis=1) == 0
  return before_eos & (tokens_BxL != pad_id)


def pack(segments: Sequence[jax.Array | Ids], length: int, *,
         eos_id: int = EOS_ID, pad_id: int = PAD_ID,
         what: str = "model input", eos: bool = True) -> jax.Array:
  """Packs segments left-aligned into [B, length] ids, then EOS, then pad.

  Args:
    segments: [B, L_i] token arrays (their padding and EOS are dropped) or
      tuples of ids (template pieces, kept whole).
    length: the fixed output length.
    eos_id / pad_id: special ids.
    what: names the model in the error message.
    eos: append EOS after the last kept token.

  Returns:
    int32 [B, length].
  """
  batch = next(s.shape[0] for s in segments if not isinstance(s, tuple))
  tokens, keep = [], []
  for s in segments:
    if isinstance(s, tuple):
      if not s:
        continue
      piece = jnp.broadcast_to(jnp.asarray(s, jnp.int32), (batch, len(s)))
      tokens.append(piece)
      keep.append(jnp.ones(piece.shape, bool))
    else:
      tokens.append(s.astype(jnp.int32))
      keep.append(content_mask(s, eos_id, pad_id))
  needed = sum(t.shape[1] for t in tokens) + int(eos)
  if needed > length:
    raise ValueError(
        f"The {what} needs up to {needed} tokens (segments of "
        f"{[t.shape[1] for t in tokens]} tokens: template pieces, prompt, "
        f"responses; then EOS) but its input_length is {length}. Raise "
        f"input_length to at least {needed}, or shorten the prompt/response "
        "lengths.")
  tokens_BxN = jnp.concatenate(tokens, axis=1)
  keep_BxN = jnp.concatenate(keep, axis=1)
  position_BxN = jnp.cumsum(keep_BxN, axis=1) - 1
  target_BxN = jnp.where(keep_BxN, position_BxN, length)
  rows = jnp.arange(batch)[:, None]
  out = jnp.full((batch, length), pad_id, jnp.int32)
  out = out.at[rows, target_BxN].set(tokens_BxN, mode="drop")
  if not eos:
    return out
  total_B = jnp.sum(keep_BxN, axis=1)
  return out.at[jnp.arange(batch), total_B].set(eos_id)


def packed_length(segments: Sequence[jax.Array | Ids]) -> jax.Array:
  """[B] number of tokens `pack` keeps of these segments (EOS excluded)."""
  batch = next(s.shape[0] for s in segments if not isinstance(s, tuple))
  total = jnp.zeros((batch,), jnp.int32)
  for s in segments:
    total = total + (len(s) if isinstance(s, tuple) else jnp.sum(
        content_mask(s), axis=1).astype(jnp.int32))
  return total


def _readout_ids(readout) -> Ids:
  ids = _ids(readout, "readout")
  if len(ids) not in (1, 2):
    raise ValueError(
        f"readout={readout!r} must be one token id (sigmoid of its logit) or "
        "two (sigmoid of logit[a] - logit[b]).")
  return ids


def first_step_logits(net: network.Transformer, params,
                      inputs_BxN: jax.Array) -> jax.Array:
  """Decoder logits [B, V] at the first step (decoder input: start id 0)."""
  start = jnp.zeros((inputs_BxN.shape[0], 1), jnp.int32)
  logits = net.apply({"params": params}, inputs_BxN, start)
  return logits[:, 0].astype(jnp.float32)


def readout_score(logits_BxV: jax.Array, readout: Ids) -> jax.Array:
  """logit[a] (one id) or logit[a] - logit[b] (two ids), [B] float32."""
  score = logits_BxV[:, readout[0]]
  if len(readout) == 2:
    score = score - logits_BxV[:, readout[1]]
  return score


def _readout_logits(net: network.Transformer, params, encoder_BxS,
                    decoder_BxM, position_B, readout: Ids,
                    rngs=None) -> jax.Array:
  """The read-out tokens' logits [B, len(readout)] at one decoder position
  per row, from the decoder's hidden states and only those columns of the
  output layer (no [B, M, V] logits: the vocabulary is 32k for T5). With
  `rngs` ({"dropout": key}) the network applies its dropout (training)."""
  deterministic = rngs is None

  def hidden(module, enc, dec):
    encoded = module.encode(enc, deterministic=deterministic)
    return module.decode(encoded, enc, dec, hidden_only=True,
                         deterministic=deterministic)

  h_BxMxE = nn.apply(hidden, net)({"params": params}, encoder_BxS,
                                  decoder_BxM, rngs=rngs)
  h_BxE = jnp.take_along_axis(h_BxMxE, position_B[:, None, None],
                              axis=1)[:, 0]
  kernel_ExR = network.output_columns(net.config, params, readout)
  return jnp.dot(h_BxE, kernel_ExR.astype(h_BxE.dtype),
                 preferred_element_type=jnp.float32)


def _score(logits_BxR: jax.Array) -> jax.Array:
  if logits_BxR.shape[1] == 2:
    return logits_BxR[:, 0] - logits_BxR[:, 1]
  return logits_BxR[:, 0]


LAYOUTS = ("encoder", "decoder")
START_ID = 0  # T5's decoder start token.


def _check_head(head, name: str) -> None:
  object.__setattr__(head, "readout", _readout_ids(head.readout))
  if not isinstance(head.input_length, int) or head.input_length < 2:
    raise ValueError(
        f"{name}.input_length={head.input_length!r} must be an int >= 2.")
  if head.layout not in LAYOUTS:
    raise ValueError(
        f"{name}.layout={head.layout!r}; choose one of {LAYOUTS}.")
  if head.layout == "decoder" and (not isinstance(head.decoder_length, int)
                                   or head.decoder_length < 2):
    raise ValueError(
        f"{name}.decoder_length={head.decoder_length!r}: the 'decoder' "
        "layout needs the decoder input length (an int >= 2).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairwiseHead:
  """How a T5 is read as a pairwise preference model.

  Attributes:
    input_length: the encoder input length.
    readout: (t,) for sigmoid(logit[t]), or (a, b) for sigmoid(logit[a] -
      logit[b]) (text-to-text label tokens, e.g. "A" and "B").
    template: the token pieces around prompt and responses.
    layout: "encoder" (the default; text-to-text): the encoder reads
      prefix + prompt + first + y + second + y' + suffix and the logits of
      the first decoder step are read. "decoder": the encoder reads prefix +
      prompt (as a policy does), the decoder reads start + first + y +
      second + y' + suffix teacher-forced, and the logits at its last token
      are read; a model initialised from an SFT policy then starts from
      features of how well each response fits the prompt.
    decoder_length: the decoder input length ("decoder" layout only).
  """

  input_length: int
  readout: Ids
  template: Template = Template()
  layout: str = "encoder"
  decoder_length: int = 0

  def __post_init__(self):
    _check_head(self, "PairwiseHead")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardHead:
  """How a T5 is read as a reward model r(x, y) (a scalar logit).

  Attributes:
    input_length: the encoder input length.
    readout: (t,): the reward is logit[t] at the read-out position.
    template: token pieces (`second` is unused).
    layout: "encoder" (prefix + prompt + first + y + suffix in the encoder,
      the first decoder step read) or "decoder" (prefix + prompt in the
      encoder, start + first + y + suffix in the decoder, its last token
      read); see PairwiseHead.
    decoder_length: the decoder input length ("decoder" layout only).
  """

  input_length: int
  readout: Ids
  template: Template = Template()
  layout: str = "encoder"
  decoder_length: int = 0

  def __post_init__(self):
    _check_head(self, "RewardHead")
    if len(self.readout) != 1:
      raise ValueError(
          f"RewardHead.readout={self.readout} must be one token id: the "
          "reward is that token's logit.")


def _prompt_rows(inputs_BxLi, responses, what: str) -> int:
  """R, when the responses have R * b rows for b prompts (row r * b + i is a
  response to prompt i)."""
  b, n = inputs_BxLi.shape[0], responses[0].shape[0]
  if any(r.shape[0] != n for r in responses) or n % b:
    raise ValueError(
        f"The {what} got {b} prompts and responses of "
        f"{[r.shape[0] for r in responses]} rows; each response batch must "
        "have the same rows, a multiple of the prompts' (row r * b + i "
        "answers prompt i).")
  return n // b


def read_out(net: network.Transformer, params, head, inputs_BxLi,
             responses, *, what: str, rngs=None) -> jax.Array:
  """The read-out score of a head on (prompt, response[s]), [N] float32.

  `responses` is (y,) for a reward head and (y, y') for a pairwise head.
  The responses may have N = R * b rows for b prompts, row r * b + i
  answering prompt i (e.g. both orders of each pair): in the "decoder"
  layout the prompt is then encoded once for its R rows (the decoder's
  cross-attention reads prompt i for each), with the same result as
  repeating the prompts. `rngs` ({"dropout": key}, training only) turns on
  the network's dropout.
  """
  t = head.template
  repeats = _prompt_rows(inputs_BxLi, responses, what)
  if head.layout == "encoder" and repeats > 1:
    inputs_BxLi = jnp.concatenate([inputs_BxLi] * repeats, axis=0)
  middle = [t.first, responses[0]]
  if len(responses) == 2:
    middle += [t.second, responses[1]]
  middle.append(t.suffix)
  if head.layout == "encoder":
    encoder = pack((t.prefix, inputs_BxLi, *middle), head.input_length,
                   what=what)
    decoder = jnp.full((encoder.shape[0], 1), START_ID, jnp.int32)
    position_B = jnp.zeros((encoder.shape[0],), jnp.int32)
  else:
    encoder = pack((t.prefix, inputs_BxLi), head.input_length,
                   what=f"{what} (encoder)")
    segments = ((START_ID,), *middle)
    decoder = pack(segments, head.decoder_length, eos=False,
                   what=f"{what} (decoder)")
    position_B = packed_length(segments) - 1
    if repeats > 1:  # The network takes the R rows of a prompt together.
      decoder = scoring.prompt_major(decoder, repeats)
      position_B = scoring.prompt_major(position_B, repeats)
      return scoring.framework_major(_score(_readout_logits(
          net, params, encoder, decoder, position_B, head.readout,
          rngs=rngs)), repeats)
  return _score(_readout_logits(net, params, encoder, decoder, position_B,
                                head.readout, rngs=rngs))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceModel:
  """A learned p(y > y' | x): a PreferenceSignal whose params are the
  `preference` role's frozen tree (or the trained params of a PM stage)."""

  network: network.Transformer
  head: PairwiseHead
  role: str = PREFERENCE_ROLE
  # Accepts b prompts for R * b response rows (see read_out).
  shares_prompts = True

  @property
  def vocab_size(self) -> int:
    return self.network.config.vocab_size

  def pack(self, inputs_BxLi, y_BxT, yp_BxT) -> jax.Array:
    """The encoder input of the "encoder" layout."""
    t = self.head.template
    return pack((t.prefix, inputs_BxLi, t.first, y_BxT, t.second, yp_BxT,
                 t.suffix), self.head.input_length,
                what="preference model input")

  def logit(self, params, inputs_BxLi, y_BxT, yp_BxT, *,
            rngs=None) -> jax.Array:
    """The logit of p(y > y' | x), [B] float32 (`rngs`: dropout, training
    only)."""
    return read_out(self.network, params, self.head, inputs_BxLi,
                    (y_BxT, yp_BxT), what="preference model input", rngs=rngs)

  def __call__(self, params, inputs_BxLi, y_BxT, yp_BxT) -> jax.Array:
    return jax.nn.sigmoid(self.logit(params, inputs_BxLi, y_BxT, yp_BxT))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardModel:
  """A learned Bradley-Terry reward r(x, y): a RewardSignal over the
  `reward` role's frozen tree (or the trained params of an RM stage)."""

  network: network.Transformer
  head: RewardHead
  role: str = REWARD_ROLE
  shares_prompts = True

  @property
  def vocab_size(self) -> int:
    return self.network.config.vocab_size

  def pack(self, inputs_BxLi, y_BxT) -> jax.Array:
    """The encoder input of the "encoder" layout."""
    t = self.head.template
    return pack((t.prefix, inputs_BxLi, t.first, y_BxT, t.suffix),
                self.head.input_length, what="reward model input")

  def __call__(self, params, inputs_BxLi, y_BxT, *, rngs=None) -> jax.Array:
    """r(x, y), [B] float32 (`rngs`: dropout, training only)."""
    return read_out(self.network, params, self.head, inputs_BxLi, (y_BxT,),
                    what="reward model input", rngs=rngs)

  def preference(self) -> "BradleyTerryPreference":
    return BradleyTerryPreference(reward_model=self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BradleyTerryPreference:
  """The preference a reward model implies: sigmoid(r(x, y) - r(x, y')).

  It is antisymmetric by construction; its params are the reward model's.
  """

  reward_model: RewardModel
  role: str = REWARD_ROLE
  shares_prompts = True

  @property
  def vocab_size(self) -> int:
    return self.reward_model.vocab_size

  def __call__(self, params, inputs_BxLi, y_BxT, yp_BxT) -> jax.Array:
    n = y_BxT.shape[0]
    both = self.reward_model(params, inputs_BxLi,
                             jnp.concatenate([y_BxT, yp_BxT], axis=0))
    return jax.nn.sigmoid(both[:n] - both[n:])
