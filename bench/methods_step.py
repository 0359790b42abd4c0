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

"""The train-step time of every method, at the tiny and T5-small shapes.

Not a test: it prints one table (docs/methods.md lists the methods).

  python bench/methods_step.py --quick    # tiny shape, few repeats
  python bench/methods_step.py            # tiny and T5-small shapes
  python bench/methods_step.py --shapes=t5-small --repeats=1

Each method's step is the trainer's own: `ipo_md.trainer.step.train_step`
with the method's objective (sampling, labelling, the loss, its gradient and
one Adafactor step), jitted once with the state donated, exactly as the
Trainer compiles it (one device, no mesh). The signals are learned models of
the policy's dimensions with random weights: a pairwise preference model for
online IPO, IPO-MD, online DPO/SLiC and Nash-MD-PG, a Bradley-Terry reward
model for RLHF; the offline methods read random (chosen, rejected) pairs.
The sampler's EOS is disabled so every completion has the full length (a
random policy would otherwise stop at random points). Reported: the first
step (compilation included) and the median of the next ones, and sampled or
scored rows per second.
"""

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ipo_md import losses
from ipo_md import types
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import learned
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives
from ipo_md.trainer import offline
from ipo_md.trainer import pipeline
from ipo_md.trainer import policy_gradient
from ipo_md.trainer import step as step_lib
from ipo_md.trainer import train_state as train_state_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampler_and_update as sau  # pylint: disable=g-import-not-at-top,wrong-import-position

READOUT = 5  # The learned signals' read-out token (any id of the vocabulary).
NO_EOS = -1  # An id the sampler never draws: full-length completions.


# The benchmark shapes of sampler_and_update.py (tiny, T5-small dimensions).
Shape = sau.Shape
SHAPES = sau.SHAPES


def _objectives(models: models_lib.Models, cfg: sampling.SamplingConfig):
  """name -> (objective, batch kind), at the paper's hyper-parameters."""
  pair = lambda fn, tau: functools.partial(fn, tau=tau)
  online = lambda fn, tau, beta=0.0: objectives.OnlinePairwise(
      models=models, loss_fn=pair(fn, tau), sampling=cfg, beta=beta)
  off = lambda fn, tau: offline.OfflinePairwise(
      models=models, loss_fn=pair(fn, tau), eos_id=NO_EOS)
  return {
      "online_ipo": (online(losses.ipo_loss, 1.0), "prompts"),
      "ipo_md": (online(losses.ipo_loss, 1.0, 0.125), "prompts"),
      "online_dpo": (online(losses.dpo_loss, 5.0), "prompts"),
      "online_slic": (online(losses.slic_loss, 10.0), "prompts"),
      "nash_md_pg": (policy_gradient.NashMDPG(
          models=models, sampling=cfg, tau=0.008, beta=0.125), "prompts"),
      "rlhf": (policy_gradient.RLHF(models=models, sampling=cfg, tau=0.05),
               "prompts"),
      "offline_ipo": (off(losses.ipo_loss, 1.0), "pairs"),
      "offline_dpo": (off(losses.dpo_loss, 5.0), "pairs"),
      "offline_slic": (off(losses.slic_loss, 10.0), "pairs"),
  }


def _models(shape: Shape):
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size)
  net = network.Transformer(cfg)
  t, n = shape.new_tokens, shape.input_length
  pm = learned.PreferenceModel(network=net, head=learned.PairwiseHead(
      input_length=n + 2 * t + 1, readout=(READOUT,)))
  rm = learned.RewardModel(network=net, head=learned.RewardHead(
      input_length=n + t + 1, readout=(READOUT,)))
  return net, models_lib.Models(policy=net, reference=net, preference=pm,
                                reward=rm)


def _batch(shape: Shape, kind: str, rng: np.random.Generator) -> dict:
  ids = lambda n: jnp.asarray(rng.integers(2, shape.vocab_size,
                                           (shape.prompts, n)), jnp.int32)
  batch = {"inputs": ids(shape.input_length)}
  if kind == "pairs":
    batch.update(chosen=ids(shape.new_tokens), rejected=ids(shape.new_tokens),
                 label=jnp.ones((shape.prompts,), jnp.float32))
  return batch


def bench(shape: Shape, names) -> list[dict]:
  net, models = _models(shape)
  cfg = sampling.SamplingConfig(max_decode_length=shape.new_tokens,
                                eos_id=NO_EOS)
  init = jax.jit(lambda r: scoring.init_params(net, r))
  params, ref, pm, rm = (init(jax.random.key(i)) for i in range(4))
  frozen = types.Frozen(reference=ref, preference=pm, reward=rm)
  tx, schedule = pipeline.OptimizerConfig(learning_rate=1e-4).build(
      num_steps=1)
  rng = np.random.default_rng(0)
  rows = []
  for name, (objective, kind) in _objectives(models, cfg).items():
    if name not in names:
      continue
    step = jax.jit(functools.partial(step_lib.train_step, objective=objective,
                                     tx=tx, schedule=schedule),
                   donate_argnums=0)
    # One buffer per leaf: create() may share one constant between fields
    # (the guard's counters), and a donated state must not.
    state = jax.tree.map(jnp.copy, train_state_lib.create(params, tx, 0))
    batch = _batch(shape, kind, rng)
    walls = []
    for _ in range(shape.repeats + 1):
      t0 = time.perf_counter()
      state, metrics = step(state, batch, frozen)
      jax.block_until_ready(metrics["loss"])
      walls.append(time.perf_counter() - t0)
    median = statistics.median(walls[1:])
    rows.append({"method": name, "shape": shape.name, "first_s": walls[0],
                 "step_ms": 1e3 * median,
                 "rows_per_s": shape.prompts * objective.rows_per_example
                 / median})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shape only, 2 timed steps")
  parser.add_argument("--methods", default="",
                      help="comma-separated subset of the methods")
  parser.add_argument("--shapes", default="",
                      help="comma-separated subset of the shapes "
                      f"({', '.join(s.name for s in SHAPES)})")
  parser.add_argument("--repeats", type=int, default=0,
                      help="timed steps after the first (default: the "
                      "shape's)")
  args = parser.parse_args(argv)
  names = set(args.methods.split(",")) if args.methods else {
      "online_ipo", "ipo_md", "online_dpo", "online_slic", "nash_md_pg",
      "rlhf", "offline_ipo", "offline_dpo", "offline_slic"}
  shapes = SHAPES[:1] if args.quick else SHAPES
  if args.quick:
    shapes = [dataclasses.replace(shapes[0], repeats=2)]
  if args.shapes:
    wanted = args.shapes.split(",")
    unknown = set(wanted) - {s.name for s in SHAPES}
    if unknown:
      parser.error(f"--shapes: unknown {sorted(unknown)}; choose from "
                   f"{[s.name for s in SHAPES]}")
    shapes = [s for s in shapes if s.name in wanted]
  if args.repeats:
    shapes = [dataclasses.replace(s, repeats=args.repeats) for s in shapes]
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
        "one device, the trainer's step (sample, label, loss, grad, "
        "Adafactor)")
  print(f"| method | shape | first step (s) | step (ms) | rows/s |")
  print("|---|---|---|---|---|")
  for shape in shapes:
    for r in bench(shape, names):
      print(f"| {r['method']} | {r['shape']} | {r['first_s']:.1f} | "
            f"{r['step_ms']:.1f} | {r['rows_per_s']:.3g} |", flush=True)


if __name__ == "__main__":
  main()
