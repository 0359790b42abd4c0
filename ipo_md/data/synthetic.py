"""The built-in task: summarise the salient facts of a short synthetic document.

It exists so that the whole pipeline (SFT warm start, online IPO-MD against a
preference signal, evaluation) runs on a machine with no network and no
accelerator, in minutes, with a result that can be judged exactly.

A document is a shuffled list of sentences. A few are *facts*,
"NAME owns a COLOR OBJECT .", among *distractors* that reuse the same words
("NAME likes WEATHER days .", "a COLOR OBJECT was seen nearby ."). A perfect
summary lists every fact once, in document order, as "NAME COLOR OBJECT ."
The reference summaries are noisy on purpose (they drop facts, invent facts
from distractor words and repeat themselves), so a model fine-tuned on them
is a reasonable but improvable reference policy; the programmatic oracle in
`ipo_md.preference.oracle` rewards exactly what the references get wrong.

Everything is generated from integer seeds by `numpy.random.default_rng`, so
every split is identical on every machine. The word-level SentencePiece
vocabulary ships with the package (`assets/synthetic_words.model`) and
`write_vocabulary` rebuilds it.
"""

import functools
import io
import pathlib

import numpy as np

NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    "ivan", "judy", "mallory", "oscar", "peggy", "rupert", "sybil", "trent",
)
COLORS = (
    "red", "blue", "green", "yellow", "black", "white", "purple", "orange",
    "grey", "pink",
)
OBJECTS = (
    "boat", "car", "kite", "lamp", "drum", "bike", "clock", "chair", "piano",
    "tent", "radio", "sofa",
)
WEATHERS = ("sunny", "rainy", "windy", "foggy", "snowy", "cloudy")
# Words of the sentence templates below.
GLUE = ("owns", "a", "likes", "days", "was", "seen", "nearby", ".")
WORDS = NAMES + COLORS + OBJECTS + WEATHERS + GLUE

TRAIN_SIZE = 8_192
VALIDATION_SIZE = 512
MIN_FACTS, MAX_FACTS = 2, 4
MIN_DISTRACTORS, MAX_DISTRACTORS = 2, 4
# Noise of the reference summaries.
P_KEEP_FACT = 0.65
P_INVENT = 0.35
P_REPEAT = 0.15
# Seeds that make the splits disjoint streams.
_SPLIT_SEEDS = {"train": 1, "validation": 2}
VOCAB_PATH = pathlib.Path(__file__).parent / "assets" / "synthetic_words.model"


def fact_sentence(name: str, color: str, obj: str) -> str:
  return f"{name} owns a {color} {obj} ."


def summary_clause(name: str, color: str, obj: str) -> str:
  return f"{name} {color} {obj} ."


def _document(rng: np.random.Generator) -> tuple[list[str], list[tuple[str, str, str]]]:
  """Returns the sentences of one document and its facts in document order."""
  num_facts = int(rng.integers(MIN_FACTS, MAX_FACTS + 1))
  num_distractors = int(rng.integers(MIN_DISTRACTORS, MAX_DISTRACTORS + 1))
  owners = rng.choice(len(NAMES), size=num_facts, replace=False)
  facts = [
      (NAMES[o], COLORS[rng.integers(len(COLORS))],
       OBJECTS[rng.integers(len(OBJECTS))])
      for o in owners
  ]
  sentences = [(fact_sentence(*f), f) for f in facts]
  for _ in range(num_distractors):
    if rng.random() < 0.5:
      text = (f"{NAMES[rng.integers(len(NAMES))]} likes "
              f"{WEATHERS[rng.integers(len(WEATHERS))]} days .")
    else:
      text = (f"a {COLORS[rng.integers(len(COLORS))]} "
              f"{OBJECTS[rng.integers(len(OBJECTS))]} was seen nearby .")
    sentences.append((text, None))
  order = rng.permutation(len(sentences))
  sentences = [sentences[i] for i in order]
  return ([s for s, _ in sentences], [f for _, f in sentences if f is not None])


def _invented_fact(rng, facts, sentences) -> tuple[str, str, str]:
  """A plausible wrong fact: a real owner with the wrong colour or object."""
  true = set(facts)
  while True:
    name = facts[rng.integers(len(facts))][0]
    if rng.random() < 0.5:
      name = NAMES[rng.integers(len(NAMES))]
    cand = (name, COLORS[rng.integers(len(COLORS))],
            OBJECTS[rng.integers(len(OBJECTS))])
    if cand not in true:
      return cand


def _noisy_summary(rng, facts, sentences) -> str:
  kept = [f for f in facts if rng.random() < P_KEEP_FACT]
  if not kept:
    kept = [facts[rng.integers(len(facts))]]
  if rng.random() < P_INVENT:
    kept.insert(int(rng.integers(len(kept) + 1)),
                _invented_fact(rng, facts, sentences))
  if rng.random() < P_REPEAT:
    kept.append(kept[rng.integers(len(kept))])
  return " ".join(summary_clause(*f) for f in kept)


def example(split: str, index: int) -> dict[str, str]:
  """Example `index` of `split`: {"inputs", "targets", "ideal"}.

  "targets" is the noisy reference summary; "ideal" is the perfect one (for
  evaluation and tests only; training never sees it).
  """
  if split not in _SPLIT_SEEDS:
    raise ValueError(
        f"Unknown split {split!r} of the synthetic task; choose one of "
        f"{tuple(_SPLIT_SEEDS)}."
    )
  rng = np.random.default_rng([_SPLIT_SEEDS[split], index])
  sentences, facts = _document(rng)
  return {
      "inputs": " ".join(sentences),
      "targets": _noisy_summary(rng, facts, sentences),
      "ideal": " ".join(summary_clause(*f) for f in facts),
  }


def generate(split: str, num_examples: int | None = None,
             seed: int = 0) -> list[dict[str, str]]:
  """The first `num_examples` examples of `split` (default: the whole split).

  `seed` is accepted for API symmetry and must be 0: the split is fixed, and
  shuffling is the data pipeline's job.
  """
  if seed != 0:
    raise ValueError(
        f"The synthetic splits are fixed; seed={seed} is not supported. Set "
        "the shuffle seed of the data pipeline instead."
    )
  size = {"train": TRAIN_SIZE, "validation": VALIDATION_SIZE}.get(split)
  if size is None:
    example(split, 0)  # Raises the unknown-split error.
  n = size if num_examples is None else num_examples
  if not 0 <= n <= size:
    raise ValueError(
        f"num_examples={num_examples} must be in [0, {size}] for split "
        f"{split!r}."
    )
  return [example(split, i) for i in range(n)]


def write_vocabulary(path: pathlib.Path | str = VOCAB_PATH) -> None:
  """Trains the word-level SentencePiece model of the task and writes it.

  Ids: 0 pad, 1 EOS, 2 unk (T5's layout), then one piece per word.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(WORDS)] * 4),
      model_writer=model,
      model_type="word",
      vocab_size=len(WORDS) + 3,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      normalization_rule_name="identity",
      num_threads=1,
      minloglevel=2,
  )
  pathlib.Path(path).write_bytes(model.getvalue())


@functools.cache
def vocabulary():
  """The task's seqio SentencePiece vocabulary (no extra ids)."""
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio.SentencePieceVocabulary(str(VOCAB_PATH), extra_ids=0)


@functools.cache
def word_ids() -> dict[str, int]:
  """Word -> token id in the shipped vocabulary (each word is one piece)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  sp = spm.SentencePieceProcessor(model_file=str(VOCAB_PATH))
  ids = {}
  for w in WORDS:
    pieces = sp.encode(w)
    if len(pieces) != 1:
      raise ValueError(
          f"The synthetic vocabulary {VOCAB_PATH} splits {w!r} into "
          f"{pieces}; rebuild it with `python -m ipo_md.data.synthetic`."
      )
    ids[w] = pieces[0]
  return ids


if __name__ == "__main__":
  write_vocabulary()
  print(f"Wrote {VOCAB_PATH} ({VOCAB_PATH.stat().st_size} bytes).")
