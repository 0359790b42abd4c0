# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""`ipo-md eval`: side-by-side evaluation of N policies with one or more judges.

  ipo-md eval --policy sft=/tmp/ipo_md_tiny/sft \\
      --policy ipo_md=/tmp/ipo_md_tiny/ipo_md --task synthetic_facts_prompts \\
      --split validation --num_prompts 256 --judge gold --out /tmp/eval

Each policy (a training stage folder MODEL_DIR/<stage>, optionally @STEP; a
params checkpoint; a Hugging Face or T5X folder) samples one response per
prompt; every pair is judged in both orders by every --judge (the first is
the reference judge); the matrix of p(row > column) with bootstrap
intervals, a Bradley-Terry ranking, lengths and ROUGE go to --out as
results.json, report.md and PNGs. Samples and verdicts are cached in --out,
so a rerun (or one more policy) only does the new work.

Judges: `gold` (the synthetic task's oracle), `llm` (an OpenAI-compatible
chat API: --llm_base_url, --llm_model, --llm_api_key, or the environment
variables IPO_MD_JUDGE_BASE_URL / OPENAI_BASE_URL, IPO_MD_JUDGE_MODEL,
IPO_MD_JUDGE_API_KEY / OPENAI_API_KEY) and `pm` (a learned preference
model, or a reward model's Bradley-Terry preference: --pm_checkpoint
MODEL_DIR/<stage>, whose saved head is used).
Mistakes (a path that is not a checkpoint, vocabularies that differ, a split
the task lacks, an LLM reply that never parses) exit with status 2 and one
message that names the thing and the fix.
"""

import argparse
import os
import pathlib
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,wrong-import-position
# Checkpoint readers load fast; the data and model stacks (TensorFlow, seqio)
# are imported inside the functions that need them, so --help stays quick.
from ipo_md.checkpoints import hf
from ipo_md.checkpoints import params_io
from ipo_md.checkpoints import t5x_import
from ipo_md.checkpoints import verify
# pylint: enable=g-import-not-at-top,wrong-import-position

JUDGES = ("gold", "llm", "pm")
_ENV = {
    "base_url": ("IPO_MD_JUDGE_BASE_URL", "OPENAI_BASE_URL"),
    "model": ("IPO_MD_JUDGE_MODEL",),
    "api_key": ("IPO_MD_JUDGE_API_KEY", "OPENAI_API_KEY"),
}


class UsageError(ValueError):
  """A mistake on the command line, reported without a traceback."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="ipo-md eval", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--policy", action="append", default=[], required=True,
                 metavar="[NAME=]PATH[@STEP]",
                 help="A policy checkpoint (repeat; at least two).")
  p.add_argument("--out", required=True, help="Output and cache folder.")
  p.add_argument("--task", default="synthetic_facts_prompts")
  p.add_argument("--split", default="validation")
  p.add_argument("--num_prompts", type=int, default=256)
  p.add_argument("--input_length", type=int, default=64,
                 help="Prompt length in tokens (longer prompts truncated).")
  p.add_argument("--references", default=None,
                 help="Comma-separated text features for ROUGE (default: "
                 "targets and ideal where the task has them).")
  p.add_argument("--judge", action="append", choices=JUDGES, default=[],
                 help="gold | llm | pm (repeat; default gold; the first is "
                 "the reference judge).")
  p.add_argument("--baseline", default=None,
                 help="Policy name for win rates (default: the first).")
  p.add_argument("--judge_batch_size", type=int, default=256,
                 help="Pairs per call of an in-graph judge (gold, pm).")
  g = p.add_argument_group("sampling")
  g.add_argument("--max_decode_length", type=int, default=32)
  g.add_argument("--temperature", type=float, default=1.0)
  g.add_argument("--top_k", type=int, default=0)
  g.add_argument("--top_p", type=float, default=1.0)
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--batch_size", type=int, default=64)
  g = p.add_argument_group("statistics")
  g.add_argument("--num_bootstrap", type=int, default=1000)
  g.add_argument("--level", type=float, default=0.9)
  g = p.add_argument_group("LLM judge (--judge llm)")
  g.add_argument("--llm_base_url", default=None)
  g.add_argument("--llm_model", default=None)
  g.add_argument("--llm_api_key", default=None)
  g.add_argument("--llm_template_file", default=None,
                 help="A template with {text}, {summary1}, {summary2}.")
  g.add_argument("--llm_system_prompt", default=None)
  g.add_argument("--llm_max_tokens", type=int, default=8)
  g.add_argument("--llm_logprobs", action="store_true",
                 help="Ask for log-probs: p = P('1') / (P('1') + P('2')).")
  g.add_argument("--llm_concurrency", type=int, default=8)
  g.add_argument("--llm_requests_per_second", type=float, default=None)
  g.add_argument("--llm_timeout", type=float, default=60.0)
  g.add_argument("--llm_attempts", type=int, default=5)
  g.add_argument("--llm_cache", default=None,
                 help="Verdict cache (default: OUT/llm_cache.jsonl).")
  g = p.add_argument_group("learned preference model (--judge pm)")
  g.add_argument("--pm_checkpoint", default=None,
                 help="A preference- or reward-model training stage "
                 "(MODEL_DIR/<stage>[@STEP]; its head is read from it), or "
                 "a params / Hugging Face checkpoint with the flags below.")
  g.add_argument("--pm_input_length", type=int, default=None,
                 help="Packed input length (default: the stage's).")
  g.add_argument("--pm_readout", default=None,
                 help="Token id t (sigmoid of logit t) or 'a,b' (sigmoid of "
                 "logit a - logit b) (default: the stage's).")
  g.add_argument("--pm_template", default=None,
                 help='Template ids as JSON, e.g. \'{"first": [60], '
                 '"second": [61]}\' (default: the stage\'s).')
  g.add_argument("--pm_name", default="pm")
  g = p.add_argument_group("task locations (as for ipo-md data inspect)")
  g.add_argument("--gin_file", action="append", default=[])
  g.add_argument("--gin_binding", action="append", default=[])
  return p


def _parse_policy(spec: str) -> tuple[str, pathlib.Path, int | None]:
  """"[NAME=]PATH[@STEP]" -> (name, path, step)."""
  name, sep, rest = spec.partition("=")
  if not sep or "/" in name:
    name, rest = "", spec
  step = None
  match = re.fullmatch(r"(.+)@(\d+)", rest)
  if match:
    rest, step = match.group(1), int(match.group(2))
  path = pathlib.Path(rest).expanduser()
  return name or path.name or str(path), path, step


def _step_dir(path: pathlib.Path, step: int) -> pathlib.Path:
  """The <step> folder of a stage folder, its checkpoints/ or a step."""
  if (path / params_io.TRAIN_STATE_ITEM).is_dir():
    return path
  root = path / params_io.TRAIN_CHECKPOINTS
  return (root if root.is_dir() else path) / str(step)


def _stage_step(path: pathlib.Path, step: int | None) -> int | None:
  """The training step a stage folder is read at: `step`, or the latest
  sealed step (any finished step before a run seals them), as params_io
  resolves it; it is passed on explicitly so the two always agree."""
  if step is not None:
    return step
  if (path / params_io.TRAIN_STATE_ITEM).is_dir():
    return int(path.name) if path.name.isdigit() else None
  root = path / params_io.TRAIN_CHECKPOINTS
  root = root if root.is_dir() else path
  found = [p for p in root.iterdir() if p.name.isdigit()
           and (p / params_io.TRAIN_STATE_ITEM).is_dir()]
  sealed = [p for p in found if verify.has_manifest(p)]
  return max(int(p.name) for p in (sealed or found))


def _stage_meta(path: pathlib.Path, step: int) -> dict:
  """The JSON meta a training stage saved with its step (role, head, ...)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top


  meta_dir = _step_dir(path, step) / params_io.TRAIN_META_ITEM
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)
  return meta if isinstance(meta, dict) else {}


def _checkpoint_config(flag: str, path: pathlib.Path, step: int | None):
  """(config, step) of a checkpoint; only config files are read."""

  fix = ("Pass a training stage folder (MODEL_DIR/<stage>, optionally "
         "@STEP), a params checkpoint (config.json + params/) or a Hugging "
         "Face T5 folder.")
  if not path.is_dir():
    raise UsageError(f"{flag} {path}: no such directory. {fix}")
  try:
    if params_io.is_params_dir(path):
      kind, config = "params", params_io.load_config(path)
    elif hf.is_hf_dir(path):
      kind, config = "hf", hf.load_hf_config(path)
    elif t5x_import.is_t5x_checkpoint(path):
      kind, config = "t5x", t5x_import.load_t5x_config(path)
    elif params_io.is_train_dir(path):
      kind = "train"
      step = _stage_step(path, step)
      config = params_io.load_train_config(path, step=step)
    else:
      raise UsageError(f"{flag} {path} is not a checkpoint. {fix}")
  except FileNotFoundError as e:
    raise UsageError(f"{flag} {path}: {e} {fix}") from e
  if step is not None and kind != "train":
    raise UsageError(f"{flag} {path}@{step}: @STEP applies to training stage "
                     f"folders, and {path} is a {kind} checkpoint. Drop "
                     f"@{step}.")
  return config, step


def _identity(path: pathlib.Path, step: int | None) -> str:
  """Path, step and the newest mtime of its files: the sample-cache key."""
  where = path if step is None else _step_dir(path, step)
  mtime = max((p.stat().st_mtime_ns for p in where.iterdir()), default=0)
  return f"{path.resolve()}@{step}:{mtime}"


def _policy_configs(specs: list[str]) -> list[tuple]:
  """(name, path, step, config) of every --policy; reads config files only,
  so a bad path or a vocabulary mismatch is reported before any work."""
  if len(specs) < 2:
    raise UsageError(f"--policy was given {len(specs)} time(s); a "
                     "side-by-side evaluation needs at least two policies.")
  parsed = []
  for spec in specs:
    name, path, step = _parse_policy(spec)
    config, step = _checkpoint_config(f"--policy {spec}", path, step)
    parsed.append((name, path, step, config))
  first = parsed[0]
  for other in parsed[1:]:
    if other[3].vocab_size != first[3].vocab_size:
      raise UsageError(
          f"--policy {first[0]} ({first[1]}) has vocab_size "
          f"{first[3].vocab_size} but --policy {other[0]} ({other[1]}) has "
          f"vocab_size {other[3].vocab_size}: policies with different "
          "vocabularies cannot be judged on the same prompts. Compare "
          "policies trained with the same vocabulary.")
  return parsed


def _load_policies(parsed: list[tuple]):
  from ipo_md.eval import side_by_side  # pylint: disable=g-import-not-at-top

  policies = []
  for name, path, step, config in parsed:
    if step is not None:
      params, config = params_io.load_train_params(path, step=step)
    else:
      params, config = params_io.load_initial_params(path)
    policies.append(side_by_side.Policy(name=name, params=params,
                                        config=config,
                                        key=_identity(path, step)))
  return policies


def _env(flag_value, field: str) -> str | None:
  if flag_value:
    return flag_value
  return next((os.environ[v] for v in _ENV[field] if os.environ.get(v)),
              None)


def _llm_judge(args, out: pathlib.Path):
  from ipo_md.eval import llm_judge  # pylint: disable=g-import-not-at-top

  base_url, model = _env(args.llm_base_url, "base_url"), _env(
      args.llm_model, "model")
  if not base_url or not model:
    raise UsageError(
        "--judge llm needs a server and a model: pass --llm_base_url and "
        "--llm_model (or set IPO_MD_JUDGE_BASE_URL / OPENAI_BASE_URL and "
        "IPO_MD_JUDGE_MODEL), e.g. --llm_base_url=http://localhost:8000/v1 "
        "--llm_model=Qwen/Qwen2.5-7B-Instruct.")
  template = llm_judge.DEFAULT_TEMPLATE
  if args.llm_template_file:
    try:
      template = pathlib.Path(args.llm_template_file).read_text()
    except OSError as e:
      raise UsageError(f"--llm_template_file {args.llm_template_file}: "
                       f"{e.strerror}. Pass a readable text file.") from e
  config = llm_judge.LLMJudgeConfig(
      base_url=base_url, model=model,
      api_key=_env(args.llm_api_key, "api_key"), template=template,
      system_prompt=args.llm_system_prompt, max_tokens=args.llm_max_tokens,
      logprobs=args.llm_logprobs, timeout_s=args.llm_timeout,
      max_attempts=args.llm_attempts, concurrency=args.llm_concurrency,
      requests_per_second=args.llm_requests_per_second,
      cache_path=args.llm_cache or str(out / "llm_cache.jsonl"))
  return llm_judge.LLMJudge(config)


def _pm_head(args, path: pathlib.Path, meta: dict):
  """(role, head) of a learned judge: the head its training stage saved,
  with any --pm_* flag taking precedence."""
  import json  # pylint: disable=g-import-not-at-top

  from ipo_md.preference import learned  # pylint: disable=g-import-not-at-top

  role = meta.get("role") or learned.PREFERENCE_ROLE
  if role not in (learned.PREFERENCE_ROLE, learned.REWARD_ROLE):
    raise UsageError(
        f"--pm_checkpoint {path} is a {role!r} stage, not a preference or "
        "reward model; pass the stage that trained one (e.g. MODEL_DIR/pm).")
  head = dict(meta.get("head") or {})
  if args.pm_input_length:
    head["input_length"] = args.pm_input_length
  if args.pm_readout:
    try:
      head["readout"] = [int(t) for t in args.pm_readout.split(",")]
    except ValueError as e:
      raise UsageError(f"--pm_readout={args.pm_readout!r} must be a token id"
                       " or two, e.g. --pm_readout=3 or --pm_readout=71,272."
                       ) from e
  if args.pm_template:
    try:
      head["template"] = json.loads(args.pm_template)
    except ValueError as e:
      raise UsageError(f"--pm_template={args.pm_template!r} is not JSON; "
                       'write e.g. \'{"first": [60], "second": [61]}\'.'
                       ) from e
  if "input_length" not in head or "readout" not in head:
    raise UsageError(
        f"--pm_checkpoint {path} records no model head (it is not a "
        "training stage of ipo-md); pass --pm_input_length and --pm_readout "
        "(and --pm_template if it was trained with one), as in its gin file.")
  template = learned.Template(**{k: tuple(v) for k, v in
                                 (head.get("template") or {}).items()})
  cls = (learned.RewardHead if role == learned.REWARD_ROLE
         else learned.PairwiseHead)
  return role, cls(input_length=int(head["input_length"]),
                   readout=tuple(head["readout"]), template=template)


def _pm_judge(args, vocab_size: int):
  """A learned preference model (or a reward model's Bradley-Terry
  preference) as a judge."""
  from ipo_md.eval import judges  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import store  # pylint: disable=g-import-not-at-top
  from ipo_md.model import network  # pylint: disable=g-import-not-at-top
  from ipo_md.preference import learned  # pylint: disable=g-import-not-at-top

  if not args.pm_checkpoint:
    raise UsageError(
        "--judge pm needs --pm_checkpoint: the training stage of a "
        "preference (or reward) model, e.g. --pm_checkpoint=MODEL_DIR/pm, "
        "whose saved head is used; other checkpoints also need "
        "--pm_input_length and --pm_readout.")
  _, path, step = _parse_policy(args.pm_checkpoint)
  config, step = _checkpoint_config("--pm_checkpoint", path, step)
  if config.vocab_size != vocab_size:
    raise UsageError(
        f"--pm_checkpoint {path} has vocab_size {config.vocab_size} but the "
        f"policies have {vocab_size}; the preference model must read the "
        "policies' vocabulary.")
  meta = _stage_meta(path, step) if step is not None else {}
  role, head = _pm_head(args, path, meta)
  if step is not None:
    params, config = params_io.load_train_params(path, step=step)
  else:
    params, config = params_io.load_initial_params(path)
  net = network.Transformer(config)
  if role == learned.REWARD_ROLE:
    signal = learned.RewardModel(network=net, head=head).preference()
  else:
    signal = learned.PreferenceModel(network=net, head=head)
  key = store.digest([_identity(path, step), repr(signal)])
  return judges.SignalJudge(signal, params, name=args.pm_name,
                            batch_size=args.judge_batch_size, key=key)


def _check_gold(task: str) -> None:
  from ipo_md.data import pipeline  # pylint: disable=g-import-not-at-top
  from ipo_md.data import synthetic  # pylint: disable=g-import-not-at-top

  try:
    vocab = pipeline.get_task(task).output_features["inputs"].vocabulary
  except ValueError as e:
    raise UsageError(f"--task {task}: {e}") from e
  # Compared by file, not by encoding: another task's vocabulary may live on
  # gs:// (the T5 vocabulary), which a machine without network cannot read.
  path = str(getattr(vocab, "sentencepiece_model_file", "") or "")
  same = (path and "://" not in path and os.path.isfile(path)
          and pathlib.Path(path).read_bytes()
          == synthetic.VOCAB_PATH.read_bytes())
  if not same:
    raise UsageError(
        f"--judge gold is the oracle of the synthetic facts task, but --task "
        f"{task} uses another vocabulary. Use --judge llm or --judge pm for "
        "this task.")


def _prompts(args):
  from ipo_md.eval import side_by_side  # pylint: disable=g-import-not-at-top

  if args.num_prompts < 1:
    raise UsageError(f"--num_prompts={args.num_prompts} must be >= 1.")
  refs = args.references.split(",") if args.references else None
  try:
    return side_by_side.load_prompts(
        args.task, args.split, num_prompts=args.num_prompts,
        input_length=args.input_length, references=refs)
  except ValueError as e:
    raise UsageError(
        f"--task {args.task} --split {args.split}: {e} Fix --task, --split, "
        "--num_prompts or --references.") from e


def _register_tasks(args) -> None:
  import gin  # pylint: disable=g-import-not-at-top

  from ipo_md.cli import data as data_cli  # pylint: disable=g-import-not-at-top

  if args.gin_file or args.gin_binding:
    preamble = ["from __gin__ import dynamic_registration",
                "import ipo_md_tasks"]
    gin.parse_config_files_and_bindings(
        args.gin_file, preamble + args.gin_binding if args.gin_binding
        else [])
  data_cli.register_tasks_from_gin()


def run(args) -> dict:
  """The evaluation `args` describe (parsed flags); returns the results."""
  from ipo_md.decoding import sampling  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import judges  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import side_by_side  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(args.out).expanduser()
  cfg = sampling.SamplingConfig(
      max_decode_length=args.max_decode_length, temperature=args.temperature,
      top_k=args.top_k, top_p=args.top_p)
  parsed = _policy_configs(args.policy)
  _register_tasks(args)
  kinds = args.judge or ["gold"]
  if "gold" in kinds:
    _check_gold(args.task)
  prompts = _prompts(args)
  built = []
  for kind in kinds:
    if kind == "gold":
      built.append(judges.gold_judge(batch_size=args.judge_batch_size))
    elif kind == "llm":
      built.append(_llm_judge(args, out))
    else:
      built.append(_pm_judge(args, parsed[0][3].vocab_size))
  policies = _load_policies(parsed)
  return side_by_side.evaluate(
      policies, built, prompts, out_dir=out, sampling_cfg=cfg,
      seed=args.seed, batch_size=args.batch_size,
      num_bootstrap=args.num_bootstrap, level=args.level,
      baseline=args.baseline)


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  from ipo_md.eval import llm_judge  # pylint: disable=g-import-not-at-top
  from ipo_md.eval import report  # pylint: disable=g-import-not-at-top

  try:
    results = run(args)
  except (ValueError, FileNotFoundError, llm_judge.JudgeError) as e:
    print(f"ipo-md eval: error: {e}", file=sys.stderr)
    return 2
  print(report.markdown(results))
  print(f"\nWrote {results['files']['results']}, "
        f"{results['files']['report']} and "
        f"{len(results['files']) - 2} figures in {args.out}.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
