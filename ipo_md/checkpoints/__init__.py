"""Orbax checkpoints of the train state, with the data position beside it.

Layout: `<dir>/<step>/state` (the TrainState pytree: step, params, opt_state,
rng) and `<dir>/<step>/meta` (JSON: step, data position, model config). Orbax
writes each checkpoint to a temporary folder and renames it when complete, so
a crash mid-save never leaves a half checkpoint that restore would pick up.
Restoring places every array directly in its target sharding.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
  """every: save every N steps (0 = only at the end); keep: last K kept."""

  every: int = 1000
  keep: int = 3

  def __post_init__(self):
    if self.every < 0 or self.keep < 1:
      raise ValueError(
          f"CheckpointConfig(every={self.every}, keep={self.keep}): every must "
          "be >= 0 and keep >= 1.")


class Checkpointer:
  """Periodic, final and on-signal saves; restore of the latest step."""

  def __init__(self, directory: str | pathlib.Path, cfg: CheckpointConfig):
    self.directory = pathlib.Path(directory).absolute()
    self.cfg = cfg
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep,
                                             create=True),
        item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.cfg.every > 0 and step % self.cfg.every == 0

  def save(self, step: int, state: Any, meta: dict) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        force=True,
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_meta(self, step: int) -> dict:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings)."""
    try:
      out = self._manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"Checkpoint {self.directory / str(step)} does not match this "
          f"model/optimizer (another model size or config?): {e}. Point "
          "MODEL_DIR to a fresh folder or use the config it was trained with."
      ) from e
    return out["state"], out["meta"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shardings)
