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

"""Hugging Face T5 checkpoints <-> the framework's params, without torch.

Import (`load_hf`) reads `config.json`, maps it to a `T5Config`, checks every
tensor's name and shape against it, then converts and places one tensor at a
time (HF Linear weights are [out, in]; our kernels are [in, out]). Export
(`export_hf`) writes `config.json` and a streamed `model.safetensors`.

The output layer. T5 1.0 ties it to the embedding and scales the decoder
output by d_model**-0.5; T5 v1.1 / Flan-T5 keep a separate `lm_head.weight`
and do not scale. transformers 5.x always reports `tie_word_embeddings: true`
and stores the scaling in `scale_decoder_outputs`, so the importer decides
tying by the presence of `lm_head.weight` and scaling by
`scale_decoder_outputs` when present, else by `tie_word_embeddings`
(default true). The two unusual combinations are converted exactly: an
untied but scaled head has the scale folded into `logits_dense`; a tied but
unscaled head becomes an untied copy of the embedding.
"""

import dataclasses
import os
from typing import Any, Mapping

from etils import epath
import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np

from ipo_md.checkpoints import hf_files
from ipo_md.checkpoints import paths
from ipo_md.checkpoints import t5_layout
from ipo_md.model import config as config_lib

CONFIG_FILE = "config.json"
SUPPORTED_MODEL_TYPES = ("t5", "mt5")
SUPPORTED_ARCHITECTURES = ("T5ForConditionalGeneration",
                           "MT5ForConditionalGeneration", "T5WithLMHeadModel",
                           "T5Model", "MT5Model")
# HF `feed_forward_proj` -> our `mlp_activations`. HF's "gated-gelu" and
# "gelu_new" are the tanh approximation (ours); plain "gelu" is the exact erf
# GELU, which the network does not implement.
FEED_FORWARD = {
    "relu": ("relu",),
    "gated-relu": ("relu", "linear"),
    "gated-gelu": ("gelu", "linear"),
    "gated-gelu_new": ("gelu", "linear"),
    "gelu_new": ("gelu",),
    "silu": ("silu",),
    "gated-silu": ("silu", "linear"),
}
LM_HEAD = "lm_head.weight"
# Present in some checkpoints, duplicates of `shared.weight` or unused by T5.
IGNORED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                "decoder.block.0.layer.1.EncDecAttention."
                "relative_attention_bias.weight")
_HF_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}


def read_hf_config(directory: str | os.PathLike) -> dict[str, Any]:
  path = paths.as_path(directory) / CONFIG_FILE
  return t5_layout.read_json(path, what="Hugging Face config.json")


def scale_decoder_outputs(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF scales the decoder output by d_model**-0.5 before the head."""
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return hf_config.get("tie_word_embeddings", True) is not False


def _check_architecture(hf_config: Mapping[str, Any], source: str) -> None:
  model_type = hf_config.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(
        f"{source}: model_type={model_type!r} is not supported; this importer "
        f"reads {SUPPORTED_MODEL_TYPES} (T5 1.0, T5 v1.1, Flan-T5, mT5). "
        "UMT5, LongT5 and other variants differ in architecture.")
  archs = hf_config.get("architectures") or []
  bad = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
  if bad:
    raise ValueError(
        f"{source}: architectures={archs} is not supported; expected an "
        f"encoder-decoder LM, one of {SUPPORTED_ARCHITECTURES}.")
  if hf_config.get("is_encoder_decoder", True) is False:
    raise ValueError(f"{source}: is_encoder_decoder=false is not supported.")


def t5_config_from_hf(hf_config: Mapping[str, Any], *,
                      logits_via_embedding: bool, param_dtype: str = "float32",
                      source: str = CONFIG_FILE) -> config_lib.T5Config:
  """Maps an HF T5 config.json to a T5Config (clear errors if unsupported)."""
  _check_architecture(hf_config, source)
  ff = hf_config.get("feed_forward_proj", "relu")
  if ff not in FEED_FORWARD:
    raise ValueError(
        f"{source}: feed_forward_proj={ff!r} is not supported; supported: "
        f"{sorted(FEED_FORWARD)} (plain 'gelu' is the exact erf GELU, which "
        "the network does not implement).")
  missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff",
                         "num_layers", "num_heads") if k not in hf_config]
  if missing:
    raise ValueError(f"{source}: missing required entries {missing}.")
  return config_lib.T5Config(
      vocab_size=hf_config["vocab_size"],
      emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"],
      head_dim=hf_config["d_kv"],
      mlp_dim=hf_config["d_ff"],
      num_encoder_layers=hf_config["num_layers"],
      num_decoder_layers=(hf_config.get("num_decoder_layers")
                          or hf_config["num_layers"]),
      mlp_activations=FEED_FORWARD[ff],
      logits_via_embedding=logits_via_embedding,
      relative_attention_num_buckets=hf_config.get(
          "relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get(
          "relative_attention_max_distance", 128),
      dropout_rate=float(hf_config.get("dropout_rate", 0.0)),
      layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
      param_dtype=param_dtype,
  )


def hf_config_from_t5(config: config_lib.T5Config, *, dtype: str = "float32"
                      ) -> dict[str, Any]:
  """The HF config.json of a T5Config; loads in transformers 4.x and 5.x."""
  ff = [k for k, v in FEED_FORWARD.items() if v == config.mlp_activations]
  if not ff:
    raise ValueError(
        f"mlp_activations={config.mlp_activations} has no Hugging Face "
        f"equivalent; exportable: {sorted(set(FEED_FORWARD.values()))}.")
  tied = config.logits_via_embedding
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": ff[0],
      "is_encoder_decoder": True,
      # 4.x unties on false; 5.x forces true and reads the scaling from
      # scale_decoder_outputs.
      "tie_word_embeddings": tied,
      "scale_decoder_outputs": tied,
      "initializer_factor": 1.0,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "use_cache": True,
      "dtype": dtype,
  }


def hf_names(config: config_lib.T5Config) -> dict[str, tuple[str, bool]]:
  """Our path -> (HF key, transposed?) for every tensor but the output layer."""
  names = {"token_embedder/embedding": ("shared.weight", False)}
  mlp = t5_layout.mlp_names(config) + ("wo",)
  stacks = (
      ("encoder", "encoder_norm", config.num_encoder_layers,
       (("pre_attention_layer_norm", "attention", "SelfAttention"),)),
      ("decoder", "decoder_norm", config.num_decoder_layers,
       (("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
        ("pre_cross_attention_layer_norm", "encoder_decoder_attention",
         "EncDecAttention"))),
  )
  for stack, norm, depth, attentions in stacks:
    names[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        True)
    for i in range(depth):
      ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      for j, (ln, attn, hf_attn) in enumerate(attentions):
        names[f"{ours}/{ln}/scale"] = (f"{theirs}.{j}.layer_norm.weight", False)
        for name, short in _HF_ATTENTION.items():
          names[f"{ours}/{attn}/{name}/kernel"] = (
              f"{theirs}.{j}.{hf_attn}.{short}.weight", True)
      j = len(attentions)
      names[f"{ours}/pre_mlp_layer_norm/scale"] = (
          f"{theirs}.{j}.layer_norm.weight", False)
      for name in mlp:
        names[f"{ours}/mlp/{name}/kernel"] = (
            f"{theirs}.{j}.DenseReluDense.{name}.weight", True)
    names[f"{stack}/{norm}/scale"] = (f"{stack}.final_layer_norm.weight", False)
  return names


def _hf_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
  return tuple(reversed(shape)) if transposed else tuple(shape)


def _check_hf_tensors(src: hf_files.WeightSource, config: config_lib.T5Config,
                      names: Mapping[str, tuple[str, bool]]) -> None:
  """Names and shapes of every HF tensor against the config, before reading."""
  expected = t5_layout.param_shapes(config)
  present = set(src.keys())
  for path, (key, transposed) in names.items():
    want = _hf_shape(expected[path], transposed)
    if key not in present:
      raise ValueError(
          f"{src.description}: missing tensor {key!r} (expected shape {want} "
          f"from config.json, for {path}). The checkpoint is incomplete or "
          "is not a T5 encoder-decoder.")
    if src.shape(key) != want:
      raise ValueError(
          f"{src.description}: tensor {key!r} has shape {src.shape(key)}, but "
          f"config.json implies {want}. The weights do not match the config.")
  if LM_HEAD in present:
    want = (config.vocab_size, config.emb_dim)
    if src.shape(LM_HEAD) != want:
      raise ValueError(
          f"{src.description}: tensor {LM_HEAD!r} has shape "
          f"{src.shape(LM_HEAD)}, but config.json implies {want}.")
  known = {k for k, _ in names.values()} | {LM_HEAD, *IGNORED_KEYS}
  extra = sorted(present - known)
  if extra:
    raise ValueError(
        f"{src.description}: unexpected tensors {extra[:8]} ({len(extra)} in "
        "all) that a T5 with this config.json does not have; the model is "
        "another architecture or config.json does not match the weights.")


@dataclasses.dataclass(frozen=True)
class _Head:
  """How the HF output layer becomes ours: tied (logits via the embedding),
  or a `logits_dense` kernel from `key`, times `scale`."""

  tied: bool
  key: str = ""
  scale: float = 1.0


def _output_head(src: hf_files.WeightSource, hf_config: Mapping[str, Any]
                 ) -> _Head:
  scaled = scale_decoder_outputs(hf_config)
  if LM_HEAD not in src.keys():
    return _Head(tied=True) if scaled else _Head(False, "shared.weight")
  if not scaled:
    return _Head(False, LM_HEAD)
  if (src.shape(LM_HEAD) == src.shape("shared.weight")
      and np.array_equal(src.read(LM_HEAD), src.read("shared.weight"))):
    return _Head(tied=True)  # A .bin checkpoint that stores the tied copy.
  return _Head(False, LM_HEAD, float(hf_config["d_model"]) ** -0.5)


def is_hf_dir(path: str | os.PathLike) -> bool:
  path = paths.as_path(path)
  if not (path / CONFIG_FILE).is_file():
    return False
  try:
    return "model_type" in read_hf_config(path)
  except ValueError:
    return False


def _hf_folder(directory: str | os.PathLike
               ) -> tuple[epath.Path, dict[str, Any]]:
  directory = paths.as_path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"Hugging Face checkpoint {directory} does not "
                            "exist or is not a folder.")
  hf_config = read_hf_config(directory)
  _check_architecture(hf_config, str(directory / CONFIG_FILE))
  return directory, hf_config


def _configure(directory: epath.Path, hf_config: Mapping[str, Any],
               src: hf_files.WeightSource, param_dtype: str
               ) -> tuple[config_lib.T5Config, _Head]:
  """The T5Config and output-layer rule, with every tensor name and shape
  checked (no tensor data is read, except to compare a stored lm_head with
  the embedding)."""
  head = _output_head(src, hf_config)
  config = t5_config_from_hf(hf_config, logits_via_embedding=head.tied,
                             param_dtype=param_dtype,
                             source=str(directory / CONFIG_FILE))
  _check_hf_tensors(src, config, hf_names(config))
  return config, head


def load_hf_config(directory: str | os.PathLike, *,
                   param_dtype: str = "float32") -> config_lib.T5Config:
  """The T5Config `load_hf` would return, after the same checks."""
  directory, hf_config = _hf_folder(directory)
  with hf_files.open_weights(directory) as src:
    return _configure(directory, hf_config, src, param_dtype)[0]


def load_hf(directory: str | os.PathLike, *, shardings: Any = None,
            param_dtype: str = "float32"
            ) -> tuple[dict[str, Any], config_lib.T5Config]:
  """Imports a Hugging Face T5 folder (see module doc).

  Args:
    directory: a folder with config.json and model.safetensors (or a sharded
      index, or pytorch_model.bin, which needs torch).
    shardings: None, one Sharding, or a pytree matching the params; each
      tensor is put directly into its sharding as soon as it is converted.
    param_dtype: dtype of the imported params (and of the config).

  Returns:
    (params, config): unboxed params with T5X names, and the T5Config.
  """
  directory, hf_config = _hf_folder(directory)
  with hf_files.open_weights(directory) as src:
    config, head = _configure(directory, hf_config, src, param_dtype)
    lookup = t5_layout.shardings_lookup(shardings)
    dtype = config.jnp_param_dtype
    flat = {}
    for path, (key, transposed) in hf_names(config).items():
      array = src.read(key)
      flat[path] = t5_layout.place(array.T if transposed else array, dtype,
                                   lookup(path))
      del array
    if not head.tied:
      kernel = src.read(head.key).T
      if head.scale != 1.0:
        kernel = kernel.astype(np.float32) * np.float32(head.scale)
      flat["decoder/logits_dense/kernel"] = t5_layout.place(
          kernel, dtype, lookup("decoder/logits_dense/kernel"))
  return t5_layout.unflatten(flat), config


def export_hf(params: Any, config: config_lib.T5Config,
              directory: str | os.PathLike, *, dtype: str = "float32") -> None:
  """Writes `params` as a Hugging Face T5 folder (config.json +
  model.safetensors) that `T5ForConditionalGeneration.from_pretrained` loads
  with no missing or unexpected weights.

  Args:
    params: params of `config` (boxed or unboxed, on any devices).
    config: their T5Config.
    directory: output folder (created; existing model files are replaced).
    dtype: dtype of the written weights ("float32", "bfloat16", "float16").
  """
  flat = t5_layout.flatten(flax.core.meta.unbox(params))
  t5_layout.check_shapes({k: np.shape(v) for k, v in flat.items()}, config,
                         source="export_hf(params)")
  hf_config = hf_config_from_t5(config, dtype=dtype)
  entries = {key: (path, transposed)
             for path, (key, transposed) in hf_names(config).items()}
  if not config.logits_via_embedding:
    entries[LM_HEAD] = ("decoder/logits_dense/kernel", True)
  np_dtype = np.dtype(jnp.dtype(dtype))
  specs = [(key, _hf_shape(np.shape(flat[path]), transposed), np_dtype)
           for key, (path, transposed) in sorted(entries.items())]

  def produce(key: str) -> np.ndarray:
    path, transposed = entries[key]
    array = np.asarray(jax.device_get(flat[path]))
    return np.ascontiguousarray(array.T if transposed else array,
                                dtype=np_dtype)

  directory = paths.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hf_files.write_safetensors(directory / hf_files.SAFETENSORS, specs, produce,
                             metadata={"format": "pt"})
  t5_layout.write_json(directory / CONFIG_FILE, hf_config)
