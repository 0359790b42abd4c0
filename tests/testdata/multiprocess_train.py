"""Runs `ipo-md train` and records what this process saw, for
tests/multiprocess_test.py:

    python tests/testdata/multiprocess_train.py RECORD_DIR train --gin_file=...

Everything after RECORD_DIR goes to the `ipo-md` command unchanged (add
--multihost and the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment for a multi-process run). Into RECORD_DIR it
writes `process_<i>.json` (each data iterator's shard and the stream indices
of its first batch) and `<stage>_params_<i>.npz` (this process's copy of each
stage's final parameters). `install_recorders` does the same in-process.
"""

import json
import pathlib
import sys

import jax
import numpy as np

from ipo_md.cli import main as cli_main
from ipo_md.data import pipeline as data_pipeline
from ipo_md.trainer import loop


def install_recorders(record_dir: pathlib.Path, patch=setattr) -> None:
  """Wraps the iterator factory and Trainer.run to write what they saw;
  `patch(owner, name, value)` installs each wrapper (e.g. a pytest
  monkeypatch.setattr, which undoes it)."""
  record_dir.mkdir(parents=True, exist_ok=True)
  shards = []
  make_iterator = data_pipeline.make_iterator

  def recording_make_iterator(cfg, *, shard_index=0, num_shards=1,
                              start_position=0):
    it = make_iterator(cfg, shard_index=shard_index, num_shards=num_shards,
                       start_position=start_position)
    shards.append({"task": cfg.task, "shard_index": shard_index,
                   "num_shards": num_shards,
                   "first_rows": it.example_indices(start_position).tolist()})
    path = record_dir / f"process_{jax.process_index()}.json"
    path.write_text(json.dumps({"process_index": jax.process_index(),
                                "process_count": jax.process_count(),
                                "shards": shards}))
    return it

  run = loop.Trainer.run

  def recording_run(self):
    state, last = run(self)
    arrays = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
      local = x.addressable_data(0)
      if local.shape != x.shape:
        raise ValueError(f"{jax.tree_util.keystr(path)} is not replicated.")
      arrays[jax.tree_util.keystr(path)] = np.asarray(local)
    np.savez(record_dir / f"{self.name}_params_{jax.process_index()}.npz",
             **arrays)
    return state, last

  patch(data_pipeline, "make_iterator", recording_make_iterator)
  patch(loop.Trainer, "run", recording_run)


if __name__ == "__main__":
  install_recorders(pathlib.Path(sys.argv[1]))
  sys.exit(cli_main.main(sys.argv[2:]))
