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

"""Peak host memory of importing a Hugging Face T5 checkpoint.

  python bench/import_memory.py              # T5 v1.1 large (783M params)
  python bench/import_memory.py --size base --keep /tmp/t5_base_hf

Builds a randomly initialised checkpoint of the named size itself (nothing is
downloaded), writing `model.safetensors` one tensor at a time, then imports it
with `hf.load_hf` in a fresh subprocess and reports that process's RSS
high-water mark (`resource.getrusage(...).ru_maxrss`) next to the checkpoint
size. The target is at most about twice the checkpoint size. The writer's own
peak is reported too, as a check that export/writing is streamed.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

_GIB = 2.0 ** 30


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux KiB.


def _write(directory: str, size: str) -> dict:
  """Child: writes a random HF checkpoint of `size`, tensor by tensor."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import hf_files  # pylint: disable=g-import-not-at-top
  from ipo_md.checkpoints import t5_layout  # pylint: disable=g-import-not-at-top
  from ipo_md.model import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.t5_1_1(size)
  shapes = t5_layout.param_shapes(config)
  specs = [(key, tuple(reversed(shapes[path])) if transposed
            else shapes[path], np.float32)
           for path, (key, transposed) in hf.hf_names(config).items()]
  specs.append((hf.LM_HEAD, (config.vocab_size, config.emb_dim), np.float32))
  rng = np.random.default_rng(0)
  dims = dict((name, shape) for name, shape, _ in specs)
  path = pathlib.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  hf_files.write_safetensors(
      path / hf_files.SAFETENSORS, specs,
      lambda name: rng.standard_normal(dims[name], dtype=np.float32),
      metadata={"format": "pt"})
  t5_layout.write_json(str(path / hf.CONFIG_FILE),
                       hf.hf_config_from_t5(config))
  return {"params": sum(int(np.prod(s)) for s in dims.values()),
          "file_bytes": (path / hf_files.SAFETENSORS).stat().st_size,
          "peak_rss_bytes": _peak_rss_bytes()}


def _import(directory: str) -> dict:
  """Child: imports the checkpoint on the host CPU; reports peak RSS."""
  import jax  # pylint: disable=g-import-not-at-top

  from ipo_md.checkpoints import hf  # pylint: disable=g-import-not-at-top

  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  jax.device_put(0.0, cpu).block_until_ready()  # Initialise the backend.
  baseline = _peak_rss_bytes()
  start = time.time()
  params, _ = hf.load_hf(directory, shardings=cpu)
  jax.block_until_ready(params)
  held = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  return {"baseline_rss_bytes": baseline, "peak_rss_bytes": _peak_rss_bytes(),
          "params_bytes": held, "seconds": time.time() - start}


def _child(mode: str, directory: str, size: str) -> dict:
  cmd = [sys.executable, __file__, f"--_child={mode}", "--size", size,
         "--keep", directory]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                       env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _report(size: str, written: dict, imported: dict) -> str:
  size_b = written["file_bytes"]
  peak, base = imported["peak_rss_bytes"], imported["baseline_rss_bytes"]
  return "\n".join([
      f"T5 v1.1 {size}: {written['params'] / 1e6:.0f}M params, "
      f"model.safetensors {size_b / _GIB:.2f} GiB (float32)",
      f"writer peak RSS:  {written['peak_rss_bytes'] / _GIB:.2f} GiB",
      f"import peak RSS:  {peak / _GIB:.2f} GiB = {peak / size_b:.2f}x the "
      f"checkpoint (process baseline after importing jax: "
      f"{base / _GIB:.2f} GiB; above baseline {(peak - base) / size_b:.2f}x)",
      f"imported params:  {imported['params_bytes'] / _GIB:.2f} GiB in "
      f"{imported['seconds']:.1f}s",
  ])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="large",
                      choices=("tiny", "small", "base", "large", "xl"))
  parser.add_argument("--keep", default=None, metavar="DIR",
                      help="Write the checkpoint here and keep it (default: a "
                      "temporary folder, deleted afterwards).")
  parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  child = args._child  # pylint: disable=protected-access
  if child:
    result = (_write(args.keep, args.size) if child == "write"
              else _import(args.keep))
    print(json.dumps(result))
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    directory = args.keep or os.path.join(tmp, "hf")
    written = _child("write", directory, args.size)
    imported = _child("import", directory, args.size)
  print(_report(args.size, written, imported))
  return 0


if __name__ == "__main__":
  sys.exit(main())
