"""JAX runtime settings shared by the commands that train.

A run compiles the same programs again and again: each stage of a run (and
each seed of a tournament) builds its own Trainer, and a resumed run starts
in a new process. JAX's persistent compilation cache keeps compiled programs
on disk, keyed by the program, so a stage whose shapes repeat an earlier
one's loads its executables instead of compiling them.

On the CPU a step's buffers are allocated by the thread that runs the step;
`configure_cpu_dispatch` makes that the calling (main) thread, so that
`ipo_md.host_memory.reuse_freed_memory` can keep them in glibc's main heap
from one step to the next.
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


def configure_cpu_dispatch() -> bool:
  """Runs single-device CPU programs on the calling thread (JAX's
  `jax_cpu_enable_async_dispatch=False`) unless IPO_MD_REUSE_HOST_BUFFERS is
  "0". Returns whether it did.

  With JAX's default asynchronous dispatch, XLA:CPU runs each call on a
  worker thread, where glibc maps each large buffer afresh and unmaps it
  when it is freed, whatever mallopt says (mmap and trimming turned off
  left 594,000 of about 600,000 page faults per T5-small update). Run on
  the main thread, the buffers come from the main heap, which
  `host_memory.reuse_freed_memory` keeps. Python then waits for each call to
  finish instead of queueing the next one; on a CPU the two cores are busy
  with the step either way. Programs over several devices keep their own
  threads.
  Must run before JAX creates its CPU client (the first computation); later
  it has no effect. Accelerator backends are not affected.
  """
  from ipo_md import host_memory  # pylint: disable=g-import-not-at-top

  if not host_memory.reuse_enabled():
    return False
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  if getattr(xla_bridge, "_backends", None):
    return False  # Too late: the CPU client exists (and keeps its mode).
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


def configure_cpu_runtime() -> None:
  """For a script that runs JAX programs itself (the benchmarks): the CPU
  runtime `ipo-md train` and the Trainer set up, in one call.
  `configure_cpu_dispatch`, then, on the CPU backend (which this creates),
  `host_memory.reuse_freed_memory`. Call it before any JAX computation."""
  from ipo_md import host_memory  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  configure_cpu_dispatch()
  if jax.default_backend() == "cpu":
    host_memory.reuse_freed_memory()
