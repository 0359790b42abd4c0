"""Test-wide JAX settings: eight fake CPU devices, fast compiles, strict ranks.

These must run before JAX initialises its backend, which is why they live in
conftest rather than in each test module.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# What the tests and the processes they start put in the temporary folder
# (the CLI's traceback files of the bad-input tests, TensorFlow's autograph
# modules, tfds' temporary folders) goes into one folder per process, removed
# at its exit; before, every run of the suite left hundreds of files in /tmp.
_TMP_DIR = tempfile.mkdtemp(prefix="ipo_md_tests_")
atexit.register(shutil.rmtree, _TMP_DIR, ignore_errors=True)
os.environ["TMPDIR"] = _TMP_DIR
tempfile.tempdir = _TMP_DIR

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
# CPU compile time dominates the tiny models of the test suite.
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests that build several Trainers compile identical programs; a per-session
# compilation cache compiles each once (one per process, removed at its exit).
_CACHE_DIR = tempfile.mkdtemp(prefix="ipo_md_test_jax_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Real data samples, used by tests that skip themselves when it is absent.
SHARED_DATA = pathlib.Path(
    os.environ.get(
        "IPO_MD_SHARED_DATA",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data",
    )
)
