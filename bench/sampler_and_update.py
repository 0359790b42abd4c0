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

"""Sampler throughput and update time of ipo_md, beside Hugging Face PyTorch.

Not a test: it prints one table (see bench/README.md for the columns).

  python bench/sampler_and_update.py --quick     # tiny shape only (~1 min CPU)
  python bench/sampler_and_update.py             # tiny and T5-small shapes

For each shape it times, on the same inputs (PyTorch in a child process of
its own, see bench/README.md):
  * sampling two completions per prompt, full length (EOS is masked out in
    both frameworks, so every row decodes exactly `new_tokens` tokens):
    policy only (beta = 0) and the geometric mixture with beta = 0.125, which
    runs the policy and the reference at every step;
  * one update: teacher-forced log-probs of the two completions, the soft-
    label IPO loss, its gradient and one Adafactor step;
  * a large float32 matmul, to put the update's FLOP/s in proportion.
JAX picks its default device; PyTorch uses CUDA when it is available.
"""

import argparse
import dataclasses
import functools
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ipo_md import host_memory
from ipo_md import losses
from ipo_md import optim
from ipo_md import partitioning
from ipo_md import rollouts
from ipo_md.cli import runtime
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_loops  # pylint: disable=g-import-not-at-top,wrong-import-position

PAD, EOS = 0, 1
BETA = 0.125
TAU = 0.1
LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class Shape:
  name: str
  size: str
  vocab_size: int
  prompts: int
  input_length: int
  new_tokens: int
  repeats: int  # Timed calls after the first (compiling) one.


SHAPES = (
    Shape("tiny", "tiny", 64, 32, 64, 32, repeats=5),
    Shape("t5-small", "small", config_lib.T5_VOCAB_SIZE, 16, 256, 64,
          repeats=2),
)


def _timed(fn: Callable[[], Any], repeats: int, sync) -> tuple[float, float]:
  """(first call in s, median of `repeats` later calls in s)."""
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


# ----------------------------------------------------------------------------
# JAX / ipo_md
# ----------------------------------------------------------------------------


def _jax_sampler(model, shape: Shape, beta: float):
  """Two completions per prompt through ipo_md.rollouts, as the online
  objectives sample; EOS is masked (min_decode_length), so every row decodes
  `new_tokens` tokens."""
  t = shape.new_tokens
  cfg = sampling.SamplingConfig(max_decode_length=t, min_decode_length=t)

  def run(policy, ref, inputs, rng):
    return rollouts.sample_mixture(model, policy, model, ref, inputs, rng,
                                   cfg, beta=beta, repeats=2).tokens

  # Compiled as the Trainer compiles its steps, on the benchmark's mesh.
  return partitioning.sharded_jit(run, bench_mesh())


def _pair_loss(model, params, batch):
  """Mean soft-label IPO loss of the policy on the batch's pairs."""
  b = batch["inputs"].shape[0]
  both = jnp.concatenate([batch["y"], batch["yp"]], axis=0)
  policy = scoring.score_targets(model, params, batch["inputs"], both)
  loss_B, _ = losses.ipo_loss(policy.sequence[:b], policy.sequence[b:],
                              batch["ref_y"], batch["ref_yp"], batch["label"],
                              tau=TAU)
  return jnp.mean(loss_B)


CPU_DEVICES = [1]  # --cpu_devices, for the memory children.


def bench_mesh():
  """The data-parallel mesh of all JAX devices: (1, 1) on one device; on a
  CPU split into N devices (`--cpu_devices N`), (N, 1)."""
  return partitioning.make_mesh(devices=jax.devices())


def _on_mesh(tree, batch_rows: bool):
  """`tree` on bench_mesh(): split by rows (batch), or replicated."""
  mesh = bench_mesh()
  sharding = (partitioning.batch_sharding(mesh) if batch_rows
              else partitioning.replicated(mesh))
  return jax.device_put(tree, sharding)


def _jax_update(model, params, tx):
  """(description, step(state, batch) -> state, initial state).

  Uses the lead's `ipo_md.trainer.step.train_step` with the update half of
  `OnlinePairwise` (its `loss`; sampling is timed separately) when those
  modules are importable with the expected API; otherwise the equivalent
  jitted value_and_grad + adafactor_t5 written here.
  """
  try:
    from ipo_md.trainer import models as models_lib  # pylint: disable=g-import-not-at-top
    from ipo_md.trainer import objectives  # pylint: disable=g-import-not-at-top
    from ipo_md.trainer import step as step_lib  # pylint: disable=g-import-not-at-top
    from ipo_md.trainer import train_state  # pylint: disable=g-import-not-at-top

    # The signal is never called: the pairs and their labels are given.
    online = objectives.OnlinePairwise(
        models=models_lib.Models(policy=model, reference=model),
        loss_fn=functools.partial(losses.ipo_loss, tau=TAU),
        preference=lambda params, x, y, yp: None,
        sampling=sampling.SamplingConfig(max_decode_length=8))

    class _UpdateOnly:
      """Pairs are given in the batch: prepare only adds `pref` (the label)."""

      def prepare(self, params, frozen, batch, rng):
        del params, frozen, rng
        return {**batch, "pref": batch["label"]}, {}

      def loss(self, params, frozen, prepared, rng):
        return online.loss(params, frozen, prepared, rng)

    schedule = optim.make_schedule(base_learning_rate=LEARNING_RATE)
    # Compiled as the Trainer compiles its step (partitioning.sharded_jit),
    # on the benchmark's mesh (one device unless --cpu_devices).
    step = partitioning.sharded_jit(
        lambda state, batch: step_lib.train_step(
            state, batch, None, objective=_UpdateOnly(), tx=tx,
            schedule=schedule)[0],
        bench_mesh(), donate_argnums=0)
    # One buffer per leaf: create() may share one constant between fields
    # (the guard's counters), and a donated state must not.
    state = _on_mesh(jax.tree.map(jnp.copy,
                                  train_state.create(params, tx, seed=0)),
                     batch_rows=False)
    return ("trainer.step.train_step (OnlinePairwise.loss, the guard "
            "included)", step, state)
  except (ImportError, AttributeError, TypeError) as e:
    reason = f"{type(e).__name__}: {e}"

  def step(state, batch):
    params, opt_state = state
    grads = jax.grad(functools.partial(_pair_loss, model))(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state

  return (f"value_and_grad + adafactor_t5 (no trainer.step: {reason})",
          jax.jit(step, donate_argnums=0), (params, tx.init(params)))


def _xla_flops(jitted, *args) -> float | None:
  """FLOPs of the update's HLO as XLA's cost analysis counts them.

  Counted on the lowered, not yet optimised module, analysed for the CPU
  platform whatever the device: the compiled module's count is backend-
  specific (on GPU, matmuls become cuBLAS custom calls that it undercounts,
  about 3x for the T5-small update). Falls back to the default lowering,
  then to the compiled module, and says so on stderr.
  """
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          args)
  attempts = (
      ("lowered for cpu", lambda: jitted.trace(*abstract).lower(
          lowering_platforms=("cpu",)).cost_analysis()),
      ("lowered", lambda: jitted.lower(*args).cost_analysis()),
      ("compiled (may undercount on GPU)",
       lambda: jitted.lower(*args).compile().cost_analysis()),
  )
  for how, count in attempts:
    try:
      cost = count()
      if isinstance(cost, (list, tuple)):
        cost = cost[0]
      flops = float(cost["flops"])
      if flops > 0:
        if how != attempts[0][0]:
          print(f"  (update FLOPs from the {how} module)", file=sys.stderr)
        return flops
    except Exception as e:  # pylint: disable=broad-except
      print(f"  (FLOP count, {how}: {type(e).__name__}: {e})",
            file=sys.stderr)
  return None


def _matmul_flops_per_s(n: int) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(lambda x, y: x @ y)
  _, t = _timed(lambda: mm(a, b), 5, jax.block_until_ready)
  return 2 * n ** 3 / t


def _pairs(rng: np.random.Generator, shape: Shape) -> dict[str, np.ndarray]:
  b, t = shape.prompts, shape.new_tokens
  tokens = lambda *s: rng.integers(2, shape.vocab_size, s).astype(np.int32)
  return dict(
      inputs=tokens(b, shape.input_length), y=tokens(b, t), yp=tokens(b, t),
      label=rng.uniform(0, 1, b).astype(np.float32),
      ref_y=-rng.uniform(50, 60, b).astype(np.float32),
      ref_yp=-rng.uniform(50, 60, b).astype(np.float32))


def bench_jax(shape: Shape, data, bf16: bool) -> dict[str, Any]:
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size)
  model = network.Transformer(cfg)
  init = jax.jit(lambda r: scoring.init_params(model, r))
  policy, ref = init(jax.random.key(0)), init(jax.random.key(1))
  policy, ref = _on_mesh((policy, ref), batch_rows=False)
  inputs = _on_mesh(jnp.asarray(data["inputs"]), batch_rows=True)
  out = {}
  for beta in (0.0, BETA):
    run = _jax_sampler(model, shape, beta)
    outputs = []

    def sample_once(run=run, outputs=outputs):
      outputs.append(run(policy, ref, inputs, jax.random.key(len(outputs))))
      return outputs[-1]

    out[f"sample_{beta}"] = _timed(sample_once, shape.repeats,
                                   jax.block_until_ready)
    if np.any(np.asarray(outputs[0]) <= EOS):
      raise AssertionError("the sampler did not decode to full length")
  tx = optim.adafactor_t5(LEARNING_RATE)
  how, step, state = _jax_update(model, policy, tx)
  batch = _on_mesh({k: jnp.asarray(v) for k, v in data.items()},
                   batch_rows=True)
  holder = [state]

  def one_update():
    holder[0] = step(holder[0], batch)  # The old state is donated.
    return holder[0]

  out["update"] = _timed(one_update, shape.repeats, jax.block_until_ready)
  out["update_flops"] = _xla_flops(step, holder[0], batch)  # After timing.
  out["update_how"] = how
  del holder[0]
  if bf16:
    # bfloat16 activations, float32 parameters and optimizer state.
    model16 = network.Transformer(cfg.replace(dtype="bfloat16"))
    _, step16, state16 = _jax_update(model16, ref, tx)
    holder16 = [state16]

    def one_update16():
      holder16[0] = step16(holder16[0], batch)
      return holder16[0]

    out["update_bf16"] = _timed(one_update16, shape.repeats,
                                jax.block_until_ready)
  return out


# ----------------------------------------------------------------------------
# PyTorch / Hugging Face
# ----------------------------------------------------------------------------


def bench_torch(shape: Shape, data, bf16: bool) -> dict[str, Any] | None:
  mods = hf_loops.import_torch()
  if mods is None:
    return None
  torch, transformers = mods
  dev = hf_loops.device(torch)
  sync = lambda x: hf_loops.sync(torch, dev)
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size)
  policy = hf_loops.new_model(torch, transformers, cfg, dev, seed=0)
  ref = hf_loops.new_model(torch, transformers, cfg, dev, seed=1)
  d = hf_loops.as_tensors(torch, dev, data)
  inputs = d["inputs"]
  mask = inputs != PAD
  t = shape.new_tokens
  out = {"device": hf_loops.describe(torch, dev)}

  @torch.inference_mode()
  def generate():
    # min_new_tokens = max_new_tokens masks EOS, as min_decode_length does
    # for JAX; pad is suppressed, as ipo_md's sampler never samples it.
    return policy.generate(
        input_ids=inputs, attention_mask=mask, do_sample=True, top_k=0,
        top_p=1.0, temperature=1.0, max_new_tokens=t, min_new_tokens=t,
        suppress_tokens=[PAD], num_return_sequences=2)

  def hand_loop(beta):
    models = (policy,) if beta == 0.0 else (policy, ref)
    return hf_loops.mixture_loop(torch, models, inputs, mask, t, beta)[0]

  warnings.filterwarnings("ignore", message=".*past_key_values.*")
  for name, fn in (("sample_0.0", generate),
                   ("sample_0.0_loop", lambda: hand_loop(0.0)),
                   (f"sample_{BETA}", lambda: hand_loop(BETA))):
    tokens = fn()
    new = tokens[:, -t:]
    if new.shape != (2 * shape.prompts, t) or bool((new <= EOS).any()):
      raise AssertionError(f"torch {name} did not decode to full length: "
                           f"{tuple(tokens.shape)}, {new[:2]}")
    out[name] = _timed(fn, shape.repeats, sync)

  update = hf_loops.make_update(torch, policy, lr=LEARNING_RATE, tau=TAU)
  args = (inputs, mask, d["y"], d["yp"], d["ref_y"], d["ref_yp"], d["label"])
  out["update"] = _timed(lambda: update(*args), shape.repeats, sync)
  if bf16:
    update16 = hf_loops.make_update(torch, ref, lr=LEARNING_RATE, tau=TAU,
                                    autocast=torch.bfloat16)
    out["update_bf16"] = _timed(lambda: update16(*args), shape.repeats, sync)
  return out


# ----------------------------------------------------------------------------
# Peak host memory of one update, each framework in its own process
# ----------------------------------------------------------------------------


# JAX model configurations whose peak memory is measured beside PyTorch's
# float32 update: name -> T5Config overrides.
MEMORY_VARIANTS = {
    "float32": {},
    "bf16": {"dtype": "bfloat16"},
    "bf16_remat": {"dtype": "bfloat16", "remat": "full"},
}


def _update_child(framework: str, shape_name: str,
                  variant: str = "float32") -> None:
  """Child process: two updates of `shape_name`, then prints ru_maxrss."""
  shape = {s.name: s for s in SHAPES}[shape_name]
  data = _pairs(np.random.default_rng(0), shape)
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size)
  if framework == "jax":
    cfg = cfg.replace(**MEMORY_VARIANTS[variant])
    model = network.Transformer(cfg)
    params = jax.jit(lambda r: scoring.init_params(model, r))(
        jax.random.key(0))
    _, step, state = _jax_update(model, params,
                                 optim.adafactor_t5(LEARNING_RATE))
    batch = _on_mesh({k: jnp.asarray(v) for k, v in data.items()},
                     batch_rows=True)
    del params
    # As the Trainer does before a stage's first step (the freed buffers
    # are kept since main's configure_cpu_runtime): compile, then give the
    # memory the compiler (and the initialisation) freed back to the OS.
    host_memory.precompile(step, state, batch)
    for _ in range(2):
      state = step(state, batch)
    jax.block_until_ready(state)
  else:
    torch, transformers = hf_loops.import_torch()
    dev = hf_loops.device(torch)
    policy = hf_loops.new_model(torch, transformers, cfg, dev, seed=0)
    d = hf_loops.as_tensors(torch, dev, data)
    # "bf16": under torch.autocast, as the timed bf16 update.
    autocast = torch.bfloat16 if variant.startswith("bf16") else None
    update = hf_loops.make_update(torch, policy, lr=LEARNING_RATE, tau=TAU,
                                  autocast=autocast)
    for _ in range(2):
      update(d["inputs"], d["inputs"] != PAD, d["y"], d["yp"], d["ref_y"],
             d["ref_yp"], d["label"])
  print(f"PEAK_RSS_BYTES {_peak_rss_bytes()}")


def _peak_rss_bytes() -> int:
  """This process's RSS high-water mark.

  /proc's VmHWM belongs to the process's own address space; getrusage's
  ru_maxrss survives exec, so a child of a big parent would report at
  least the parent's size.
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_update_memory(shape: Shape, frameworks,
                       variant: str = "float32") -> dict[str, float | None]:
  """Peak RSS (bytes) of a process that runs two updates, per framework
  (the JAX model in MEMORY_VARIANTS[variant]; PyTorch in float32, or under
  torch.autocast in bfloat16 for the "bf16" variants)."""
  out = {}
  for framework in frameworks:
    proc = subprocess.run(
        [sys.executable, __file__, "--_update-child", framework,
         "--_shape", shape.name, "--_variant", variant,
         "--cpu_devices", str(CPU_DEVICES[0])],
        capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines()
             if l.startswith("PEAK_RSS_BYTES")]
    if proc.returncode or not lines:
      print(f"  ({framework} memory child failed: {proc.stderr[-500:]})",
            file=sys.stderr)
      out[framework] = None
    else:
      out[framework] = float(lines[-1].split()[1])
  return out


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def _fmt(x, unit=""):
  if x is None:
    return "n/a"
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.2f} {prefix}{unit}"
  return f"{x:.3g} {unit}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shape only (a minute on a laptop CPU)")
  parser.add_argument("--no-torch", action="store_true",
                      help="skip the PyTorch columns")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls after the first (default: 5 for tiny, "
                      "2 for t5-small)")
  parser.add_argument("--matmul-size", type=int, default=None,
                      help="n of the n x n x n float32 matmul (default: "
                      "2048 on CPU, 8192 on an accelerator)")
  parser.add_argument("--no-bf16", action="store_true",
                      help="skip the bfloat16-activation update rows")
  parser.add_argument("--no-memory", action="store_true",
                      help="skip the peak-memory rows (each framework runs "
                      "two updates in a child process)")
  parser.add_argument("--cpu_devices", type=int, default=1,
                      help="split the CPU into this many JAX devices and run "
                      "ipo_md's sampler and update data-parallel over them "
                      "(jax_num_cpu_devices; PyTorch keeps its threads)")
  parser.add_argument("--_torch-child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_update-child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_shape", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_variant", default="float32", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.cpu_devices < 1:
    parser.error(f"--cpu_devices={args.cpu_devices} must be >= 1.")
  CPU_DEVICES[0] = args.cpu_devices
  if args.cpu_devices > 1:  # Before JAX creates its CPU client.
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  if args._torch_child:  # pylint: disable=protected-access
    # PyTorch's timings, in a process of its own (hf_loops.in_child).
    shape = {s.name: s for s in SHAPES}[args._torch_child]  # pylint: disable=protected-access
    if args.repeats:
      shape = dataclasses.replace(shape, repeats=args.repeats)
    hf_loops.print_result(bench_torch(
        shape, _pairs(np.random.default_rng(0), shape), not args.no_bf16))
    return
  if args._update_child:  # pylint: disable=protected-access
    if args._update_child == "jax":  # pylint: disable=protected-access
      runtime.configure_cpu_runtime()  # PyTorch's child keeps the defaults.
    _update_child(args._update_child, args._shape, args._variant)  # pylint: disable=protected-access
    return
  runtime.configure_cpu_runtime()  # As `ipo-md train` runs steps.

  backend = jax.default_backend()
  n = args.matmul_size or (2048 if backend == "cpu" else 8192)
  peak = _matmul_flops_per_s(n)
  devices = len(jax.devices())
  print(f"JAX {jax.__version__} on {devices} x {jax.devices()[0].device_kind} "
        f"({backend}{'; ipo_md data-parallel over them' * (devices > 1)}); "
        f"float32 {n}^3 matmul: {_fmt(peak, 'FLOP/s')}", flush=True)
  shapes = SHAPES[:1] if args.quick else SHAPES
  if args.repeats:
    shapes = [dataclasses.replace(s, repeats=args.repeats) for s in shapes]
  rows = []
  for shape in shapes:
    data = _pairs(np.random.default_rng(0), shape)
    print(f"\n[{shape.name}] t5_1_1({shape.size!r}, vocab_size="
          f"{shape.vocab_size}), {shape.prompts} prompts x 2 completions, "
          f"input {shape.input_length}, {shape.new_tokens} new tokens",
          flush=True)
    j = bench_jax(shape, data, not args.no_bf16)
    print(f"  JAX update: {j['update_how']}", flush=True)
    tc = None if args.no_torch else hf_loops.in_child(
        __file__, ["--_torch-child", shape.name, "--repeats",
                   str(shape.repeats)] + (["--no-bf16"] if args.no_bf16
                                          else []))
    if tc:
      print(f"  PyTorch on {tc['device']}", flush=True)
    tokens = 2 * shape.prompts * shape.new_tokens
    for key, tkey, label in (
        ("sample_0.0", "sample_0.0", "sample beta=0, HF generate (tokens/s)"),
        ("sample_0.0", "sample_0.0_loop",
         "sample beta=0, torch loop (tokens/s)"),
        (f"sample_{BETA}", f"sample_{BETA}",
         f"sample beta={BETA}, torch loop (tokens/s)")):
      jt = tokens / j[key][1]
      tt = tokens / tc[tkey][1] if tc else None
      rows.append((shape.name, label, _fmt(jt), _fmt(tt),
                   f"{jt / tt:.2f}x" if tt else "n/a",
                   f"{j[key][0]:.1f} s"))
    ju = j["update"][1]
    tu = tc["update"][1] if tc else None
    rows.append((shape.name, "update (ms/step)", f"{1e3 * ju:.1f}",
                 f"{1e3 * tu:.1f}" if tu else "n/a",
                 f"{tu / ju:.2f}x" if tu else "n/a",
                 f"{j['update'][0]:.1f} s"))
    if "update_bf16" in j:
      ju16 = j["update_bf16"][1]
      tu16 = tc["update_bf16"][1] if tc else None
      rows.append((shape.name, "update bf16 activations (ms/step)",
                   f"{1e3 * ju16:.1f}", f"{1e3 * tu16:.1f}" if tu16 else "n/a",
                   f"{tu16 / ju16:.2f}x" if tu16 else "n/a",
                   f"{j['update_bf16'][0]:.1f} s"))
    flops = j["update_flops"]
    if flops:
      # (The fraction is filled in at the end; index 5 holds FLOP/s.)
      rows.append((shape.name, "update FLOP/s (XLA count)",
                   _fmt(flops / ju), "", None, flops / ju,
                   _fmt(flops, "FLOP")))
    if not args.no_memory:
      mem = peak_update_memory(
          shape, ("jax",) if args.no_torch or not tc else ("jax", "torch"))
      jm, tm = mem.get("jax"), mem.get("torch")
      gb = lambda x: f"{x / 2 ** 30:.2f}" if x else "n/a"
      rows.append((shape.name, "update peak RSS (GiB, own process)", gb(jm),
                   gb(tm), f"{jm / tm:.2f} of torch" if jm and tm else "n/a",
                   ""))
      if not args.no_bf16:
        tm16 = None
        if tm:  # PyTorch's bf16 update (torch.autocast), for comparison.
          tm16 = peak_update_memory(shape, ("torch",), "bf16").get("torch")
        for variant, label in (("bf16", "bf16"),
                               ("bf16_remat", "bf16, remat=full")):
          vm = peak_update_memory(shape, ("jax",), variant).get("jax")
          rows.append((shape.name, f"  JAX {label} (GiB; torch: float32)",
                       gb(vm), gb(tm),
                       f"{vm / tm:.2f} of torch" if vm and tm else "n/a", ""))
          rows.append((shape.name, f"  JAX {label} (GiB; torch: autocast "
                       "bf16)", gb(vm), gb(tm16),
                       f"{vm / tm16:.2f} of torch" if vm and tm16 else "n/a",
                       ""))

  # Measured again at the end; the best of the two is the denominator, so a
  # busy machine at either moment does not inflate the fraction.
  peak_end = _matmul_flops_per_s(n)
  best = max(peak, peak_end)
  rows = [r[:4] + (f"{r[5] / best:.1%} of matmul", r[6]) if len(r) == 7
          else r for r in rows]
  print(f"\nfloat32 {n}^3 matmul: {_fmt(peak, 'FLOP/s')} at the start, "
        f"{_fmt(peak_end, 'FLOP/s')} at the end; fractions use "
        f"{_fmt(best, 'FLOP/s')}.")
  header = ("shape", "metric", "ipo_md (JAX)", "HF PyTorch",
            "JAX speed-up", "JAX 1st call")
  widths = [max(len(str(r[i])) for r in rows + [header]) for i in
            range(len(header))]
  line = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))
  print("\n" + line(header))
  print("-+-".join("-" * w for w in widths))
  for r in rows:
    print(line(r))
  print("\nSampling decodes every row to full length (EOS masked in both). "
        "Times are medians of repeated calls after the first; the first "
        "JAX call includes compilation.")


if __name__ == "__main__":
  main()
