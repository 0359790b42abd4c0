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

"""What the matrix products of bench/sampler_and_update.py's programs need.

Not a test, and not a timing of ipo_md: for the update and the samplers that
`sampler_and_update.py` times, it lists every matrix product the traced program
contains (each `dot_general` of its jaxpr, with its shapes, dtypes and
dimension numbers, counted as often as it runs: a while loop's body once per
decoded token) and times each one alone on this machine's default JAX
device, then prints per program

  * GFLOP: the products' FLOPs;
  * at peak: the time those FLOPs take at the square-matmul rate measured in
    the same run (2048^3, float32; bfloat16 operands with float32
    accumulation for the bfloat16 programs): a floor no program with these
    products can beat on this machine;
  * dots alone: the sum over products of their time alone (median of
    repeated calls inside one compiled loop, less the loop's own cost),
    which is what XLA's own dot kernels need at these shapes, before
    anything else the program does (norms, softmax, sampling, the optimizer).

  * PyTorch alone: the same sum with PyTorch's kernels (each product as a
    `torch.einsum` of the same shapes and dtype, timed alone in a child
    process, as the other benchmarks time PyTorch; bf16 products return
    bf16 there). Left out without torch, or with --no_torch.

Both "alone" columns repeat one product on the same operands, so weights that
fit in the caches stay there, unlike in a decoding step that reads a new
layer's weights for each product.

Compare these with the benchmark's times from a run on the same machine:
a target faster than "dots alone" needs faster dot kernels than the
installed XLA has for these shapes, and one faster than "at peak" cannot be
met by any implementation of these products on this machine. XLA may
rewrite a product (merge, fuse or split it), so "dots alone" estimates what
it will run rather than bounding it.

  PYTHONPATH=. python bench/dot_floor.py --quick   # tiny shape (~1 min CPU)
  PYTHONPATH=. python bench/dot_floor.py           # + T5-small (~3 min CPU)

Run it with nothing else on the machine, as for any benchmark.
"""

import argparse
import collections
import json
import os
import statistics
import sys
import time

import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_loops  # pylint: disable=g-import-not-at-top,wrong-import-position
import sampler_and_update as su  # pylint: disable=g-import-not-at-top,wrong-import-position

from ipo_md import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import network  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import scoring  # pylint: disable=g-import-not-at-top,wrong-import-position

DTYPES = ("float32", "bfloat16")
PEAK_N = 2048


def count_dots(jaxpr, while_trips: int) -> collections.Counter:
  """{(lhs shape, lhs dtype, rhs shape, rhs dtype, dimension numbers,
  preferred element type): times run} over `jaxpr` and its sub-jaxprs; the
  body of a while loop runs `while_trips` times, a scan's body its length."""
  counts = collections.Counter()

  def visit(jxp, mult):
    for eqn in jxp.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        a, b = eqn.invars
        pet = eqn.params.get("preferred_element_type")
        counts[(tuple(a.aval.shape), str(a.aval.dtype), tuple(b.aval.shape),
                str(b.aval.dtype), eqn.params["dimension_numbers"],
                None if pet is None else str(pet))] += mult
        continue
      inner = mult
      if name == "while":
        inner = mult * while_trips
      elif name == "scan":
        inner = mult * eqn.params["length"]
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if isinstance(sub, jex_core.ClosedJaxpr):
            visit(sub.jaxpr, inner)
          elif isinstance(sub, jex_core.Jaxpr):
            visit(sub, inner)

  visit(jaxpr, 1)
  return counts


def dot_flops(key) -> float:
  a_shape, _, b_shape, _, ((a_c, b_c), (a_b, b_b)), _ = key
  size = lambda shape, axes: float(np.prod([shape[i] for i in axes]))
  k, batch = size(a_shape, a_c), size(a_shape, a_b)
  m = size(a_shape, [i for i in range(len(a_shape)) if i not in a_c + a_b])
  n = size(b_shape, [i for i in range(len(b_shape)) if i not in b_c + b_b])
  return 2.0 * k * batch * m * n


def _loop_seconds(key, with_dot: bool, inner: int, repeats: int) -> float:
  """Median seconds per iteration of a compiled loop that runs the product
  `key` (or, without it, only the loop's own bookkeeping)."""
  a_shape, a_dtype, b_shape, b_dtype, dims, pet = key
  a = jnp.ones(a_shape, a_dtype) * 0.5
  b = jnp.ones(b_shape, b_dtype) * 0.5
  corner = (0,) * len(a_shape)

  def body(_, x):
    if with_dot:
      out = jax.lax.dot_general(x, b, dims, preferred_element_type=pet)
      nudge = out.reshape(-1)[0] * 1e-30  # A dependency XLA cannot hoist.
    else:
      nudge = x.reshape(-1)[1 % x.size] * 1e-30
    return x.at[corner].add(nudge.astype(x.dtype))

  run = jax.jit(lambda x: jax.lax.fori_loop(0, inner, body, x))
  run(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run(a).block_until_ready()
    times.append((time.perf_counter() - t0) / inner)
  return statistics.median(times)


def dot_seconds(key, repeats: int = 5) -> float:
  """One product's time alone: its loop less the empty loop."""
  inner = int(np.clip(5e9 / max(dot_flops(key), 1.0), 3, 40))
  return max(_loop_seconds(key, True, inner, repeats)
             - _loop_seconds(key, False, inner, repeats), 0.0)


def matmul_rate(dtype: str) -> float:
  """FLOP/s of a PEAK_N^3 matmul, operands in `dtype`, accumulated (and
  returned) in float32 as the model's dots are."""
  key = ((PEAK_N, PEAK_N), dtype, (PEAK_N, PEAK_N), dtype,
         (((1,), (0,)), ((), ())), "float32")
  return dot_flops(key) / dot_seconds(key)


def floor(counts: collections.Counter, rate: float) -> dict[str, float]:
  flops = sum(c * dot_flops(k) for k, c in counts.items())
  alone = sum(c * dot_seconds(k) for k, c in counts.items())
  return {"dots": sum(counts.values()), "shapes": len(counts),
          "gflop": flops / 1e9, "peak_s": flops / rate, "alone_s": alone}


def einsum_spec(key) -> str:
  """The `torch.einsum` subscripts of a dot_general `key` (output: batch,
  then the lhs's free axes, then the rhs's, as dot_general orders them)."""
  a_shape, _, b_shape, _, ((a_c, b_c), (a_b, b_b)), _ = key
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  a = [next(letters) for _ in a_shape]
  b = [next(letters) for _ in b_shape]
  for i, j in zip(tuple(a_c) + tuple(a_b), tuple(b_c) + tuple(b_b)):
    b[j] = a[i]
  out = ([a[i] for i in a_b]
         + [a[i] for i in range(len(a)) if i not in tuple(a_c) + tuple(a_b)]
         + [b[j] for j in range(len(b)) if j not in tuple(b_c) + tuple(b_b)])
  return f"{''.join(a)},{''.join(b)}->{''.join(out)}"


def torch_seconds(keys: list, repeats: int = 5) -> list[float] | None:
  """Each product's time alone in PyTorch (a child process), or None."""
  specs = [[list(k[0]), k[1], list(k[2]), k[3], einsum_spec(k),
            dot_flops(k)] for k in keys]
  out = hf_loops.in_child(os.path.abspath(__file__),
                          ["--torch_child", json.dumps(specs),
                           "--repeats", str(repeats)])
  return None if out is None else out["seconds"]


def _torch_child(specs: list, repeats: int) -> None:
  mods = hf_loops.import_torch()
  if mods is None:
    hf_loops.print_result(None)
    return
  torch = mods[0]
  seconds = []
  for a_shape, a_dtype, b_shape, b_dtype, spec, flops in specs:
    a = torch.full(a_shape, 0.5, dtype=getattr(torch, a_dtype))
    b = torch.full(b_shape, 0.5, dtype=getattr(torch, b_dtype))
    inner = int(np.clip(5e9 / max(flops, 1.0), 3, 40))
    torch.einsum(spec, a, b)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(inner):
        torch.einsum(spec, a, b)
      times.append((time.perf_counter() - t0) / inner)
    seconds.append(statistics.median(times))
  hf_loops.print_result({"seconds": seconds})


def programs(shape: su.Shape, dtype: str):
  """(name, counts) of the update and both samplers at `shape`, `dtype`."""
  cfg = config_lib.t5_1_1(shape.size, vocab_size=shape.vocab_size,
                          dtype=dtype)
  model = network.Transformer(cfg)
  params = jax.eval_shape(lambda r: scoring.init_params(model, r),
                          jax.random.key(0))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  pairs = su._pairs(np.random.default_rng(0), shape)  # pylint: disable=protected-access
  data = {k: jnp.asarray(v) for k, v in pairs.items()}
  _, step, state = su._jax_update(  # pylint: disable=protected-access
      model, params, optim.adafactor_t5(su.LEARNING_RATE))
  yield "update", count_dots(step.trace(state, data).jaxpr.jaxpr, 1)
  for beta in (0.0, su.BETA):
    run = su._jax_sampler(  # pylint: disable=protected-access
        model, shape, beta)
    jaxpr = run.trace(params, params, data["inputs"],
                      jax.random.key(0)).jaxpr.jaxpr
    yield f"sampling beta={beta:g}", count_dots(jaxpr, shape.new_tokens)


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:,.1f}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shape only")
  parser.add_argument("--no_torch", action="store_true",
                      help="leave out the PyTorch column")
  parser.add_argument("--torch_child", help=argparse.SUPPRESS)
  parser.add_argument("--repeats", type=int, default=5,
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.torch_child:
    _torch_child(json.loads(args.torch_child), args.repeats)
    return
  shapes = su.SHAPES[:1] if args.quick else su.SHAPES
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs")
  rates = {d: matmul_rate(d) for d in DTYPES}
  print("square matmul (2048^3, float32 accumulation): " + ", ".join(
      f"{d} {r / 1e9:,.0f} GFLOP/s" for d, r in rates.items()))
  print("\n| shape | program | dtype | dots | GFLOP | at peak (ms) "
        "| dots alone (ms) | dots alone (GFLOP/s) | PyTorch alone (ms) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for shape in shapes:
    for dtype in DTYPES:
      for name, counts in programs(shape, dtype):
        f = floor(counts, rates[dtype])
        in_torch = "-"
        if not args.no_torch:
          keys = list(counts)
          seconds = torch_seconds(keys)
          if seconds is not None:
            in_torch = _ms(sum(counts[k] * t for k, t in zip(keys, seconds)))
        print(f"| {shape.name} | {name} | {dtype} | {f['dots']:,} "
              f"| {f['gflop']:,.2f} | {_ms(f['peak_s'])} "
              f"| {_ms(f['alone_s'])} "
              f"| {f['gflop'] / max(f['alone_s'], 1e-12):,.0f} "
              f"| {in_torch} |", flush=True)
  print("\nsampling: one call, every prompt's two completions decoded to "
        "full length, as sampler_and_update.py times it.")


if __name__ == "__main__":
  main()
