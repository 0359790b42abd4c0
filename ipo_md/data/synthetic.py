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

Comparisons for preference models (`generate_comparisons`): for each document,
pairs of candidate summaries from the same noisy generator, each candidate
with its own noise level, labelled as a noisy annotator would label them:
candidate a wins with probability p_gold(a > b) = sigmoid(2 (s(a) - s(b))),
where s is the gold oracle's score (`score_summary`, a pure-Python twin of
`ipo_md.preference.oracle.FactsOracle`), then the label is flipped with
probability `label_flip_rate` (default 0). 32,768 train pairs (4 per train
document; `per_document` draws more) and 1,024 validation pairs (2 per
document); on validation the gold oracle agrees with the labels on 87.6% of
pairs (the ceiling of a learned preference model) and 9.7% of pairs are ties
(labelled by a coin flip).

Everything is generated from integer seeds by `numpy.random.default_rng`, so
every split is identical on every machine. The word-level SentencePiece
vocabulary ships with the package (`assets/synthetic_words.model`) and
`write_vocabulary` rebuilds it.
"""

import functools
import io
import math
import pathlib
import tempfile

from ipo_md.data import errors
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


def _noisy_summary(rng, facts, sentences, *, p_keep: float = P_KEEP_FACT,
                   p_invent: float = P_INVENT,
                   p_repeat: float = P_REPEAT) -> str:
  """A summary that keeps each fact with probability `p_keep` (at least one),
  may invent one fact and may repeat one clause."""
  kept = [f for f in facts if rng.random() < p_keep]
  if not kept:
    kept = [facts[rng.integers(len(facts))]]
  if rng.random() < p_invent:
    kept.insert(int(rng.integers(len(kept) + 1)),
                _invented_fact(rng, facts, sentences))
  if rng.random() < p_repeat:
    kept.append(kept[rng.integers(len(kept))])
  return " ".join(summary_clause(*f) for f in kept)


def example(split: str, index: int) -> dict[str, str]:
  """Example `index` of `split`: {"inputs", "targets", "ideal"}.

  "targets" is the noisy reference summary; "ideal" is the perfect one (for
  evaluation and tests only; training never sees it).
  """
  if split not in _SPLIT_SEEDS:
    raise errors.DataError(
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
    raise errors.DataError(
        f"The synthetic splits are fixed; seed={seed} is not supported. Set "
        "the shuffle seed of the data pipeline instead."
    )
  size = {"train": TRAIN_SIZE, "validation": VALIDATION_SIZE}.get(split)
  if size is None:
    example(split, 0)  # Raises the unknown-split error.
  n = size if num_examples is None else num_examples
  if not 0 <= n <= size:
    raise errors.DataError(
        f"num_examples={num_examples} must be in [0, {size}] for split "
        f"{split!r}."
    )
  return [example(split, i) for i in range(n)]


# The gold oracle of the comparisons: the defaults of
# `ipo_md.preference.oracle.FactsOracle` (a test checks that they agree).
GOLD_BT_SCALE = 2.0
INVENTED_WEIGHT = 1.0
REPEAT_WEIGHT = 0.5
LENGTH_WEIGHT = 0.25
# Length budget of a summary: a perfect clause "NAME COLOR OBJECT ." per fact.
TOKENS_PER_FACT = 4
# Comparisons per document by default; documents are those of the SFT splits.
# `per_document` (of `generate_comparisons`) draws more (or fewer) per
# document: the first k comparisons of a document are the same for every
# per_document >= k, so a larger split extends the default one.
COMPARISONS_PER_DOCUMENT = {"train": 4, "validation": 2}
COMPARISON_SIZES = {"train": 4 * TRAIN_SIZE, "validation": 2 * VALIDATION_SIZE}
MAX_COMPARISONS_PER_DOCUMENT = 256
# Probability that an annotator's label is flipped after its Bernoulli draw.
LABEL_FLIP_RATE = 0.0
# A candidate of quality q ~ U(0, 1) keeps each fact with probability
# 1 - 0.7 (1 - q), invents a fact with 0.7 (1 - q) and repeats with
# 0.4 (1 - q): q = 1 is the perfect summary, q = 0 worse than the references.
_MAX_DROP, _MAX_INVENT, _MAX_REPEAT = 0.7, 0.7, 0.4
# Seed of the candidate and label draws, apart from the documents' seeds.
_COMPARISON_SEED = 3
_MAX_REDRAWS = 8


def summary_counts(document: str, summary: str) -> dict[str, int]:
  """What the gold oracle counts in `summary`, in plain Python on words.

  The same counts as `ipo_md.preference.oracle.FactsOracle.components` on the
  tokenized texts (every word is one token of the task's vocabulary): a fact
  of the document is "NAME owns a COLOR OBJECT"; a claim of the summary is
  any "NAME COLOR OBJECT" word trigram; a claim equal to an earlier one is a
  repeat. `ipo_md.data` may not import the oracle, hence this twin.

  Returns:
    {"covered", "invented", "repeated", "over_budget", "num_facts",
    "length"}: distinct true claims, claims not in the document (repeats
    included), repeats of true claims, words beyond TOKENS_PER_FACT per fact,
    facts of the document, words of the summary.
  """
  return _counts(_facts_of(document), summary)


def _facts_of(document: str) -> list[tuple[str, str, str]]:
  """(name, color, object) of every "NAME owns a COLOR OBJECT" in order."""
  doc = document.split()
  return [(doc[i], doc[i + 3], doc[i + 4]) for i in range(len(doc) - 4)
          if doc[i] in _NAME_SET and doc[i + 1] == "owns"
          and doc[i + 2] == "a" and doc[i + 3] in _COLOR_SET
          and doc[i + 4] in _OBJECT_SET]


def _counts(facts: list[tuple[str, str, str]], summary: str) -> dict[str, int]:
  words = summary.split()
  true, seen = set(facts), set()
  covered = invented = repeated = 0
  for i in range(len(words) - 2):
    claim = (words[i], words[i + 1], words[i + 2])
    if not (claim[0] in _NAME_SET and claim[1] in _COLOR_SET
            and claim[2] in _OBJECT_SET):
      continue
    if claim not in true:
      invented += 1
    elif claim in seen:
      repeated += 1
    else:
      covered += 1
    seen.add(claim)
  return {
      "covered": covered, "invented": invented, "repeated": repeated,
      "over_budget": max(len(words) - TOKENS_PER_FACT * len(facts), 0),
      "num_facts": len(facts), "length": len(words),
  }


_NAME_SET, _COLOR_SET, _OBJECT_SET = set(NAMES), set(COLORS), set(OBJECTS)


def _score(counts: dict[str, int], invented_weight: float = INVENTED_WEIGHT,
           repeat_weight: float = REPEAT_WEIGHT,
           length_weight: float = LENGTH_WEIGHT) -> float:
  return (counts["covered"] - invented_weight * counts["invented"]
          - repeat_weight * counts["repeated"]
          - length_weight * counts["over_budget"])


def score_summary(document: str, summary: str, *,
                  invented_weight: float = INVENTED_WEIGHT,
                  repeat_weight: float = REPEAT_WEIGHT,
                  length_weight: float = LENGTH_WEIGHT) -> float:
  """The gold oracle's score s(summary) of `summary_counts`:
  covered - invented_weight * invented - repeat_weight * repeated
  - length_weight * over_budget."""
  return _score(summary_counts(document, summary), invented_weight,
                repeat_weight, length_weight)


def gold_preference(document: str, summary_a: str, summary_b: str, *,
                    bt_scale: float = GOLD_BT_SCALE) -> float:
  """p_gold(a > b) = sigmoid(bt_scale * (s(a) - s(b))), in float64."""
  facts = _facts_of(document)
  return _sigmoid(bt_scale * (_score(_counts(facts, summary_a))
                              - _score(_counts(facts, summary_b))))


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x))


def _candidate(rng: np.random.Generator, facts, sentences) -> str:
  noise = 1.0 - rng.random()  # 1 - q, in (0, 1].
  return _noisy_summary(
      rng, facts, sentences, p_keep=1.0 - _MAX_DROP * noise,
      p_invent=_MAX_INVENT * noise, p_repeat=_MAX_REPEAT * noise)


def _document_comparisons(split: str, doc_index: int, label_flip_rate: float,
                          per_document: int) -> list[dict[str, object]]:
  """The first `per_document` comparisons of one document."""
  seed = _SPLIT_SEEDS[split]
  sentences, facts = _document(np.random.default_rng([seed, doc_index]))
  document = " ".join(sentences)
  rng = np.random.default_rng([_COMPARISON_SEED, seed, doc_index])
  out = []
  for _ in range(per_document):
    a = _candidate(rng, facts, sentences)
    b = _candidate(rng, facts, sentences)
    for _ in range(_MAX_REDRAWS):  # Two equal texts teach nothing.
      if b != a:
        break
      b = _candidate(rng, facts, sentences)
    p_a = _sigmoid(GOLD_BT_SCALE * (_score(_counts(facts, a))
                                    - _score(_counts(facts, b))))
    a_wins = bool(rng.random() < p_a)
    if rng.random() < label_flip_rate:
      a_wins = not a_wins
    chosen, rejected = (a, b) if a_wins else (b, a)
    out.append({"inputs": document, "chosen": chosen, "rejected": rejected,
                "label": 1.0, "gold_pref": p_a if a_wins else 1.0 - p_a})
  return out


def comparison_size(split: str,
                    per_document: int | None = None) -> tuple[int, int]:
  """(number of comparisons, comparisons per document) of `split` with
  `per_document` per document (None: COMPARISONS_PER_DOCUMENT[split]), or a
  DataError naming the bad argument."""
  if split not in COMPARISON_SIZES:
    raise errors.DataError(
        f"Unknown split {split!r} of the synthetic comparisons; choose one of "
        f"{tuple(COMPARISON_SIZES)}.")
  if per_document is None:
    per_document = COMPARISONS_PER_DOCUMENT[split]
  if (isinstance(per_document, bool) or not isinstance(per_document, int)
      or not 1 <= per_document <= MAX_COMPARISONS_PER_DOCUMENT):
    raise errors.DataError(
        f"per_document={per_document!r} (comparisons per document of the "
        f"{split!r} split) must be an integer in [1, "
        f"{MAX_COMPARISONS_PER_DOCUMENT}]; the default is "
        f"{COMPARISONS_PER_DOCUMENT[split]}.")
  documents = COMPARISON_SIZES[split] // COMPARISONS_PER_DOCUMENT[split]
  return documents * per_document, per_document


def _check_comparison_args(split: str, label_flip_rate: float,
                           per_document: int | None) -> tuple[int, int]:
  """`comparison_size`, after checking `label_flip_rate` too."""
  size = comparison_size(split, per_document)
  if not 0.0 <= label_flip_rate <= 0.5:
    raise errors.DataError(
        f"label_flip_rate={label_flip_rate} must be in [0, 0.5] (0: labels "
        "drawn from the gold oracle only; 0.5: random labels).")
  return size


def comparison(split: str, index: int, *,
               label_flip_rate: float = LABEL_FLIP_RATE,
               per_document: int | None = None) -> dict[str, object]:
  """Comparison `index` of `split` (see `generate_comparisons`)."""
  size, per_doc = _check_comparison_args(split, label_flip_rate, per_document)
  if not 0 <= index < size:
    raise errors.DataError(
        f"index={index} must be in [0, {size}) for {split!r}.")
  doc_index, k = divmod(index, per_doc)
  return _document_comparisons(split, doc_index, label_flip_rate, k + 1)[k]


def generate_comparisons(
    split: str, num_examples: int | None = None, *,
    label_flip_rate: float = LABEL_FLIP_RATE,
    per_document: int | None = None) -> list[dict[str, object]]:
  """The first `num_examples` comparisons of `split` (default: all of them).

  With k = `per_document` comparisons per document (default
  COMPARISONS_PER_DOCUMENT[split]: 4 for train, 2 for validation; at most
  MAX_COMPARISONS_PER_DOCUMENT), the split holds k times as many comparisons
  as the SFT split of the same name has documents, and comparison i is about
  its document i // k. A document's first k comparisons do not depend on k,
  so more per document add fresh pairs to the default ones. Two candidates
  are drawn from the noisy generator, each with its own quality
  q ~ U(0, 1), so the quality gap of a
  pair ranges from perfect-versus-bad to two near twins (equal texts are
  redrawn). The annotator prefers candidate a with probability
  p_gold(a > b) (`gold_preference`), and its label is then flipped with
  probability `label_flip_rate`.

  Returns:
    {"inputs", "chosen" (the labelled winner), "rejected", "label" (1.0: the
    data's p(chosen > rejected), a hard label), "gold_pref" (p_gold(chosen >
    rejected))} records.
  """
  size, per_doc = _check_comparison_args(split, label_flip_rate, per_document)
  n = size if num_examples is None else num_examples
  if not 0 <= n <= size:
    raise errors.DataError(
        f"num_examples={num_examples} must be in [0, {size}] for split "
        f"{split!r}.")
  records = []
  for doc_index in range(-(-n // per_doc)):
    records += _document_comparisons(split, doc_index, label_flip_rate,
                                     per_doc)
  return records[:n]


def comparison_stats(records) -> dict[str, float]:
  """How far the gold oracle agrees with the labels of `records`.

  Returns:
    "gold_agreement": mean over pairs of 1 when the gold prefers the labelled
    winner, 1/2 on a tie, else 0 (the accuracy a perfect preference model
    reaches on these labels); "expected_gold_agreement": its expectation over
    the annotator's draws, mean max(p, 1 - p); "tie_fraction": pairs with
    equal gold scores; "mean_abs_gap": mean |p_gold - 1/2|.
  """
  p = np.asarray([r["gold_pref"] for r in records], np.float64)
  return {
      "gold_agreement": float(np.mean((p > 0.5) + 0.5 * (p == 0.5))),
      "expected_gold_agreement": float(np.mean(np.maximum(p, 1.0 - p))),
      "tie_fraction": float(np.mean(p == 0.5)),
      "mean_abs_gap": float(np.mean(np.abs(p - 0.5))),
  }


def write_vocabulary(path: pathlib.Path | str = VOCAB_PATH) -> None:
  """Trains the word-level SentencePiece model of the task and writes it.

  Ids: 0 pad, 1 EOS, 2 unk (T5's layout), then one piece per word.

  The normalisation is one rule the task's ASCII text never meets (the
  ideographic space U+3000 becomes a space), so tokenisation is the
  identity's; an empty rule set instead makes every load of the model by
  TensorFlow's SentencePiece op log "precompiled_charsmap is empty".
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  model = io.BytesIO()
  with tempfile.TemporaryDirectory() as tmp:
    rules = pathlib.Path(tmp) / "rules.tsv"
    rules.write_text("3000\t20\n")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(WORDS)] * 4),
        model_writer=model,
        model_type="word",
        vocab_size=len(WORDS) + 3,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        normalization_rule_tsv=str(rules),
        num_threads=1,
        minloglevel=2,
    )
  # The temporary rule file's path is recorded in the trainer spec: clear
  # it, so that rebuilding gives the same bytes.
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model.getvalue())
  proto.normalizer_spec.ClearField("normalization_rule_tsv")
  pathlib.Path(path).write_bytes(proto.SerializeToString())


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
      raise errors.DataError(
          f"The synthetic vocabulary {VOCAB_PATH} splits {w!r} into "
          f"{pieces}; rebuild it with `python -m ipo_md.data.synthetic`."
      )
    ids[w] = pieces[0]
  return ids


if __name__ == "__main__":
  write_vocabulary()
  print(f"Wrote {VOCAB_PATH} ({VOCAB_PATH.stat().st_size} bytes).")
