# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Evaluation throughput: judged pairs per second, per judge.

Not a test: it prints one table. A "pair" is one (prompt, a, b) verdict; a
side-by-side comparison judges every pair in both orders, so it costs two.

  PYTHONPATH=. python bench/eval_throughput.py --quick   # small counts
  PYTHONPATH=. python bench/eval_throughput.py

Rows:
  * gold: the synthetic task's oracle (`judges.gold_judge`), prompts of 64
    tokens, responses of 32, batches of 1024 pairs;
  * pm tiny / pm t5-small: the learned pairwise preference model
    (`ipo_md.preference.learned.PreferenceModel`, random weights) of the
    tiny shape (prompt 64 + 2 x 32 response tokens) and of T5-small
    dimensions (prompt 256 + 2 x 64, packed into 392 tokens), batches of 64;
  * llm (local): the LLM judge against a local server that answers "1" at
    once, concurrency 8: the cost of HTTP, threads and the cache itself, and
    the same pairs again from the cache;
  * evaluate(): `side_by_side.evaluate` end to end (4 tiny random policies x
    256 synthetic prompts, gold judge: sampling, judging, statistics, files),
    cold and rerun.
The first call of each judge (compilation) is timed apart from the rest.
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from http import server as http_server

import jax
import numpy as np

from ipo_md.decoding import sampling
from ipo_md.eval import judges
from ipo_md.eval import llm_judge
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import learned

EOS = 1


def _ids(rng, m, length, vocab):
  """[m, length] random ids with EOS at a random position (then pad)."""
  x = rng.integers(2, vocab, (m, length)).astype(np.int32)
  ends = rng.integers(length // 2, length, m)
  for i, e in enumerate(ends):
    x[i, e], x[i, e + 1:] = EOS, 0
  return x


def _pairs(m, prompt_len, response_len, vocab, seed=0):
  rng = np.random.default_rng(seed)
  texts = tuple(f"text {i}" for i in range(m))
  return judges.Pairs(_ids(rng, m, prompt_len, vocab),
                      _ids(rng, m, response_len, vocab),
                      _ids(rng, m, response_len, vocab), texts,
                      tuple(f"a {i}" for i in range(m)),
                      tuple(f"b {i}" for i in range(m)))


def _time(fn, repeats):
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times) if times else first


def _row(name, judge, pairs, repeats):
  first, steady = _time(lambda: judge(pairs), repeats)
  return [name, f"{len(pairs)}", f"{first:.2f}", f"{steady:.3f}",
          f"{len(pairs) / steady:,.0f}"]


def _pm_judge(size, input_length, seed=0):
  if size == "tiny":
    cfg = config_lib.t5_1_1("tiny", vocab_size=64)
  else:
    cfg = config_lib.t5_1_1(size)
  model = network.Transformer(cfg)
  params = jax.jit(lambda r: scoring.init_params(model, r))(
      jax.random.key(seed))
  signal = learned.PreferenceModel(
      network=model, head=learned.PairwiseHead(input_length=input_length,
                                               readout=(5, 6)))
  return judges.SignalJudge(signal, params, name=f"pm_{size}", batch_size=64,
                            key=f"bench_{size}"), cfg.vocab_size


class _Instant(http_server.BaseHTTPRequestHandler):
  """A chat-completions server that answers "1" at once."""

  def log_message(self, *args):
    del args

  def do_POST(self):  # pylint: disable=invalid-name
    self.rfile.read(int(self.headers.get("Content-Length", 0)))
    body = json.dumps({"choices": [{"message": {"content": "1"}}]}).encode()
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)


def _llm_rows(m):
  httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), _Instant)
  httpd.daemon_threads = True
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    with tempfile.TemporaryDirectory() as tmp:
      config = llm_judge.LLMJudgeConfig(
          base_url=f"http://127.0.0.1:{httpd.server_port}/v1", model="m",
          concurrency=8, cache_path=f"{tmp}/cache.jsonl")
      pairs = _pairs(m, 8, 8, 64)
      judge = llm_judge.LLMJudge(config)
      start = time.perf_counter()
      judge(pairs)
      fresh = time.perf_counter() - start
      start = time.perf_counter()
      llm_judge.LLMJudge(config)(pairs)  # Reloads the cache file.
      cached = time.perf_counter() - start
  finally:
    httpd.shutdown()
    httpd.server_close()
  return [["llm (local server)", f"{m}", "-", f"{fresh:.3f}",
           f"{m / fresh:,.0f}"],
          ["llm (from cache)", f"{m}", "-", f"{cached:.3f}",
           f"{m / cached:,.0f}"]]


def _evaluate_rows(num_prompts):
  # pylint: disable-next=g-import-not-at-top,unused-import
  import ipo_md_tasks  # noqa: F401
  from ipo_md.eval import side_by_side  # pylint: disable=g-import-not-at-top

  cfg = config_lib.t5_1_1("tiny", vocab_size=64)
  model = network.Transformer(cfg)
  policies = [side_by_side.Policy(
      name=f"p{k}", params=scoring.init_params(model, jax.random.key(k)),
      config=cfg, key=f"p{k}") for k in range(4)]
  prompts = side_by_side.load_prompts(
      "synthetic_facts_prompts", "validation", num_prompts=num_prompts,
      input_length=64)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for label in ("cold", "rerun"):
      start = time.perf_counter()
      side_by_side.evaluate(
          policies, [judges.gold_judge()], prompts, out_dir=tmp,
          sampling_cfg=sampling.SamplingConfig(max_decode_length=32),
          batch_size=64, log=lambda _: None)
      seconds = time.perf_counter() - start
      pairs = 6 * num_prompts * 2
      rows.append([f"evaluate() 4 policies, {label}", f"{pairs}", "-",
                   f"{seconds:.2f}", f"{pairs / seconds:,.0f}"])
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="Fewer pairs and no T5-small row.")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  scale = 1 if args.quick else 4
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({jax.device_count()} device(s))", flush=True)
  rows = [_row("gold", judges.gold_judge(batch_size=1024),
               _pairs(2048 * scale, 64, 32, 55), args.repeats)]
  print(rows[-1], flush=True)
  pm, vocab = _pm_judge("tiny", 64 + 2 * 32 + 1)
  rows.append(_row("pm tiny", pm, _pairs(256 * scale, 64, 32, vocab),
                   args.repeats))
  print(rows[-1], flush=True)
  if not args.quick:
    pm, vocab = _pm_judge("small", 392)
    rows.append(_row("pm t5-small", pm, _pairs(128, 256, 64, vocab),
                     args.repeats))
    print(rows[-1], flush=True)
  rows += _llm_rows(256 * scale)
  rows += _evaluate_rows(64 if args.quick else 256)
  header = ["judge", "pairs", "first call (s)", "steady (s)", "pairs/s"]
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
  line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))
  print("\n" + line(header))
  print("-+-".join("-" * w for w in widths))
  for r in rows:
    print(line(r))
  print("\nA side-by-side comparison of two policies on N prompts judges 2N "
        "pairs (both orders).")


if __name__ == "__main__":
  main()
