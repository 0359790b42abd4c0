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

"""The full online IPO-MD step of ipo_md, beside the same loop in PyTorch.

Not a test: it prints one table (see bench/README.md).

  python bench/online_step.py --quick     # tiny shape only
  python bench/online_step.py             # tiny and T5-small shapes
  python bench/online_step.py --dtype bfloat16   # bf16 activations in both

With `--dtype bfloat16` ipo_md's models compute in bfloat16 with float32
parameters and optimizer state (`T5Config.dtype`, T5X's mixed precision) and
PyTorch runs every phase under `torch.autocast(dtype=torch.bfloat16)`.

One online step, as the trainer runs it:
  1. sample: two completions per prompt from the token-wise geometric mixture
     of the policy and the reference (beta = 0.125), full length (EOS masked),
     recording the reference's log-probs of the sampled tokens;
  2. preference: a learned pairwise preference model (a T5 of the policy's
     dimensions, `ipo_md.preference.learned.PreferenceModel`) reads prompt +
     y + y' and gives p = sigmoid(first decoder step's logit), symmetrised
     over both orders;
  3. update: teacher-forced policy log-probs of y and y', the soft-label IPO
     loss, its gradient and one Adafactor step.
ipo_md runs the phases as three jitted functions, chained without a host
sync, and splits the step's time with `ipo_md.profiling.PhaseTimer` (as the
Trainer does with `LoopConfig.phase_timing=True`; these phases are a lean
version of `ipo_md.trainer.step`'s, without its divergence guard);
PyTorch runs the same phases eagerly (bench/hf_loops.py), in a child process
of its own (`hf_loops.in_child`).
"""

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipo_md import losses
from ipo_md import optim
from ipo_md import partitioning
from ipo_md import profiling
from ipo_md import rollouts
from ipo_md.cli import runtime
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import base as preference_base
from ipo_md.preference import learned

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_loops  # pylint: disable=g-import-not-at-top,wrong-import-position
import sampler_and_update as sau  # pylint: disable=g-import-not-at-top,wrong-import-position

PAD, EOS = 0, 1
BETA = 0.125
TAU = 0.1
LEARNING_RATE = 1e-4
READOUT = 5  # The PM's logit read out as p (any id of the vocabulary).
PHASES = ("sample", "preference", "update")


@dataclasses.dataclass(frozen=True)
class Shape:
  name: str
  size: str  # Of the policy, the reference and the preference model.
  vocab_size: int
  prompts: int
  input_length: int
  new_tokens: int
  repeats: int

  @property
  def pm_input_length(self) -> int:
    return self.input_length + 2 * self.new_tokens + 1  # x, y, y', EOS.


SHAPES = (
    Shape("tiny", "tiny", 64, 32, 64, 32, repeats=5),
    Shape("t5-small", "small", config_lib.T5_VOCAB_SIZE, 16, 256, 64,
          repeats=2),
)


# ----------------------------------------------------------------------------
# JAX / ipo_md
# ----------------------------------------------------------------------------


def jax_phases(model, pm: learned.PreferenceModel, shape: Shape, tx):
  """(sample_fn, preference_fn, update_fn), each jitted."""
  t = shape.new_tokens
  # EOS masked: every row decodes t tokens, in both frameworks.
  cfg = sampling.SamplingConfig(max_decode_length=t, min_decode_length=t)

  @jax.jit
  def sample_fn(params, ref, inputs, rng):
    b = inputs.shape[0]
    out = rollouts.sample_mixture(model, params, model, ref, inputs, rng, cfg,
                                  beta=BETA, repeats=2)
    ref_seq = jnp.sum(out.aux_logps["ref"], axis=1)  # Full length: no mask.
    return dict(y=out.tokens[:b], yp=out.tokens[b:], ref_y=ref_seq[:b],
                ref_yp=ref_seq[b:])

  @jax.jit
  def preference_fn(pm_params, inputs, samples):
    return preference_base.symmetrized(pm, pm_params, inputs, samples["y"],
                                       samples["yp"])

  def loss_fn(params, inputs, samples, label):
    b = inputs.shape[0]
    both = jnp.concatenate([samples["y"], samples["yp"]], axis=0)
    policy = scoring.score_targets(model, params, inputs, both)
    loss_B, _ = losses.ipo_loss(policy.sequence[:b], policy.sequence[b:],
                                samples["ref_y"], samples["ref_yp"], label,
                                tau=TAU)
    return jnp.mean(loss_B)

  # Compiled with the Trainer's compiler options (partitioning.sharded_jit).
  @functools.partial(partitioning.sharded_jit, mesh=sau.bench_mesh(),
                     donate_argnums=0)
  def update_fn(state, inputs, samples, label):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, samples, label)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return sample_fn, preference_fn, update_fn


def bench_jax(shape: Shape, inputs_np: np.ndarray,
              dtype: str = "float32") -> dict[str, Any]:
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size,
                          dtype=dtype)
  model = network.Transformer(cfg)
  pm = learned.PreferenceModel(
      network=model, head=learned.PairwiseHead(
          input_length=shape.pm_input_length, readout=(READOUT,)))
  init = jax.jit(lambda r: scoring.init_params(model, r))
  params, ref, pm_params = (init(jax.random.key(i)) for i in range(3))
  tx = optim.adafactor_t5(LEARNING_RATE)
  state = (params, tx.init(params))
  inputs = jnp.asarray(inputs_np)
  sample_fn, preference_fn, update_fn = jax_phases(model, pm, shape, tx)
  timer = profiling.PhaseTimer()
  walls, timings = [], []
  for step in range(shape.repeats + 1):
    t0 = time.perf_counter()
    timer.begin(step)
    samples = sample_fn(state[0], ref, inputs, jax.random.key(100 + step))
    timer.phase("sample", samples["y"])
    label = preference_fn(pm_params, inputs, samples)
    timer.phase("preference", label)
    state, loss = update_fn(state, inputs, samples, label)
    timer.phase("update", loss)
    timer.end()
    jax.block_until_ready(loss)  # Timing a step, not pipelining steps.
    walls.append(time.perf_counter() - t0)
    timings += timer.poll()
  timings += timer.close()
  if np.any(np.asarray(samples["y"]) <= EOS):
    raise AssertionError("the sampler did not decode to full length")
  out = {"first": walls[0], "step": statistics.median(walls[1:])}
  for phase in PHASES:
    out[phase] = statistics.median(t[f"timing/{phase}"] for t in timings[1:])
  out["host"] = statistics.median(t[profiling.HOST_KEY] for t in timings[1:])
  out["flops"] = sum(
      f or 0.0 for f in (
          sau._xla_flops(sample_fn, state[0], ref, inputs,  # pylint: disable=protected-access
                         jax.random.key(0)),
          sau._xla_flops(preference_fn, pm_params, inputs, samples),  # pylint: disable=protected-access
          sau._xla_flops(update_fn, state, inputs, samples, label)))  # pylint: disable=protected-access
  return out


# ----------------------------------------------------------------------------
# PyTorch / Hugging Face
# ----------------------------------------------------------------------------


def bench_torch(shape: Shape, inputs_np: np.ndarray,
                dtype: str = "float32") -> dict[str, Any] | None:
  mods = hf_loops.import_torch()
  if mods is None:
    return None
  torch, transformers = mods
  autocast = None if dtype == "float32" else getattr(torch, dtype)
  dev = hf_loops.device(torch)
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size)
  policy, ref, pm = (hf_loops.new_model(torch, transformers, cfg, dev,
                                        seed=i) for i in range(3))
  inputs = torch.as_tensor(inputs_np, dtype=torch.long, device=dev)
  mask = inputs != PAD
  update = hf_loops.make_update(torch, policy, lr=LEARNING_RATE, tau=TAU,
                                autocast=autocast)
  b, t = shape.prompts, shape.new_tokens
  rows = []
  for _ in range(shape.repeats + 1):
    times = {}
    t0 = time.perf_counter()
    policy.eval()
    tokens, ref_logp = hf_loops.mixture_loop(torch, (policy, ref), inputs,
                                             mask, t, BETA, autocast=autocast)
    y, yp = tokens[:b], tokens[b:]
    hf_loops.sync(torch, dev)
    times["sample"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    label = hf_loops.pm_probability(torch, pm, inputs, y, yp, READOUT,
                                    autocast=autocast)
    hf_loops.sync(torch, dev)
    times["preference"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    update(inputs, mask, y, yp, ref_logp[:b], ref_logp[b:], label)
    hf_loops.sync(torch, dev)
    times["update"] = time.perf_counter() - t2
    times["step"] = time.perf_counter() - t0
    rows.append(times)
  out = {k: statistics.median(r[k] for r in rows[1:]) for k in rows[0]}
  out["device"] = hf_loops.describe(torch, dev)
  return out


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def _inputs(shape: Shape) -> np.ndarray:
  """The prompts' ids, the same in both frameworks' processes."""
  return np.random.default_rng(0).integers(
      2, shape.vocab_size, (shape.prompts, shape.input_length)
  ).astype(np.int32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny shape only")
  parser.add_argument("--no-torch", action="store_true",
                      help="skip the PyTorch columns")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed steps after the first (default: 5 for "
                      "tiny, 2 for t5-small)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                      default="float32",
                      help="activation dtype of both frameworks (parameters "
                      "and optimizer state stay float32)")
  parser.add_argument("--matmul-size", type=int, default=None,
                      help="n of the float32 n^3 matmul (default: 2048 on "
                      "CPU, 8192 on an accelerator)")
  parser.add_argument("--_torch-child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._torch_child:  # pylint: disable=protected-access
    # PyTorch's timings, in a process of its own (hf_loops.in_child).
    shape = {s.name: s for s in SHAPES}[args._torch_child]  # pylint: disable=protected-access
    if args.repeats:
      shape = dataclasses.replace(shape, repeats=args.repeats)
    hf_loops.print_result(bench_torch(shape, _inputs(shape), args.dtype))
    return
  runtime.configure_cpu_runtime()  # As `ipo-md train` runs steps.
  backend = jax.default_backend()
  n = args.matmul_size or (2048 if backend == "cpu" else 8192)
  peak = sau._matmul_flops_per_s(n)  # pylint: disable=protected-access
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({backend}); float32 {n}^3 matmul: {sau._fmt(peak, 'FLOP/s')}",  # pylint: disable=protected-access
        flush=True)
  shapes = SHAPES[:1] if args.quick else SHAPES
  if args.repeats:
    shapes = [dataclasses.replace(s, repeats=args.repeats) for s in shapes]
  results = []
  for shape in shapes:
    inputs = _inputs(shape)
    print(f"\n[{shape.name}] policy, reference and PM t5_1_1("
          f"{shape.size!r}, vocab_size={shape.vocab_size}); "
          f"{shape.prompts} prompts x 2 completions, input "
          f"{shape.input_length}, {shape.new_tokens} new tokens, PM input "
          f"{shape.pm_input_length}, beta={BETA}, activations "
          f"{args.dtype}", flush=True)
    j = bench_jax(shape, inputs, args.dtype)
    tc = None if args.no_torch else hf_loops.in_child(
        __file__, ["--_torch-child", shape.name, "--repeats",
                   str(shape.repeats), "--dtype", args.dtype])
    if tc:
      print(f"  PyTorch on {tc['device']}", flush=True)
    results.append((shape, j, tc))
  peak_end = sau._matmul_flops_per_s(n)  # pylint: disable=protected-access
  best = max(peak, peak_end)
  rows = []
  for shape, j, tc in results:
    for key, label in (("step", "online step (s/step)"),
                       ("sample", "  sample, mixture (s)"),
                       ("preference", "  preference model (s)"),
                       ("update", "  IPO update (s)")):
      jt, tt = j[key], tc[key] if tc else None
      rows.append((shape.name, label, f"{jt:.3f}",
                   f"{tt:.3f}" if tt else "n/a",
                   f"{tt / jt:.2f}x" if tt else "n/a",
                   f"{j['first']:.1f} s" if key == "step" else ""))
    rows.append((shape.name, "  host (device idle, s)", f"{j['host']:.3f}",
                 "", "", ""))
    if j["flops"]:
      rate = j["flops"] / j["step"]
      rows.append((shape.name, "step FLOP/s (XLA count)", sau._fmt(rate),  # pylint: disable=protected-access
                   "", f"{rate / best:.1%} of matmul",
                   sau._fmt(j["flops"], "FLOP")))  # pylint: disable=protected-access
  print(f"\nfloat32 {n}^3 matmul: {sau._fmt(peak, 'FLOP/s')} at the start, "  # pylint: disable=protected-access
        f"{sau._fmt(peak_end, 'FLOP/s')} at the end.")  # pylint: disable=protected-access
  header = ("shape", "metric", "ipo_md (JAX)", "HF PyTorch", "JAX speed-up",
            "JAX 1st step")
  widths = [max(len(str(r[i])) for r in rows + [header])
            for i in range(len(header))]
  line = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))
  print("\n" + line(header))
  print("-+-".join("-" * w for w in widths))
  for r in rows:
    print(line(r))
  print("\nMedians of the steps after the first; the first JAX step includes "
        "compilation. JAX phase times are device times read back by "
        "profiling.PhaseTimer; PyTorch's are synchronous wall times.")


if __name__ == "__main__":
  main()
