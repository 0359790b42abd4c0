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

"""The accelerator check: the paper-config online IPO-MD step on one device.

Run it through bench/device_check.sh (one GPU, under 6 minutes); on a CPU,
`--smoke` runs the same code at tiny shapes to show that it works:

  bash bench/device_check.sh            # T5-L policy/ref, T5-XL PM
  bash bench/device_check.sh --smoke    # tiny shapes, any machine

One table, each row beside Hugging Face PyTorch where it has an equivalent:
  * update: teacher-forced log-probs of y and y', soft-label IPO, gradient,
    Adafactor; T5-large policy, bfloat16 activations, float32 parameters and
    optimizer state. ms/step, model FLOP/s and MFU = model FLOPs / (time x
    peak), with the device's dense bf16 peak from its data sheet and, beside
    it, the fraction of a measured bf16 matmul;
  * sampling: two completions per prompt from the beta = 0.125 mixture of
    policy and reference (both models at every step), tokens/s;
  * preference: the T5-XL pairwise PM on (x, y, y') and (x, y', y);
  * online step: the three chained, steps/s.
The paper's config: 32 prompts x 2 samples, input 1024, 128 new tokens, PM
input 1024 + 2 x 128 + 1. The paper's 16 TPU v5e chips did about 0.25 steps/s.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from ipo_md import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import network  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import scoring  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.preference import learned  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_loops  # pylint: disable=g-import-not-at-top,wrong-import-position
import online_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import sampler_and_update as sau  # pylint: disable=g-import-not-at-top,wrong-import-position

# Dense bfloat16 peak FLOP/s (no sparsity) from the vendors' data sheets,
# matched against jax's device_kind.
PEAK_BF16 = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("A10G", 125e12), ("A10", 125e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v4", 275e12),
)


@dataclasses.dataclass(frozen=True)
class Config:
  policy: str
  pm: str
  vocab_size: int
  prompts: int
  input_length: int
  new_tokens: int
  repeats: int

  @property
  def pm_input_length(self) -> int:
    return self.input_length + 2 * self.new_tokens + 1


PAPER = Config("large", "xl", config_lib.T5_VOCAB_SIZE, 32, 1024, 128, 3)
SMOKE = Config("tiny", "tiny", 64, 4, 32, 8, 2)


def _peak(device_kind: str) -> float | None:
  for name, flops in PEAK_BF16:
    if name.lower() in device_kind.lower():
      return flops
  return None


def _bf16_matmul(n: int) -> float:
  a = jnp.ones((n, n), jnp.bfloat16)
  mm = jax.jit(lambda x: x @ x)
  jax.block_until_ready(mm(a))
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a))
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times)


def _online_shape(c: Config) -> online_step.Shape:
  return online_step.Shape("check", c.policy, c.vocab_size, c.prompts,
                           c.input_length, c.new_tokens, c.repeats)


def run_jax(c: Config) -> dict:
  """Phase times of ipo_md on the default device."""
  bf16 = dict(dtype="bfloat16")
  policy_net = network.Transformer(config_lib.t5_1_1(
      c.policy, vocab_size=c.vocab_size, **bf16))
  pm_net = network.Transformer(config_lib.t5_1_1(
      c.pm, vocab_size=c.vocab_size, **bf16))
  pm = learned.PreferenceModel(network=pm_net, head=learned.PairwiseHead(
      input_length=c.pm_input_length, readout=(online_step.READOUT,)))
  to_bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)
  params = jax.jit(lambda r: scoring.init_params(policy_net, r))(
      jax.random.key(0))
  ref = jax.jit(lambda r: to_bf16(scoring.init_params(policy_net, r)))(
      jax.random.key(1))  # Frozen models are stored in bfloat16.
  pm_params = jax.jit(lambda r: to_bf16(scoring.init_params(pm_net, r)))(
      jax.random.key(2))
  tx = optim.adafactor_t5(online_step.LEARNING_RATE)
  state = (params, tx.init(params))
  inputs = jnp.asarray(np.random.default_rng(0).integers(
      2, c.vocab_size, (c.prompts, c.input_length)).astype(np.int32))
  sample_fn, preference_fn, update_fn = online_step.jax_phases(
      policy_net, pm, _online_shape(c), tx)
  out = {"first": {}, "phase": {k: [] for k in online_step.PHASES},
         "step": []}
  for step in range(c.repeats + 1):
    t0 = time.perf_counter()
    samples = jax.block_until_ready(
        sample_fn(state[0], ref, inputs, jax.random.key(step)))
    t1 = time.perf_counter()
    label = jax.block_until_ready(preference_fn(pm_params, inputs, samples))
    t2 = time.perf_counter()
    state, loss = jax.block_until_ready(
        update_fn(state, inputs, samples, label))
    t3 = time.perf_counter()
    times = dict(sample=t1 - t0, preference=t2 - t1, update=t3 - t2)
    if step == 0:
      out["first"] = times
    else:
      for k, v in times.items():
        out["phase"][k].append(v)
      out["step"].append(t3 - t0)
  out["median"] = {k: statistics.median(v) for k, v in out["phase"].items()}
  out["step_s"] = statistics.median(out["step"])
  out["update_flops"] = sau._xla_flops(update_fn, state, inputs, samples,  # pylint: disable=protected-access
                                       label)
  out["loss"] = float(loss)
  return out


def run_torch(c: Config, deadline: float) -> dict | None:
  mods = hf_loops.import_torch()
  if mods is None:
    return None
  torch, transformers = mods
  dev = hf_loops.device(torch)
  policy_cfg = config_lib.t5_1_1(c.policy, vocab_size=c.vocab_size)
  pm_cfg = config_lib.t5_1_1(c.pm, vocab_size=c.vocab_size)
  policy = hf_loops.new_model(torch, transformers, policy_cfg, dev, seed=0)
  ref = hf_loops.new_model(torch, transformers, policy_cfg, dev, seed=1,
                           dtype=torch.bfloat16)
  pm = hf_loops.new_model(torch, transformers, pm_cfg, dev, seed=2,
                          dtype=torch.bfloat16)
  inputs = torch.as_tensor(np.random.default_rng(0).integers(
      2, c.vocab_size, (c.prompts, c.input_length)), dtype=torch.long,
                           device=dev)
  mask = inputs != hf_loops.PAD
  bf16 = torch.bfloat16
  update = hf_loops.make_update(torch, policy, lr=online_step.LEARNING_RATE,
                                tau=online_step.TAU, autocast=bf16)
  b = c.prompts
  phases = {k: [] for k in online_step.PHASES}
  for step in range(c.repeats + 1):
    if step > 1 and time.perf_counter() > deadline:
      print(f"  [torch] time budget reached after {step - 1} timed steps",
            file=sys.stderr)
      break
    t0 = time.perf_counter()
    policy.eval()
    tokens, ref_logp = hf_loops.mixture_loop(
        torch, (policy, ref), inputs, mask, c.new_tokens, online_step.BETA,
        autocast=bf16)
    hf_loops.sync(torch, dev)
    t1 = time.perf_counter()
    label = hf_loops.pm_probability(torch, pm, inputs, tokens[:b], tokens[b:],
                                    online_step.READOUT, autocast=bf16)
    hf_loops.sync(torch, dev)
    t2 = time.perf_counter()
    update(inputs, mask, tokens[:b], tokens[b:], ref_logp[:b], ref_logp[b:],
           label)
    hf_loops.sync(torch, dev)
    t3 = time.perf_counter()
    if step > 0:
      for k, v in zip(online_step.PHASES, (t1 - t0, t2 - t1, t3 - t2)):
        phases[k].append(v)
  if not phases["update"]:
    return None
  med = {k: statistics.median(v) for k, v in phases.items()}
  return {"median": med, "step_s": sum(med.values()),
          "device": hf_loops.describe(torch, dev)}


def _table(rows):
  header = ("row", "ipo_md (JAX)", "HF PyTorch", "JAX speed-up", "note")
  widths = [max(len(str(r[i])) for r in rows + [header])
            for i in range(len(header))]
  line = lambda r: " | ".join(str(x).ljust(w) for x, w in zip(r, widths))
  print(line(header))
  print("-+-".join("-" * w for w in widths))
  for r in rows:
    print(line(r))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes (runs on a CPU in a minute or two)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--budget-s", type=float, default=330.0,
                      help="stop timing PyTorch once this many seconds have "
                      "passed since the start (default 330)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  c = SMOKE if args.smoke else PAPER
  dev = jax.devices()[0]
  print(f"JAX {jax.__version__} on {dev.device_kind} ({dev.platform}); "
        f"config {c}", flush=True)
  if dev.platform == "cpu" and not args.smoke:
    print("  (no accelerator: use --smoke on a CPU)", file=sys.stderr)
  j = run_jax(c)
  print(f"  JAX done after {time.perf_counter() - start:.0f} s (first step: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in j["first"].items()) + ")",
        flush=True)
  t = None if args.no_torch else run_torch(c, start + args.budget_s)
  if t:
    print(f"  PyTorch on {t['device']} done after "
          f"{time.perf_counter() - start:.0f} s", flush=True)
  matmul = _bf16_matmul(1024 if args.smoke else 8192)
  peak = _peak(dev.device_kind)
  jm, tm = j["median"], t["median"] if t else None
  ratio = lambda a, b: f"{b / a:.2f}x" if b else "n/a"  # PyTorch / JAX time.
  flops = j["update_flops"]
  mfu = (f"MFU {flops / jm['update'] / peak:.1%} of {sau._fmt(peak, 'FLOP/s')}"  # pylint: disable=protected-access
         if flops and peak else "MFU n/a (peak unknown)")
  tokens = 2 * c.prompts * c.new_tokens
  rows = [
      (f"update T5-{c.policy} bf16 (ms/step)", f"{1e3 * jm['update']:.0f}",
       f"{1e3 * tm['update']:.0f}" if tm else "n/a",
       ratio(jm["update"], tm and tm["update"]),
       f"{mfu}; {flops / jm['update'] / matmul:.1%} of measured bf16 matmul"
       if flops else ""),
      ("  update model FLOP/s (XLA count)",
       sau._fmt(flops / jm["update"], "FLOP/s") if flops else "n/a", "", "",  # pylint: disable=protected-access
       f"{sau._fmt(flops, 'FLOP')} per update" if flops else ""),  # pylint: disable=protected-access
      (f"sampling, beta={online_step.BETA} mixture (tokens/s)",
       f"{tokens / jm['sample']:.0f}",
       f"{tokens / tm['sample']:.0f}" if tm else "n/a",
       ratio(jm["sample"], tm and tm["sample"]),
       f"{c.prompts} x 2 x {c.new_tokens} tokens, 2 models per step"),
      (f"preference T5-{c.pm} (pairs/s, both orders)",
       f"{c.prompts / jm['preference']:.1f}",
       f"{c.prompts / tm['preference']:.1f}" if tm else "n/a",
       ratio(jm["preference"], tm and tm["preference"]),
       f"PM input {c.pm_input_length}"),
      ("online IPO-MD step (steps/s)", f"{1 / j['step_s']:.3f}",
       f"{1 / t['step_s']:.3f}" if t else "n/a",
       ratio(j["step_s"], t and t["step_s"]),
       "paper: ~0.25 on 16 TPU v5e; target >= 1 on one H100-class GPU"),
  ]
  print(f"\nbf16 matmul: {sau._fmt(matmul, 'FLOP/s')} measured; data-sheet "  # pylint: disable=protected-access
        f"peak {sau._fmt(peak, 'FLOP/s') if peak else 'unknown'}; "  # pylint: disable=protected-access
        f"wall {time.perf_counter() - start:.0f} s; final loss {j['loss']:.3g}"
        "\n")
  _table(rows)


if __name__ == "__main__":
  main()
