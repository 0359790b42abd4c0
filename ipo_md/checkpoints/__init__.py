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

"""Verified Orbax checkpoints of the train state, with the data position.

Layout of `<dir>` (local or `gs://`):

  <step>/state/                  the TrainState pytree (Orbax StandardSave)
  <step>/meta/                   JSON: step, data position, model config
  <step>/ipo_md_manifest.json    size + SHA-256 of every file above
  saving/<step>                  a save of <step> started, not yet verified
  damaged/<step>-<why>-<time>/   checkpoints that failed to verify or restore

Why more than a bare CheckpointManager: a run must survive what happens on
pods. `save` refuses a state with NaN or Inf (so a diverged run cannot write
over its good checkpoints) and, once Orbax has finished writing, seals the
folder with a manifest in a background thread. Rotation (keep the newest K)
counts and deletes only sealed checkpoints, so the newest verified one is
never deleted, whatever happened to newer ones. `restore_latest` walks the
steps from the newest, verifies each, moves damaged ones aside with the
reason printed, and restores the first good one into the target shardings,
which may be those of another mesh. A SIGKILL at any moment leaves either a
sealed checkpoint, a finished but unsealed one that `restore_latest` seals
(its `saving/` marker proves this run wrote it), or an unfinished one that it
sets aside.

On several hosts every process calls every method; process 0 alone seals,
deletes and moves folders, and the processes agree on the step to restore.
"""

import dataclasses
import threading
from typing import Any, Callable, NamedTuple

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.path import step as step_lib

from ipo_md.checkpoints import finite
from ipo_md.checkpoints import hosts
from ipo_md.checkpoints import paths
from ipo_md.checkpoints import structure
from ipo_md.checkpoints import verify

NonFiniteStateError = finite.NonFiniteStateError
CheckpointMismatchError = structure.CheckpointMismatchError
Damage = verify.Damage

STATE_ITEM = "state"
META_ITEM = "meta"
DAMAGED_DIR = "damaged"
SAVING_DIR = "saving"
_ORBAX_TMP = ".orbax-checkpoint-tmp"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
  """every: save every N steps (0 = only at the end); keep: the newest K
  verified checkpoints are kept."""

  every: int = 1000
  keep: int = 3

  def __post_init__(self):
    if self.every < 0 or self.keep < 1:
      raise ValueError(
          f"CheckpointConfig(every={self.every}, keep={self.keep}): every must "
          "be >= 0 and keep >= 1.")


class DamagedCheckpointError(ValueError):
  """`restore(step)` of a checkpoint that fails verification."""


class NoUsableCheckpointError(ValueError):
  """Checkpoints exist but none verifies and restores; all were moved aside.

  Attributes:
    damaged: the Damage records, newest first, with `moved_to` set.
  """

  def __init__(self, directory: str, damaged: list[verify.Damage]):
    self.damaged = damaged
    lines = "\n".join(f"  {d.line()}" for d in damaged)
    super().__init__(
        f"No checkpoint in {directory} verifies and restores:\n{lines}\n"
        f"Each was moved into {directory}/{DAMAGED_DIR}/ (nothing was "
        "deleted). Rerun the same command to start this stage from step 0, or "
        "restore a copy of the checkpoint folder from a backup. To use one of "
        "them anyway, move it back to its step name and seal it: python -c "
        "\"from ipo_md.checkpoints import verify; verify.write_manifest('"
        f"{directory}/<step>')\"")


class Restored(NamedTuple):
  """What `restore_latest` returns: the step, the state placed in the target
  shardings, and the meta JSON (step, data position, model config, ...)."""

  step: int
  state: Any
  meta: dict


class Checkpointer:
  """Periodic, final and on-signal saves; verified restore of the latest.

  Args:
    directory: the checkpoints folder (local path or `gs://...`).
    cfg: how often to save and how many to keep.
    report: called with one line per event the user should see (a
      checkpoint set aside, a late seal); default `print`.
  """

  def __init__(self, directory: paths.PathLike, cfg: CheckpointConfig, *,
               report: Callable[[str], None] | None = None):
    self.directory = paths.as_path(directory)
    self.cfg = cfg
    self.damaged: list[verify.Damage] = []
    self._report = report or (lambda line: print(line, flush=True))
    self._sealer: threading.Thread | None = None
    self._seal_error: BaseException | None = None
    self._orbax: ocp.CheckpointManager | None = None

  @property
  def _manager(self) -> ocp.CheckpointManager:
    """Orbax's manager, made on first use: verifying, rotating and setting
    aside need only the file system. Rotation is ours (max_to_keep=None),
    and so is the handling of temporary folders left by killed saves
    (`restore_latest` sets them aside; Orbax would delete them in the
    background, racing with the scan)."""
    if self._orbax is None:
      self._orbax = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None, create=True, cleanup_tmp_directories=False),
          item_names=(STATE_ITEM, META_ITEM),
      )
    return self._orbax

  def _reload(self) -> None:
    if self._orbax is not None:
      self._orbax.reload()

  # --- steps on disk -------------------------------------------------------

  def _step_dir(self, step: int):
    return self.directory / str(step)

  def _marker(self, step: int):
    return self.directory / SAVING_DIR / str(step)

  def _entries(self) -> list[tuple[int, Any]]:
    """(step, path) of every child named by a number, oldest first."""
    if not self.directory.is_dir():
      return []
    found = [(int(p.name), p) for p in self.directory.iterdir()
             if p.name.isdigit()]
    return sorted(found, key=lambda e: e[0])

  def _sealed_steps(self) -> list[int]:
    return [s for s, p in self._entries() if verify.has_manifest(p)]

  def latest_step(self) -> int | None:
    """The newest sealed step (the one `restore_latest` tries first; it is
    verified only there), or None."""
    sealed = self._sealed_steps()
    return sealed[-1] if sealed else None

  def latest_meta(self) -> tuple[int, dict] | None:
    """(step, meta) of the newest sealed step whose files are all present
    with their recorded sizes and whose meta reads; None if there is none.

    A cheap look before resuming (e.g. is the stage finished, which model
    wrote it): nothing is hashed or moved. `restore_latest` then verifies
    contents and sets damaged folders aside.
    """
    for step in reversed(self._sealed_steps()):
      if verify.check(self._step_dir(step), contents=False) is None:
        meta, damage = self._read_meta(step)
        if damage is None:
          return step, meta
    return None

  def should_save(self, step: int) -> bool:
    return self.cfg.every > 0 and step % self.cfg.every == 0

  # --- saving --------------------------------------------------------------

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Starts an asynchronous save of `state` and `meta` at `step` (a no-op
    if that step exists). The previous save is finished and sealed first.

    Raises:
      NonFiniteStateError: a floating leaf of `state` holds NaN or Inf;
        nothing is written.
    """
    self._finish()
    bad = finite.non_finite_leaves(state)
    if bad:
      last = self.latest_step()
      raise NonFiniteStateError(
          step, bad, None if last is None else str(self._step_dir(last)))
    # Orbax's list, not the folder: it is the same on every host, so all
    # of them skip or all save (a collective).
    if step in self._manager.all_steps():
      return
    if hosts.is_primary():
      self._marker(step).parent.mkdir(parents=True, exist_ok=True)
      self._marker(step).write_text(f"{step}\n")
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    if hosts.is_primary():
      self._sealer = threading.Thread(target=self._seal_when_written,
                                      args=(step,), daemon=True)
      self._sealer.start()

  def _seal_when_written(self, step: int) -> None:
    try:
      self._manager.wait_until_finished()
    except BaseException as e:  # pylint: disable=broad-exception-caught
      self._seal_error = e  # The save failed: raised on the main thread.
      return
    try:
      self._seal(step)
    except Exception as e:  # pylint: disable=broad-exception-caught
      # The checkpoint is written but unsealed: not counted by keep-K, and
      # sealed by restore_latest (its marker stays). Training goes on.
      self._report(f"{self._step_dir(step)}: saved but not verified "
                   f"({type(e).__name__}: {_first_line(e)}); it will be "
                   "verified if a run resumes from it.")

  def _seal(self, step: int) -> None:
    verify.write_manifest(self._step_dir(step), step)
    self._marker(step).unlink(missing_ok=True)

  def _finish(self) -> None:
    """Waits for the save in flight, its seal, then applies keep-K."""
    if self._sealer is not None:
      self._sealer.join()
      self._sealer = None
    if self._orbax is not None:
      self._orbax.wait_until_finished()
    if self._seal_error is not None:
      error, self._seal_error = self._seal_error, None
      raise RuntimeError(
          f"Saving the last checkpoint in {self.directory} failed: {error}"
      ) from error
    if hosts.is_primary():
      self._prune()

  def _prune(self) -> None:
    """Deletes sealed checkpoints beyond the newest `keep` sealed ones.
    Unsealed or damaged folders are never counted nor deleted here."""
    sealed = self._sealed_steps()
    doomed = sealed[:-self.cfg.keep]
    for step in doomed:
      _delete_sealed(self._step_dir(step))
    if doomed:
      self._reload()

  def wait(self) -> None:
    """Blocks until the last save is written, sealed and rotated."""
    self._finish()

  def close(self) -> None:
    """Finishes the last save (see `wait`) and closes Orbax's manager."""
    try:
      self._finish()
    finally:
      if self._orbax is not None:
        self._orbax.close()
        self._orbax = None

  # --- restoring -----------------------------------------------------------

  def restore_meta(self, step: int) -> dict:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[META_ITEM]

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Verifies and restores `step` into `abstract_state` (ShapeDtypeStructs
    with shardings, of this or another mesh). Nothing is moved.

    Raises:
      DamagedCheckpointError: the step does not verify or does not restore.
      CheckpointMismatchError: its tree or shapes differ from the target's.
    """
    self._finish()
    damage = verify.check(self._step_dir(step))
    restored = None
    if damage is None:
      restored, damage = self._attempt(step, abstract_state, None)
    if damage is not None:
      raise DamagedCheckpointError(
          f"Checkpoint {damage.line()}. Restore another step (sealed steps: "
          f"{self._sealed_steps()}), or use restore_latest, which sets "
          "damaged checkpoints aside.")
    return restored.state, restored.meta

  def _attempt(self, step: int, abstract_state: Any,
               check_meta: Callable[[dict], None] | None
               ) -> tuple[Restored | None, Damage | None]:
    """Restores a verified step: (Restored, None) or (None, Damage).
    Configuration errors (check_meta's, CheckpointMismatchError) raise."""
    meta, damage = self._read_meta(step)
    if damage is not None:
      return None, damage
    if check_meta is not None:
      check_meta(meta)
    state_dir = self._step_dir(step) / STATE_ITEM
    try:
      saved = structure.saved_shapes(state_dir)
    except Exception as e:  # pylint: disable=broad-exception-caught
      return None, Damage(str(self._step_dir(step)), "its tree metadata "
                          f"cannot be read ({type(e).__name__}: "
                          f"{_first_line(e)})", "bad-metadata")
    structure.check_fits(saved, abstract_state,
                         where=str(self._step_dir(step)))
    state, damage = self._read_state(step, abstract_state)
    if damage is not None:
      return None, damage
    return Restored(step, state, meta), None

  def _read_meta(self, step: int) -> tuple[dict | None, Damage | None]:
    where = str(self._step_dir(step))
    try:
      meta = self.restore_meta(step)
    except Exception as e:  # pylint: disable=broad-exception-caught
      return None, Damage(where, f"its {META_ITEM} cannot be read "
                          f"({type(e).__name__}: {_first_line(e)})",
                          "bad-meta")
    if not isinstance(meta, dict):
      return None, Damage(where, f"its {META_ITEM} is not a JSON object",
                          "bad-meta")
    if "step" in meta and meta["step"] != step:
      return None, Damage(where, f"its {META_ITEM} says step {meta['step']}",
                          "bad-meta")
    position = meta.get("data_position", 0)
    if not isinstance(position, int) or position < 0:
      return None, Damage(where, f"its data_position {position!r} is not a "
                          "count of batches", "bad-meta")
    return meta, None

  def _read_state(self, step: int, abstract_state: Any
                  ) -> tuple[Any, Damage | None]:
    where = str(self._step_dir(step))
    try:
      state = self._manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state)))[STATE_ITEM]
    except Exception as e:  # pylint: disable=broad-exception-caught
      return None, Damage(where, f"its {STATE_ITEM} does not restore "
                          f"({type(e).__name__}: {_first_line(e)})",
                          "unreadable")
    bad = finite.non_finite_leaves(state)
    if bad:
      return None, Damage(where, f"{bad[0][0]} holds {bad[0][1]} "
                          f"({len(bad)} non-finite leaves)", "non-finite")
    return state, None

  def restore_latest(self, abstract_state: Any, *,
                     check_meta: Callable[[dict], None] | None = None
                     ) -> Restored | None:
    """The newest checkpoint that verifies and restores, or None if there is
    none to resume from.

    Damaged folders are reported (one line each, via `report`) and moved to
    `<dir>/damaged/`; they are also appended to `self.damaged`.

    Args:
      abstract_state: the target tree of ShapeDtypeStructs with shardings.
      check_meta: called with a verified checkpoint's meta before its state
        is read (e.g. to compare the model config); whatever it raises
        propagates, and no folder is moved for it.

    Returns:
      Restored(step, state, meta), or None when no folder holds a complete
      checkpoint (a fresh directory, or only empty folders and unfinished
      saves, which are set aside).

    Raises:
      CheckpointMismatchError: the newest verified checkpoint's tree or
        shapes differ from `abstract_state` (a configuration error; nothing
        is moved).
      NoUsableCheckpointError: checkpoints existed, none restored.
    """
    self._finish()
    lost: list[verify.Damage] = []
    while True:
      primary = hosts.is_primary()
      step = hosts.broadcast_int(self._next_candidate(lost) if primary else -1)
      self._reload()
      if step < 0:
        break
      restored, damage = self._attempt(step, abstract_state, check_meta)
      if hosts.all_true(damage is None):
        return restored
      if hosts.is_primary():
        damage = damage or Damage(str(self._step_dir(step)),
                                  "did not restore on another host",
                                  "unreadable")
        lost.append(self._set_aside(damage))
    if lost and any(d.valuable for d in lost):
      raise NoUsableCheckpointError(str(self.directory), lost)
    return None

  def _next_candidate(self, lost: list[verify.Damage]) -> int:
    """Process 0: the newest step folder whose manifest verifies (sealing a
    finished save of this directory that was never sealed); the ones above
    it are set aside and appended to `lost`. -1 if none."""
    self._drop_stale_markers()
    for path in self._temporary_folders():
      lost.append(self._set_aside(Damage(
          str(path), "is a save that never finished (Orbax's temporary "
          "folder; the run was killed while writing it)", "unfinished",
          valuable=False)))
    for step, path in reversed(self._entries()):
      damage = verify.check(path)
      if damage is not None and damage.slug == "no-manifest":
        damage = self._unsealed(step, path)
      if damage is None:
        self._marker(step).unlink(missing_ok=True)
        return step
      lost.append(self._set_aside(damage))
    return -1

  def _unsealed(self, step: int, path) -> verify.Damage | None:
    """A step folder without a manifest: seal it if its `saving/` marker
    shows this directory's own save wrote it and Orbax finished it."""
    if not self._marker(step).exists():
      return Damage(
          str(path), f"has no {verify.MANIFEST}: it was not written by this "
          "version of ipo-md (or was copied in without it), so its contents "
          "cannot be verified", "unverified")
    if not step_lib.is_path_finalized(path):
      return Damage(str(path), "is a save that never finished (the run was "
                    "killed while writing it)", "unfinished", valuable=False)
    self._seal(step)
    self._report(f"{path}: sealed (its save had finished, but the run "
                 "stopped before verifying it).")
    return None

  def _temporary_folders(self) -> list[Any]:
    if not self.directory.is_dir():
      return []
    return sorted(p for p in self.directory.iterdir()
                  if _ORBAX_TMP in p.name)

  def _set_aside(self, damage: verify.Damage) -> verify.Damage:
    moved = verify.move_aside(damage, self.directory / DAMAGED_DIR)
    step = paths.as_path(damage.path).name.split(".")[0]
    (self.directory / SAVING_DIR / step).unlink(missing_ok=True)
    self.damaged.append(moved)
    self._report(moved.line())
    return moved

  def _drop_stale_markers(self) -> None:
    saving = self.directory / SAVING_DIR
    if saving.is_dir():
      for marker in saving.iterdir():
        if not (self.directory / marker.name).exists():
          marker.unlink(missing_ok=True)


def _delete_sealed(step_dir) -> None:
  """Deletes a sealed step folder, its manifest last: a deletion cut short
  leaves a folder that still counts as sealed (and oldest), so the next
  rotation finishes it, and a restore sees it as damaged."""
  for child in step_dir.iterdir():
    if child.name != verify.MANIFEST:
      if child.is_dir():
        child.rmtree()
      else:
        child.unlink()
  step_dir.rmtree()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else "no message"


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shardings)
