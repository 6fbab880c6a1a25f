"""Test setup, before jax is imported anywhere: 8 simulated CPU devices and a
persistent compilation cache.

The cache lives in `.cache/jax` at the repository root (ignored by git), so a test
that compiles a program an earlier test, session or CLI subprocess compiled loads it
instead. It is passed on through the environment: JAX reads these variables when it
is imported, here and in every subprocess a test launches. Set
JAX_COMPILATION_CACHE_DIR yourself to use another folder.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"))
# JAX's default (1 s) skips most of the tiny configs' programs, which still add up.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
