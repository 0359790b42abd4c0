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

"""Generated fixtures of the data tests, in the real schemas.

Run `python tests/testdata/make_testdata.py` to rebuild the checked-in tiny
SentencePiece model (`tiny_spm.model`, trained on generated text with T5's id
layout: pad 0, EOS 1, unk 2, no BOS, nmt_nfkc normalisation). The JSON-lines
fixtures are written by the tests themselves, into temporary folders, with the
functions below: OpenAI's `tldr_3_filtered/*.jsonl` rows and summarize-from-
feedback `comparisons/*.json` rows, made of random words.
"""

import io
import json
import pathlib
import tempfile

import numpy as np

TESTDATA = pathlib.Path(__file__).resolve().parent
TINY_SPM = TESTDATA / "tiny_spm.model"

WORDS = (
    "i my me we you he she they it the a an and but or so to of in on at "
    "for with about from was is are be been have had do did not no yes "
    "friend girlfriend boyfriend mom dad job work school money car house "
    "today yesterday week month year time day night help advice question "
    "think feel want need know tell said asked told went came got made "
    "happy sad angry worried love hate like really very just still never"
).split()
SUBREDDITS = ("relationships", "AskReddit", "tifu", "personalfinance")


def _text(rng: np.random.Generator, num_words: int) -> str:
  words = rng.choice(WORDS, size=num_words)
  return " ".join(words) + "."


def tldr_sft_rows(num_rows: int, *, seed: int = 0,
                  post_words: tuple[int, int] = (5, 40)) -> list[dict]:
  """Rows in the schema of OpenAI's filtered TL;DR (id, subreddit, ...)."""
  rng = np.random.default_rng(seed)
  return [
      {
          "id": f"t3_test{seed}_{i}",
          "subreddit": SUBREDDITS[i % len(SUBREDDITS)],
          "title": _text(rng, int(rng.integers(2, 8))),
          "post": _text(rng, int(rng.integers(*post_words))),
          "summary": " " + _text(rng, int(rng.integers(3, 12))),
      }
      for i in range(num_rows)
  ]


def tldr_comparison_rows(num_rows: int, *, seed: int = 0,
                         splits: tuple[str, ...] = ("train", "valid1")
                         ) -> list[dict]:
  """Rows in the schema of summarize-from-feedback `comparisons/batch*.json`."""
  rng = np.random.default_rng(seed)
  rows = []
  for i, post in enumerate(tldr_sft_rows(num_rows, seed=seed)):
    rows.append({
        "info": {"id": post["id"], "post": post["post"],
                 "title": post["title"], "subreddit": post["subreddit"]},
        "summaries": [
            {"text": " " + _text(rng, int(rng.integers(3, 10))),
             "policy": policy, "note": None}
            for policy in ("sup2", "ref")
        ],
        "choice": int(rng.integers(2)),
        "worker": f"worker{i % 3}",
        "batch": "batch_test",
        "split": splits[i % len(splits)],
        "extra": {"confidence": int(rng.integers(1, 10))},
    })
  return rows


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def write_tiny_spm(path: pathlib.Path = TINY_SPM) -> None:
  """Trains the tiny SentencePiece model on generated TL;DR-like text.

  Like T5's model it maps newlines and tabs to spaces, through a three-rule
  normaliser (T5's full nmt_nfkc table would make the file 80x larger).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  lines = [
      f"SUBREDDIT: r/{r['subreddit']}\n\nTITLE: {r['title']}\n\nPOST: "
      f"{r['post']}\n\nTL;DR:{r['summary']}"
      for r in tldr_sft_rows(400, seed=1)
  ]
  lines += ["summarize: " + _text(rng, 20) for _ in range(100)]
  model = io.BytesIO()
  with tempfile.TemporaryDirectory() as tmp:
    rules = pathlib.Path(tmp) / "whitespace.tsv"
    rules.write_text("0A\t20\n0D\t20\n09\t20\n")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=128,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, normalization_rule_tsv=str(rules),
        num_threads=1, minloglevel=2)
  path.write_bytes(model.getvalue())


if __name__ == "__main__":
  write_tiny_spm()
  print(f"Wrote {TINY_SPM} ({TINY_SPM.stat().st_size} bytes).")
