"""JAX runtime settings shared by the commands that train.

A run compiles the same programs again and again: each stage of a run (and
each seed of a tournament) builds its own Trainer, and a resumed run starts
in a new process. JAX's persistent compilation cache keeps compiled programs
on disk, keyed by the program, so a stage whose shapes repeat an earlier
one's loads its executables instead of compiling them.
"""

import os

# Where compiled programs are kept; IPO_MD_COMPILATION_CACHE overrides it,
# "0" or "" turns the cache off.
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ipo_md",
                             "jax_compilation_cache")


def configure_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache (unless it is already set
  or IPO_MD_COMPILATION_CACHE is "0"); returns its folder or None."""
  import jax  # pylint: disable=g-import-not-at-top

  choice = os.environ.get("IPO_MD_COMPILATION_CACHE", DEFAULT_CACHE)
  if choice in ("", "0"):
    return None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  try:
    os.makedirs(choice, exist_ok=True)
  except OSError:
    return None  # A read-only home: run without the cache.
  jax.config.update("jax_compilation_cache_dir", choice)
  # Cache everything that takes a noticeable time to compile.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return choice
