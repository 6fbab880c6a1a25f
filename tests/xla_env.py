"""XLA flags for the suite and the processes it launches (imports nothing heavy, so
conftest can use it before jax is imported).

Most of the suite's time is XLA compiling many small programs whose run time is
negligible, so they are compiled without LLVM's optimisation passes (what
`jax_disable_most_optimizations` sets). Code generation changes, not the programs'
semantics, and every comparison in the suite runs both sides under the same flags,
subprocesses included.
"""

FAST_COMPILE = ("--xla_backend_optimization_level=0"
                " --xla_llvm_disable_expensive_passes=true")


def flags(devices: int = 1) -> str:
  """XLA_FLAGS for a process with `devices` simulated CPU devices."""
  if devices == 1:
    return FAST_COMPILE
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
