"""ipo_md.host_memory: freed heap memory goes back to the operating system,
and a precompiled function is not compiled again by its call."""

import ctypes.util
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipo_md import host_memory

_GLIBC = (sys.platform.startswith("linux")
          and host_memory._malloc_trim() is not None)


@pytest.mark.skipif(not _GLIBC, reason="malloc_trim is glibc's (Linux)")
def test_release_returns_freed_heap_pages_to_the_os():
  # 160 MB in 64 KiB blocks (below glibc's mmap threshold, so on the heap),
  # then all freed but one block above them: glibc keeps the freed memory
  # (nothing free at the heap's top to trim), until release().
  script = textwrap.dedent("""
      from ipo_md import host_memory

      def rss_mb():
        with open("/proc/self/status") as f:
          for line in f:
            if line.startswith("VmRSS:"):
              return int(line.split()[1]) / 1024

      blocks = [bytearray(64 * 1024) for _ in range(2560)]
      for b in blocks:
        b[::4096] = b"x" * len(b[::4096])  # Touch every page.
      top = bytearray(64 * 1024)
      del blocks
      before = rss_mb()
      assert host_memory.release()
      print(before, rss_mb())
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, check=True).stdout.split()
  before, after = float(out[0]), float(out[1])
  assert before - after > 100, (before, after)


def test_precompiled_function_is_not_compiled_again(caplog):
  f = jax.jit(lambda x: jnp.tanh(x) @ x.T + 1.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    seconds = host_memory.precompile(f, x)
    compiled = [r for r in caplog.records
                if "Finished XLA compilation" in r.getMessage()]
    assert len(compiled) == 1, [r.getMessage() for r in caplog.records]
    y = f(x)
    again = [r for r in caplog.records
             if "Finished XLA compilation" in r.getMessage()]
  assert len(again) == 1, [r.getMessage() for r in again]
  assert seconds > 0
  np.testing.assert_allclose(y, np.tanh(x) @ np.asarray(x).T + 1.0,
                             rtol=1e-5, atol=1e-5)


def _clear_caches():
  for fn in (host_memory._malloc_trim, host_memory._mallopt,
             host_memory.reuse_freed_memory):
    fn.cache_clear()


def test_release_and_reuse_are_harmless_without_glibc(monkeypatch):
  _clear_caches()
  monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libnone.so")
  try:
    assert host_memory.release() is False
    assert host_memory.reuse_freed_memory() is False
  finally:
    _clear_caches()


_FAULTS_SCRIPT = textwrap.dedent("""
    import resource, sys
    from ipo_md.cli import runtime
    from ipo_md import host_memory
    dispatch = runtime.configure_cpu_dispatch()
    import jax, jax.numpy as jnp
    reuse = host_memory.reuse_freed_memory()
    # A program with a 64 MiB temporary (over glibc's largest mmap
    # threshold, 32 MiB) and a scalar result.
    f = jax.jit(lambda x: jnp.sum(jnp.tanh(x * 2.0)[::-1] * x))
    x = jnp.ones((16 * 2 ** 20,), jnp.float32)
    f(x).block_until_ready()
    faults = []
    for _ in range(5):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      y = f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    - before)
      del y
    print(dispatch, reuse, min(faults))
""")


def _faults(env_value: str) -> tuple[str, str, int]:
  env = dict(os.environ, IPO_MD_REUSE_HOST_BUFFERS=env_value,
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # One CPU device, as a plain run has.
  out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT],
                       capture_output=True, text=True, check=True,
                       env=env).stdout.split()
  return out[0], out[1], int(out[2])


@pytest.mark.skipif(not _GLIBC, reason="mallopt is glibc's (Linux)")
def test_a_cpu_programs_buffers_are_reused_from_call_to_call():
  # Each call of f writes a 64 MiB temporary (16,384 pages). With the
  # runtime as `ipo-md train` sets it up, later calls reuse the freed
  # buffer; with IPO_MD_REUSE_HOST_BUFFERS=0 every call faults it in again.
  dispatch, reuse, kept = _faults("1")
  assert (dispatch, reuse) == ("True", "True")
  off_dispatch, off_reuse, fresh = _faults("0")
  assert (off_dispatch, off_reuse) == ("False", "False")
  assert fresh > 16_000, fresh
  assert kept < fresh / 10, (kept, fresh)


def test_cpu_dispatch_is_not_changed_once_jax_has_a_backend():
  from ipo_md.cli import runtime  # pylint: disable=g-import-not-at-top

  jnp.ones(()).block_until_ready()  # This process's backends exist.
  assert runtime.configure_cpu_dispatch() is False

