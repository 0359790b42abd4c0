# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""Preference-model scoring throughput (pairs/s), beside Hugging Face PyTorch.

A pairwise preference model reads the prompt and both responses and is read
out at one decoder step (`ipo_md.preference.learned`, "encoder" layout, the
text-to-text form). This times scoring B pairs (a prompt of 256 tokens, two
responses of up to 126, packed into 512, the packing included) with a
random T5 of T5-small dimensions (8+8 layers, d_model 512) in JAX (jit,
float32) and the same forward in transformers' T5ForConditionalGeneration
(encoder over the packed ids, one decoder step), and prints pairs/s. The
symmetrised p (both orders, what training uses) costs two such passes.

    PYTHONPATH=. python bench/pm_scoring.py [--quick] [--batch 16]

PyTorch runs in a child process of its own (`hf_loops.in_child`), ipo-md
with the CPU runtime of `ipo-md train`. Not a test: run it alone on a quiet
machine.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

# Run as a script (and as its own PyTorch child): the repository root must be
# importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import hf_loops  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.cli import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import learned  # pylint: disable=g-bad-import-order


def _time(fn, repeats: int) -> float:
  fn()  # Compile / warm up.
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def _inputs(rng, batch, length, vocab):
  """Packed ids: random tokens, then EOS, then a ragged tail of padding."""
  ids = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
  ends = rng.integers(length * 3 // 4, length, size=batch)
  for i, e in enumerate(ends):
    ids[i, e] = 1
    ids[i, e + 1:] = 0
  return ids


def _config(quick: bool) -> config_lib.T5Config:
  return (config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4,
                              head_dim=8, mlp_dim=64, num_encoder_layers=1,
                              num_decoder_layers=1) if quick else
          config_lib.t5_1_1("small"))


_READOUT = (5, 6)


def _torch_child(ids_path: str, quick: bool, repeats: int) -> None:
  """PyTorch's timing, in a process of its own (hf_loops.in_child)."""
  torch_pair = hf_loops.import_torch()
  if torch_pair is None:
    return
  torch, transformers = torch_pair
  cfg = _config(quick)
  ids = np.load(ids_path)
  batch = ids.shape[0]
  dev = hf_loops.device(torch)
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim,
      d_ff=cfg.mlp_dim, num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
      feed_forward_proj="gated-gelu", dropout_rate=0.0,
      tie_word_embeddings=False, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_cfg).to(dev).eval()
  tids = torch.tensor(ids, dtype=torch.long, device=dev)
  start_ids = torch.zeros((batch, 1), dtype=torch.long, device=dev)

  def hf():
    with torch.inference_mode():
      logits = model(input_ids=tids, attention_mask=(tids != 0).long(),
                     decoder_input_ids=start_ids).logits
      score = logits[:, 0, _READOUT[0]] - logits[:, 0, _READOUT[1]]
    hf_loops.sync(torch, dev)
    return score

  hf_loops.print_result({"seconds": _time(hf, repeats),
                         "device": hf_loops.describe(torch, dev)})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes, to check the script runs")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--_torch-child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._torch_child:  # pylint: disable=protected-access
    _torch_child(args._torch_child, args.quick, args.repeats)  # pylint: disable=protected-access
    return
  runtime.configure_cpu_runtime()  # As `ipo-md train` runs steps.
  length = 64 if args.quick else 512
  cfg = _config(args.quick)
  net = network.Transformer(cfg)
  params = scoring.init_params(net, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  # A prompt of half the length and two responses of a quarter each.
  x = _inputs(rng, args.batch, length // 2, cfg.vocab_size)
  y = _inputs(rng, args.batch, length // 4 - 2, cfg.vocab_size)
  yp = _inputs(rng, args.batch, length // 4 - 2, cfg.vocab_size)
  pm = learned.PreferenceModel(network=net, head=learned.PairwiseHead(
      input_length=length, readout=_READOUT,
      template=learned.Template(first=(3,), second=(4,))))
  logit_fn = jax.jit(pm.logit)
  x, y, yp = jnp.asarray(x), jnp.asarray(y), jnp.asarray(yp)
  seconds = _time(lambda: logit_fn(params, x, y, yp).block_until_ready(),
                  args.repeats)
  ids = np.asarray(pm.pack(x, y, yp))
  print(f"shape: {args.batch} pairs x {length} tokens, T5 "
        f"{'tiny' if args.quick else 'small'} dims, float32; "
        f"{jax.devices()[0].platform}")
  print(f"ipo-md (JAX)      {args.batch / seconds:10.1f} pairs/s "
        f"({seconds * 1e3:.1f} ms per batch)")
  # PyTorch in a process of its own, on the same packed ids.
  with tempfile.TemporaryDirectory() as tmp:
    ids_path = os.path.join(tmp, "ids.npy")
    np.save(ids_path, ids)
    result = hf_loops.in_child(
        os.path.abspath(__file__),
        ["--_torch-child", ids_path, "--repeats", str(args.repeats)]
        + (["--quick"] if args.quick else []))
  if result is None:
    return
  hf_seconds = result["seconds"]
  print(f"HF PyTorch        {args.batch / hf_seconds:10.1f} pairs/s "
        f"({hf_seconds * 1e3:.1f} ms per batch; {result['device']})")
  print(f"speed-up          {hf_seconds / seconds:10.2f}x")


if __name__ == "__main__":
  main()
