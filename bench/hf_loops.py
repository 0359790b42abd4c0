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

"""The Hugging Face PyTorch side of the benchmarks, shared by the scripts.

Plain transformers `T5ForConditionalGeneration` code written the way a user
would write an online IPO / IPO-MD loop with it: the models' own KV caches,
`log_softmax` mixing of two models (generate has no two-model mode), a
preference model read out at its first decoder step, `loss.backward()` and
`transformers.optimization.Adafactor` with T5X's settings. Not a test.
"""

import json
import subprocess
import sys
from typing import Any

import numpy as np

PAD, EOS = 0, 1


RESULT_PREFIX = "TORCH_RESULT "


def in_child(script: str, args: list[str]) -> dict[str, Any] | None:
  """Runs `python script *args` in a fresh process and returns the dict it
  printed with `print_result`, or None (with the child's error) if it
  printed none.

  The PyTorch side of a benchmark runs in a process of its own: timed in
  the process that had just run the JAX side, PyTorch's T5-small bf16
  update took 3.7-5.1 s against 3.1-3.7 s in a fresh process (2-core dev
  VM, alternating runs), so sharing a process would flatter ipo_md. The
  child gets the parent's environment and no setting of ipo_md's.
  """
  proc = subprocess.run([sys.executable, script, *args], capture_output=True,
                        text=True, check=False)
  lines = [l for l in proc.stdout.splitlines()
           if l.startswith(RESULT_PREFIX)]
  if proc.returncode or not lines:
    print(f"  (PyTorch child failed, exit {proc.returncode}: "
          f"{proc.stderr[-800:]})", file=sys.stderr)
    return None
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def print_result(result: dict[str, Any] | None) -> None:
  """The child's side of `in_child`."""
  if result is not None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def import_torch():
  """(torch, transformers) or None, with a message on stderr."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"[torch] skipped: {e}", file=sys.stderr)
    return None
  transformers.logging.set_verbosity_error()
  return torch, transformers


def device(torch):
  """CUDA when available (TF32 matmuls, as JAX on NVIDIA), else CPU."""
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if dev.type == "cuda":
    torch.set_float32_matmul_precision("high")
  return dev


def sync(torch, dev) -> None:
  if dev.type == "cuda":
    torch.cuda.synchronize()


def describe(torch, dev) -> str:
  if dev.type == "cuda":
    return torch.cuda.get_device_name()
  return f"cpu ({torch.get_num_threads()} threads)"


def hf_config(transformers, cfg):
  """The transformers.T5Config of an ipo_md T5Config (v1.1 gated GELU)."""
  return transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim,
      d_ff=cfg.mlp_dim, num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      dropout_rate=0.0, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS,
      decoder_start_token_id=PAD)


def new_model(torch, transformers, cfg, dev, *, seed: int, dtype=None):
  """A randomly initialised T5ForConditionalGeneration, built on `dev`."""
  torch.manual_seed(seed)
  with torch.device(dev):
    model = transformers.T5ForConditionalGeneration(
        hf_config(transformers, cfg))
  if dtype is not None:
    model = model.to(dtype)
  return model.eval()


def mixture_loop(torch, models, inputs, mask, new_tokens: int, beta: float,
                 *, autocast=None):
  """Two completions per prompt from the token-wise geometric mixture.

  `models` is (policy,) for beta = 0 or (policy, reference). EOS and pad are
  masked, so every row decodes `new_tokens` tokens. Returns (tokens [2B, T],
  the last model's log-probs of the sampled tokens summed per row [2B]):
  with two models that is the reference's, which the update needs.
  """
  with torch.inference_mode(), _maybe_autocast(torch, autocast):
    x, m = inputs.repeat(2, 1), mask.repeat(2, 1)
    enc = [model.get_encoder()(input_ids=x, attention_mask=m)
           for model in models]
    past = [None] * len(models)
    prev = torch.full((x.shape[0], 1), PAD, dtype=torch.long,
                      device=x.device)
    tokens, last_logp = [], torch.zeros(x.shape[0], device=x.device)
    for _ in range(new_tokens):
      logps = []
      for i, model in enumerate(models):
        o = model(encoder_outputs=enc[i], attention_mask=m,
                  decoder_input_ids=prev, past_key_values=past[i],
                  use_cache=True)
        past[i] = o.past_key_values
        logps.append(torch.log_softmax(o.logits[:, -1].float(), dim=-1))
      mixed = logps[0] if beta == 0.0 else (
          (1 - beta) * logps[0] + beta * logps[1])
      mixed[:, [PAD, EOS]] = -float("inf")
      prev = torch.multinomial(torch.softmax(mixed, dim=-1), 1)
      last_logp += logps[-1].gather(1, prev)[:, 0]
      tokens.append(prev)
    return torch.cat(tokens, dim=1), last_logp


def _maybe_autocast(torch, dtype):
  if dtype is None:
    return torch.autocast("cpu", enabled=False)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  return torch.autocast(dev, dtype=dtype)


def pm_probability(torch, pm, inputs, y, yp, readout: int, *, autocast=None):
  """Symmetrised p(y > y' | x) of a pairwise T5 preference model [B].

  The PM reads prompt + y + y' + EOS (no padding in these benchmarks) and
  p = sigmoid(first decoder step's logit[readout]); both orders in one
  batch, p = (p(y, y') + 1 - p(y', y)) / 2, as ipo_md's `symmetrized`.
  """
  b = inputs.shape[0]
  eos = torch.full((b, 1), EOS, dtype=torch.long, device=inputs.device)
  fwd = torch.cat([inputs, y, yp, eos], dim=1)
  bwd = torch.cat([inputs, yp, y, eos], dim=1)
  packed = torch.cat([fwd, bwd], dim=0)
  start = torch.zeros((2 * b, 1), dtype=torch.long, device=inputs.device)
  with torch.inference_mode(), _maybe_autocast(torch, autocast):
    logits = pm(input_ids=packed, decoder_input_ids=start).logits
  p = torch.sigmoid(logits[:, 0, readout].float())
  return 0.5 * (p[:b] + 1.0 - p[b:])


def make_update(torch, policy, *, lr: float, tau: float, autocast=None):
  """update(inputs, mask, y, yp, ref_y, ref_yp, label) -> loss: teacher-
  forced scores of y and y' (the encoder once per prompt), the soft-label
  IPO loss, backward, Adafactor (T5X settings)."""
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top

  opt = Adafactor(policy.parameters(), lr=lr, relative_step=False,
                  scale_parameter=True, warmup_init=False, decay_rate=-0.8,
                  clip_threshold=1.0, beta1=None)

  def update(inputs, mask, y, yp, ref_y, ref_yp, label):
    policy.train()
    b = inputs.shape[0]
    both = torch.cat([y, yp], dim=0)
    dec_in = torch.cat([torch.full((2 * b, 1), PAD, dtype=torch.long,
                                   device=both.device), both[:, :-1]], dim=1)
    opt.zero_grad(set_to_none=True)
    with _maybe_autocast(torch, autocast):
      enc = policy.get_encoder()(input_ids=inputs, attention_mask=mask)
      hidden = enc.last_hidden_state.repeat(2, 1, 1)
      logits = policy(encoder_outputs=(hidden,),
                      attention_mask=mask.repeat(2, 1),
                      decoder_input_ids=dec_in).logits
    token = torch.log_softmax(logits.float(), -1).gather(
        -1, both[..., None])[..., 0]
    seq = token.sum(-1)  # No EOS or pad in these targets.
    h = (seq[:b] - ref_y) - (seq[b:] - ref_yp)
    loss = torch.mean((h - (label - 0.5) / tau) ** 2)
    loss.backward()
    opt.step()
    return loss.detach()

  return update


def as_tensors(torch, dev, data: dict[str, np.ndarray]) -> dict[str, Any]:
  out = {}
  for k, v in data.items():
    dtype = torch.long if np.issubdtype(v.dtype, np.integer) else None
    out[k] = torch.as_tensor(v, dtype=dtype, device=dev)
  return out
