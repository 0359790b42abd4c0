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

"""Content manifests of checkpoint folders, and moving damaged ones aside.

Why: Orbax makes a save atomic, but nothing checks a checkpoint afterwards. A
tensor file truncated by a full disk, overwritten by a stray copy or hit by
bit rot restores without complaint (or with a TensorStore traceback), and the
run then trains on garbage. After each save has finished, the size and
SHA-256 of every file under the step folder go into `ipo_md_manifest.json`
(written last, atomically); `check` recomputes them before a restore and
names the first file that differs. A folder that fails is never deleted: it
is renamed into `<checkpoints>/damaged/` with the reason in its name and in
a text file beside its contents.
"""

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
from typing import Any

from etils import epath

from ipo_md.checkpoints import paths

MANIFEST = "ipo_md_manifest.json"
REASON_FILE = "ipo_md_damage.txt"
FORMAT = 1
_CHUNK = 4 << 20
# Files are hashed in parallel: hashlib releases the GIL, and on a bucket the
# latency of each read dominates.
_THREADS = 8


@dataclasses.dataclass(frozen=True)
class Damage:
  """Why a checkpoint folder cannot be used.

  Attributes:
    path: the folder (or stray file) as found.
    reason: one line for the user.
    slug: a short tag for the name of the moved-aside folder.
    valuable: whether a complete checkpoint may be lost with it (False for an
      empty folder or a save that never finished): decides whether an error
      is raised when nothing else restores.
    moved_to: where it was moved, once it was.
  """

  path: str
  reason: str
  slug: str
  valuable: bool = True
  moved_to: str | None = None

  def line(self) -> str:
    where = f"; moved to {self.moved_to}" if self.moved_to else ""
    return f"{self.path}: {self.reason}{where}"


def _relative_files(step_dir: epath.Path) -> list[str]:
  """'/'-joined paths of every file under `step_dir` except the manifest
  (and a temporary manifest left by a crash)."""
  found = []
  for root, _, files in step_dir.walk():
    rel = str(root)[len(str(step_dir)):].strip("/")
    for name in files:
      if root == step_dir and name.startswith(MANIFEST):
        continue
      if root == step_dir and name == REASON_FILE:
        continue
      found.append(f"{rel}/{name}" if rel else name)
  return sorted(found)


def _digest(path: epath.Path) -> dict[str, Any]:
  sha, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      sha.update(chunk)
      size += len(chunk)
  return {"size": size, "sha256": sha.hexdigest()}


def _digests(step_dir: epath.Path, names: list[str]) -> dict[str, Any]:
  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
    results = pool.map(lambda n: _digest(step_dir / n), names)
    return dict(zip(names, results))


def write_manifest(step_dir: paths.PathLike, step: int | None = None
                   ) -> dict[str, Any]:
  """Hashes every file under `step_dir` and writes its manifest (atomically,
  last). Call it once the save has finished. Returns the manifest."""
  step_dir = paths.as_path(step_dir)
  names = _relative_files(step_dir)
  if not names:
    raise ValueError(f"{step_dir} holds no files; there is nothing to seal.")
  manifest = {
      "format": FORMAT,
      "step": int(step_dir.name) if step is None else step,
      "written": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "files": _digests(step_dir, names),
  }
  paths.write_json(step_dir / MANIFEST, manifest)
  return manifest


def has_manifest(step_dir: paths.PathLike) -> bool:
  return (paths.as_path(step_dir) / MANIFEST).is_file()


def _read_manifest(step_dir: epath.Path) -> tuple[dict | None, str | None]:
  try:
    manifest = json.loads((step_dir / MANIFEST).read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    return None, f"{MANIFEST} is not valid JSON ({e})"
  files = manifest.get("files") if isinstance(manifest, dict) else None
  if not isinstance(files, dict) or not files or not all(
      isinstance(v, dict) and isinstance(v.get("size"), int)
      and isinstance(v.get("sha256"), str) for v in files.values()):
    return None, f"{MANIFEST} has no valid 'files' table"
  return manifest, None


def _size_damage(step_dir: epath.Path, files: dict[str, Any]
                 ) -> Damage | None:
  for name, want in sorted(files.items()):
    path = step_dir / name
    if not path.is_file():
      return Damage(str(step_dir), f"{name} is missing (listed in its "
                    f"{MANIFEST})", "missing-file")
    size = path.stat().length
    if size != want["size"]:
      kind = "truncated" if size < want["size"] else "grown"
      return Damage(str(step_dir), f"{name} has {size} bytes, its {MANIFEST} "
                    f"says {want['size']} ({kind})", kind)
  return None


def check(step_dir: paths.PathLike, *, contents: bool = True
          ) -> Damage | None:
  """None if every file listed in the manifest of `step_dir` is present with
  its size and (if `contents`) its SHA-256; otherwise the first problem.

  Files that are not listed are ignored. A folder without a manifest is
  reported with slug "no-manifest" (the caller tells an interrupted save
  from an unverified one).
  """
  step_dir = paths.as_path(step_dir)
  where = str(step_dir)
  if not step_dir.is_dir():
    return Damage(where, "is a file, not a checkpoint folder", "not-a-folder",
                  valuable=False)
  if not any(True for _ in step_dir.iterdir()):
    return Damage(where, "is an empty folder (a save that never wrote, or "
                  "its files were removed)", "empty", valuable=False)
  if not has_manifest(step_dir):
    return Damage(where, f"has no {MANIFEST}", "no-manifest")
  manifest, problem = _read_manifest(step_dir)
  if problem:
    return Damage(where, problem, "bad-manifest")
  if str(manifest.get("step")) != step_dir.name:
    return Damage(where, f"its {MANIFEST} is for step {manifest.get('step')}, "
                  f"not {step_dir.name} (copied from another folder?)",
                  "wrong-step")
  files = manifest["files"]
  damage = _size_damage(step_dir, files)
  if damage or not contents:
    return damage
  digests = _digests(step_dir, sorted(files))
  for name in sorted(files):
    if digests[name]["sha256"] != files[name]["sha256"]:
      return Damage(where, f"{name} differs from its {MANIFEST} (same size, "
                    "other SHA-256: altered on disk)", "altered")
  return None


def move_aside(damage: Damage, damaged_dir: paths.PathLike) -> Damage:
  """Renames the damaged folder (or file) to
  `damaged_dir/<name>-<slug>-<UTC time>`, writes the reason into it, and
  returns `damage` with `moved_to` set. Nothing is deleted."""
  source = paths.as_path(damage.path)
  damaged_dir = paths.as_path(damaged_dir)
  damaged_dir.mkdir(parents=True, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y%m%dT%H%M%SZ")
  base = f"{source.name}-{damage.slug}-{stamp}"
  target, n = damaged_dir / base, 1
  while target.exists():
    n += 1
    target = damaged_dir / f"{base}-{n}"
  source.rename(target)
  moved = dataclasses.replace(damage, moved_to=str(target))
  if target.is_dir():
    (target / REASON_FILE).write_text(moved.line() + "\n")
  return moved
