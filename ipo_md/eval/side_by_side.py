# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Side-by-side evaluation: N policies, the same prompts, every pair judged.

This is the evaluation behind the paper's Table 2 (arXiv 2403.08635 §6;
docs/methods.md, "Evaluation protocol"), for any number of policies and judges:

1. Each policy samples one response per prompt (`sample_responses`: the
   policy alone, no mixture; jitted once per model config and batch shape).
   Responses are saved as JSON lines under `out_dir/samples/`, keyed by the
   policy's identity, the sampling config, the seed and the prompts, and
   reused on rerun.
2. Every judge judges every pair of policies on every prompt, in both orders
   (`judges.judge_both_orders`), so p[i, j, n] + p[j, i, n] = 1 exactly and a
   judge's constant position bias cancels. Verdicts are saved per judge and
   pair under `out_dir/verdicts/` and reused on rerun.
3. `stats` turns p into the matrix of mean p(row > column) with joint
   bootstrap intervals over prompts and a Bradley-Terry ranking with
   intervals; lengths and ROUGE against the task's references describe each
   policy.

With several judges (the gold oracle and a learned preference model, say)
every number is reported under each of them, so a policy that exploits the
learned model shows it: its win rate under the learned judge runs ahead of
its win rate under the gold one (`report` prints both side by side).

All policies share the same sampling seed (common random numbers): a policy
compared with an identical copy of itself scores exactly 0.5.
"""

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ipo_md import types
from ipo_md.data import pipeline
from ipo_md.decoding import sampling
from ipo_md.eval import judges as judges_lib
from ipo_md.eval import stats
from ipo_md.eval import store
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring

DEFAULT_REFERENCES = ("targets", "ideal")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
  """A policy to evaluate.

  Attributes:
    name: its label in reports (unique within one evaluation).
    params: the T5 params (unboxed).
    config: its T5Config.
    key: identity of the weights for the sample cache, e.g. "path@step"
      (default: a fingerprint of the params).
  """

  name: str
  params: types.PyTree
  config: config_lib.T5Config
  key: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Prompts:
  """The evaluation prompts, as ids and text, with their references.

  Attributes:
    inputs: int32 [N, Li] prompt ids (EOS then pad).
    texts: the N prompts as text (what an LLM judge reads).
    references: feature -> N reference texts (for ROUGE); may be empty.
    decode: ids -> text (stops at EOS).
    vocab_size: size of the prompts' vocabulary.
    key: identity of the prompts for the caches.
    description: e.g. "synthetic_facts_prompts:validation[:64]".
  """

  inputs: np.ndarray
  texts: Sequence[str]
  references: Mapping[str, Sequence[str]]
  decode: Callable[[Sequence[int]], str]
  vocab_size: int
  key: str
  description: str

  def __len__(self) -> int:
    return self.inputs.shape[0]


@dataclasses.dataclass(frozen=True)
class Responses:
  """One policy's responses: tokens [N, T] (EOS then pad) and their text."""

  policy: str
  tokens: np.ndarray
  texts: tuple[str, ...]
  key: str


def _text(example: Mapping[str, Any], feature: str, decode) -> str | None:
  for name in (f"{feature}_pretokenized", feature):
    value = example.get(name)
    if isinstance(value, bytes):
      return value.decode("utf-8")
    if isinstance(value, str):
      return value
  value = example.get(feature)
  return None if value is None else decode(np.asarray(value).tolist())


def load_prompts(task: str, split: str, *, num_prompts: int,
                 input_length: int,
                 references: Sequence[str] | None = None) -> Prompts:
  """The first `num_prompts` prompts of a seqio task split.

  Args:
    task / split: a registered task and one of its splits.
    num_prompts: how many (in source order).
    input_length: prompt length in tokens (longer prompts are truncated as
      the task's feature converter does).
    references: text features to score ROUGE against (default: "targets"
      and "ideal", where the task has them).

  Returns:
    The prompts.
  """
  cfg = pipeline.DataConfig(
      task=task, split=split, kind="prompts", batch_size=1,
      feature_lengths={"inputs": input_length}, shuffle=False, repeat=False)
  inputs = pipeline.load_batch(cfg, num_prompts)["inputs"]
  vocab = pipeline.get_task(task).output_features["inputs"].vocabulary
  decode = lambda ids: vocab.decode([int(i) for i in ids])
  examples = list(pipeline.task_examples(task, split, limit=num_prompts))
  texts = tuple(_text(e, "inputs", decode) for e in examples)
  refs = {}
  for feature in references or DEFAULT_REFERENCES:
    values = [_text(e, feature, decode) for e in examples]
    if any(v is None for v in values):
      if references is not None:
        raise ValueError(
            f"Task {task!r} has no reference feature {feature!r}; its "
            f"examples have {sorted(examples[0])}. Name one of them.")
      continue
    refs[feature] = tuple(values)
  key = store.digest(["prompts", task, split, num_prompts, input_length,
                      store.digest(inputs.tolist())])
  return Prompts(inputs=inputs, texts=texts, references=refs, decode=decode,
                 vocab_size=vocab.vocab_size, key=key,
                 description=f"{task}:{split}[:{num_prompts}]")


@functools.lru_cache(maxsize=32)
def _sampler(config: config_lib.T5Config, cfg: sampling.SamplingConfig):
  """The jitted sampler of one model config (compiled once per shape)."""
  model = network.Transformer(config)

  def sample_fn(params, inputs_BxL, rng):
    cache = scoring.init_decode_cache(model, params, inputs_BxL,
                                      cfg.max_decode_length)
    fn = scoring.tokens_to_logits_fn(model, params)
    return sampling.sample(fn, cache, rng, batch_size=inputs_BxL.shape[0],
                           cfg=cfg).tokens

  return jax.jit(sample_fn)


def sample_responses(policy: Policy, inputs_NxL: np.ndarray,
                     cfg: sampling.SamplingConfig, *, seed: int,
                     batch_size: int) -> np.ndarray:
  """int32 [N, T] samples of `policy`, in batches of `batch_size` (the last
  padded by repeating its last prompt); batch k uses fold_in(seed, k)."""
  fn = _sampler(policy.config, cfg)
  n = inputs_NxL.shape[0]
  size = min(batch_size, n)
  rng = jax.random.key(seed)
  out = []
  for k, start in enumerate(range(0, n, size)):
    chunk = inputs_NxL[start:start + size]
    rows = chunk.shape[0]
    if rows < size:
      chunk = np.pad(chunk, ((0, size - rows), (0, 0)), mode="edge")
    tokens = fn(policy.params, chunk.astype(np.int32),
                jax.random.fold_in(rng, k))
    out.append(np.asarray(jax.device_get(tokens), np.int32)[:rows])
  return np.concatenate(out)


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _trim(tokens: np.ndarray, eos_id: int) -> list[int]:
  """Tokens up to and including the first EOS."""
  ends = np.flatnonzero(tokens == eos_id)
  return tokens[:ends[0] + 1 if ends.size else tokens.size].tolist()


def _responses(policy: Policy, prompts: Prompts, cfg, *, seed, batch_size,
               out_dir, log) -> tuple[Responses, bool]:
  """The policy's responses, from the cache or freshly sampled; returns
  (responses, reused)."""
  identity = policy.key or store.fingerprint(policy.params)
  key = store.digest(["samples", identity, dataclasses.asdict(cfg), seed,
                      batch_size, prompts.key])
  path = out_dir / "samples" / f"{_safe(policy.name)}.{key[:12]}.jsonl"
  rows = store.read_jsonl(path)
  if rows and rows[0].get("header", {}).get("key") == key and (
      len(rows) == len(prompts) + 1):
    tokens = np.full((len(prompts), cfg.max_decode_length), cfg.pad_id,
                     np.int32)
    for i, row in enumerate(rows[1:]):
      tokens[i, :len(row["tokens"])] = row["tokens"]
    texts = tuple(row["text"] for row in rows[1:])
    return Responses(policy.name, tokens, texts, key), True
  start = time.time()
  tokens = sample_responses(policy, prompts.inputs, cfg, seed=seed,
                            batch_size=batch_size)
  texts = tuple(prompts.decode(_trim(t, cfg.eos_id)) for t in tokens)
  header = {"header": {"key": key, "policy": policy.name,
                       "policy_key": identity, "prompts": prompts.description,
                       "sampling": dataclasses.asdict(cfg), "seed": seed}}
  store.write_jsonl_atomic(path, [header] + [
      {"index": i, "prompt": prompts.texts[i],
       "tokens": _trim(t, cfg.eos_id), "text": texts[i]}
      for i, t in enumerate(tokens)])
  log(f"[eval] sampled {policy.name}: {len(prompts)} responses in "
      f"{time.time() - start:.1f}s -> {path}")
  return Responses(policy.name, tokens, texts, key), False


def _pair_batch(prompts: Prompts, a: Responses, b: Responses
                ) -> judges_lib.Pairs:
  return judges_lib.Pairs(prompts.inputs, a.tokens, b.tokens, prompts.texts,
                          a.texts, b.texts)


def _judge_pairs(judge, prompts, responses, *, out_dir, max_pairs_per_call,
                 log) -> tuple[np.ndarray, dict]:
  """p[i, j, n] of every pair under `judge` (symmetrised), plus the raw
  forward and backward verdicts; cached per pair of responses."""
  num, n = len(responses), len(prompts)
  p = np.full((num, num, n), 0.5)
  raw = {}
  todo = []
  for i in range(num):
    for j in range(i + 1, num):
      key = store.digest(["verdicts", judge.key, responses[i].key,
                          responses[j].key])
      path = (out_dir / "verdicts" / _safe(judge.name) /
              f"{_safe(responses[i].policy)}__{_safe(responses[j].policy)}"
              f".{key[:12]}.json")
      cached = store.read_json(path)
      if cached and cached.get("key") == key:
        raw[i, j] = (np.asarray(cached["forward"]),
                     np.asarray(cached["backward"]))
      else:
        todo.append((i, j, key, path))
  chunk = max(1, max_pairs_per_call // max(n, 1))
  for start in range(0, len(todo), chunk):
    group = todo[start:start + chunk]
    t0 = time.time()
    both = judges_lib.judge_both_orders(judge, judges_lib.Pairs.concatenate(
        [_pair_batch(prompts, responses[i], responses[j])
         for i, j, _, _ in group]))
    for g, (i, j, key, path) in enumerate(group):
      fwd = both.forward[g * n:(g + 1) * n]
      bwd = both.backward[g * n:(g + 1) * n]
      raw[i, j] = (fwd, bwd)
      store.write_json_atomic(path, {
          "key": key, "judge": judge.name, "a": responses[i].policy,
          "b": responses[j].policy, "forward": fwd.tolist(),
          "backward": bwd.tolist()})
    log(f"[eval] {judge.name}: judged {len(group)} policy pairs x {n} "
        f"prompts x 2 orders in {time.time() - t0:.1f}s")
  for (i, j), (fwd, bwd) in raw.items():
    p[i, j] = judges_lib.symmetrize(fwd, bwd)
    p[j, i] = 1.0 - p[i, j]
  return p, {"raw": raw, "judged": len(todo),
             "reused": num * (num - 1) // 2 - len(todo)}


def _describe_cached(responses: Responses, prompts: Prompts, eos_id: int,
                     out_dir) -> dict:
  """`_describe`, cached beside the samples (ROUGE's stemmer is slow)."""
  key = store.digest(["describe", responses.key, prompts.key,
                      sorted(prompts.references), ROUGE_TYPES, eos_id])
  path = (out_dir / "samples" /
          f"{_safe(responses.policy)}.{responses.key[:12]}.metrics.json")
  cached = store.read_json(path)
  if cached and cached.get("key") == key:
    return cached["metrics"]
  metrics = _describe(responses, prompts, eos_id)
  store.write_json_atomic(path, {"key": key, "metrics": metrics})
  return metrics


def _describe(responses: Responses, prompts: Prompts, eos_id: int) -> dict:
  """Mean length (tokens before EOS), share without EOS, ROUGE F1."""
  has_eos = np.any(responses.tokens == eos_id, axis=1)
  length = np.where(has_eos, np.argmax(responses.tokens == eos_id, axis=1),
                    responses.tokens.shape[1])
  out = {"mean_length": float(length.mean()),
         "no_eos_fraction": float(1.0 - has_eos.mean()), "rouge": {}}
  if prompts.references:
    from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for feature, refs in prompts.references.items():
      scores = [scorer.score(r, y) for r, y in zip(refs, responses.texts)]
      out["rouge"][feature] = {
          t: float(np.mean([s[t].fmeasure for s in scores]))
          for t in ROUGE_TYPES}
  return out


def _check(policies: Sequence[Policy], judges: Sequence, prompts: Prompts,
           baseline: str | None, level: float, num_bootstrap: int) -> str:
  """Validates the inputs before any sampling; returns the baseline."""
  if not 0.0 < level < 1.0 or num_bootstrap < 1:
    raise ValueError(
        f"level={level} and num_bootstrap={num_bootstrap}: the interval "
        "level must be in (0, 1) (e.g. 0.9) and num_bootstrap >= 1 (e.g. "
        "1000).")
  if len(policies) < 2:
    raise ValueError(f"evaluate needs at least 2 policies; got "
                     f"{len(policies)}. Pass two or more.")
  if not judges:
    raise ValueError("evaluate needs at least one judge.")
  names = [p.name for p in policies]
  for label, values in (("policy", names), ("judge",
                                            [j.name for j in judges])):
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
      raise ValueError(f"{label} names {dupes} are not unique; give each "
                       f"{label} its own name.")
  first = policies[0]
  for p in policies[1:]:
    if p.config.vocab_size != first.config.vocab_size:
      raise ValueError(
          f"Policies {first.name!r} (vocab_size {first.config.vocab_size}) "
          f"and {p.name!r} (vocab_size {p.config.vocab_size}) have different "
          "vocabularies; their responses cannot be judged on the same ids. "
          "Compare policies trained with the same vocabulary.")
  if first.config.vocab_size < prompts.vocab_size:
    raise ValueError(
        f"The prompts {prompts.description} use a vocabulary of "
        f"{prompts.vocab_size} ids but the policies have vocab_size "
        f"{first.config.vocab_size}; evaluate on the task the policies were "
        "trained on.")
  if baseline is None:
    return first.name
  if baseline not in names:
    raise ValueError(f"baseline={baseline!r} is not a policy; choose one "
                     f"of {names}.")
  return baseline


def evaluate(policies: Sequence[Policy], judges: Sequence[judges_lib.Judge],
             prompts: Prompts, *, out_dir, sampling_cfg:
             sampling.SamplingConfig, seed: int = 0, batch_size: int = 64,
             num_bootstrap: int = 1000, level: float = 0.9,
             baseline: str | None = None, max_pairs_per_call: int = 16384,
             write_files: bool = True,
             log: Callable[[str], None] = print) -> dict:
  """Samples, judges and summarises (see the module docstring).

  Args:
    policies: two or more policies sharing one vocabulary.
    judges: one or more judges; the first is the reference (e.g. the gold
      oracle), the others are reported beside it.
    prompts: the evaluation prompts (`load_prompts`).
    out_dir: folder for samples, verdicts, results.json, report.md, PNGs.
    sampling_cfg: how each policy samples its responses.
    seed: sampling seed, shared by all policies.
    batch_size: prompts per sampling batch.
    num_bootstrap / level: bootstrap resamples and interval coverage.
    baseline: the policy that win rates are reported against (default the
      first).
    max_pairs_per_call: the most (prompt, a, b) pairs given to a judge at
      once (before doubling for the two orders).
    write_files: write results.json, report.md and the figures.
    log: progress lines.

  Returns:
    The results (JSON-able dict; see `report.write`).
  """
  import pathlib  # pylint: disable=g-import-not-at-top

  from ipo_md.eval import report  # pylint: disable=g-import-not-at-top

  baseline = _check(policies, judges, prompts, baseline, level,
                    num_bootstrap)
  out_dir = pathlib.Path(out_dir)
  responses, sampled = [], []
  for policy in policies:
    r, reused = _responses(policy, prompts, sampling_cfg, seed=seed,
                           batch_size=batch_size, out_dir=out_dir, log=log)
    responses.append(r)
    if not reused:
      sampled.append(policy.name)
  results = {
      "prompts": {"description": prompts.description,
                  "num_prompts": len(prompts)},
      "sampling": dataclasses.asdict(sampling_cfg), "seed": seed,
      "level": level, "num_bootstrap": num_bootstrap, "baseline": baseline,
      "policies": [{"name": p.name, "key": p.key,
                    **_describe_cached(r, prompts, sampling_cfg.eos_id,
                                       out_dir)}
                   for p, r in zip(policies, responses)],
      "judges": {},
      "cache": {"sampled": sampled, "judged_pairs": {}, "reused_pairs": {}},
  }
  names = [p.name for p in policies]
  for judge in judges:
    p, info = _judge_pairs(judge, prompts, responses, out_dir=out_dir,
                           max_pairs_per_call=max_pairs_per_call, log=log)
    results["judges"][judge.name] = _summarise(
        p, info["raw"], names, baseline, num_bootstrap=num_bootstrap,
        level=level, seed=seed)
    results["judges"][judge.name]["key"] = judge.key
    results["cache"]["judged_pairs"][judge.name] = info["judged"]
    results["cache"]["reused_pairs"][judge.name] = info["reused"]
  if write_files:
    results["files"] = report.write(results, out_dir)
  return results


def _summarise(p, raw, names, baseline, *, num_bootstrap, level, seed
               ) -> dict:
  """Matrix, intervals, Bradley-Terry and win rates vs the baseline."""
  summary = stats.pairwise_summary(p, num_samples=num_bootstrap, level=level,
                                   seed=seed)
  strength = stats.bradley_terry(summary.mean)
  low, high = stats.bradley_terry_intervals(summary.boot, level=level)
  b = names.index(baseline)
  bias = [np.mean(f + r - 1.0) / 2.0 for f, r in raw.values()]
  return {
      "matrix": summary.mean.tolist(), "low": summary.low.tolist(),
      "high": summary.high.tolist(),
      "bradley_terry": {
          "strength": strength.tolist(), "low": low.tolist(),
          "high": high.tolist(),
          "ranking": [names[i] for i in stats.ranking(strength)]},
      "vs_baseline": {
          name: {"mean": float(summary.mean[i, b]),
                 "low": float(summary.low[i, b]),
                 "high": float(summary.high[i, b])}
          for i, name in enumerate(names)},
      "position_bias": float(np.mean(bias)) if bias else 0.0,
      "per_prompt": p,  # [P, P, N]; in memory only (not in results.json).
  }
