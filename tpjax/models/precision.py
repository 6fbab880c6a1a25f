"""Mixed precision: every matmul takes operands in the compute dtype and accumulates in
float32; everything else stays float32.

Why this form: on XLA:CPU with a matrix engine (AMX-BF16, AVX512-BF16) a dot with
bfloat16 operands and a float32 result runs on that engine, about 3x a float32 dot,
while a dot with a bfloat16 result is *slower* than float32 (docs/precision.md has the
measurements). GPU tensor cores and TPU MXUs take the same form. So only the operands of
each dot are cast; the residual stream, LayerNorm/RMSNorm statistics, softmax, losses,
attention-received sums, thresholds, gates and predictors' decisions stay float32, and
parameters and optimiser state stay float32 (updates are applied in float32).

No loss scaling: bfloat16 has float32's 8-bit exponent, so small gradients do not
underflow as they do in float16 (whose 5-bit exponent is why float16 training scales the
loss); and the gradients themselves are float32 here, only the dot operands are rounded.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


def check(dtype: str) -> str:
  """`dtype` if it is a supported compute dtype, else ValueError naming the choices."""
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute dtype {dtype!r} is not supported; choose one of "
                     f"{', '.join(COMPUTE_DTYPES)}.")
  return dtype


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_engine() -> bool:
  """True on an x86 CPU with AMX-BF16 or AVX512-BF16 (Linux's /proc/cpuinfo flags)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          return bool(flags & {"amx_bf16", "avx512_bf16"})
  except OSError:
    pass
  return False


def default_dtype(backend: Optional[str] = None) -> str:
  """'bfloat16' where the hardware has a bf16 matrix engine (GPU, TPU, AMX or
  AVX512-BF16 CPU), else 'float32'."""
  backend = backend or jax.default_backend()
  if backend in ("gpu", "cuda", "rocm", "tpu"):
    return "bfloat16"
  return "bfloat16" if _cpu_has_bf16_engine() else "float32"


def resolve(dtype: Optional[str]) -> str:
  """A config's compute dtype: 'auto' (or None) becomes `default_dtype()`."""
  if dtype in (None, "auto"):
    return default_dtype()
  return check(dtype)


def with_dtype(model, dtype: Optional[str]):
  """A copy of an encoder or decoder Flax module computing in `dtype` ('auto' picks
  `default_dtype()`); parameters are shared, not converted."""
  dtype = resolve(dtype)
  if model.config.compute_dtype == dtype:
    return model
  return model.clone(config=dataclasses.replace(model.config, compute_dtype=dtype))


def _cast(dtype: str, *xs: jax.Array) -> tuple:
  if dtype == "float32":
    return xs
  return tuple(x.astype(dtype) for x in xs)


def _mixed_matmul(a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
  a, b = _cast(dtype, a, b)
  return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _low_matmul(a, b, dtype, a_dtype, b_dtype):
  del a_dtype, b_dtype
  return _mixed_matmul(a, b, dtype)


def _low_matmul_fwd(a, b, dtype, a_dtype, b_dtype):
  del a_dtype, b_dtype
  a, b = _cast(dtype, a, b)
  return jnp.matmul(a, b, preferred_element_type=jnp.float32), (a, b)


def _low_matmul_bwd(dtype, a_dtype, b_dtype, residuals, grad):
  # JAX's own transpose of a mixed dot upcasts its operands to float32, which would
  # leave the backward pass (two thirds of a training step's matmuls) off the matrix
  # engine; these run in the fast form, as torch.autocast's backward does.
  a, b = residuals
  (grad,) = _cast(dtype, grad)
  swap = lambda x: jnp.swapaxes(x, -1, -2)
  da = _mixed_matmul(grad, swap(b), dtype)
  if b.ndim == 2:  # a dense layer, a [..., k] @ b [k, n]: sum over all leading dims
    a, grad = a.reshape(-1, a.shape[-1]), grad.reshape(-1, grad.shape[-1])
  db = _mixed_matmul(swap(a), grad, dtype)
  return da.astype(a_dtype), db.astype(b_dtype)


_low_matmul.defvjp(_low_matmul_fwd, _low_matmul_bwd)


def matmul(a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
  """`a @ b` with operands in `dtype`, accumulated in float32 (forward and backward).

  Args:
    a: [..., m, k] (any leading dims when `b` is 2-D).
    b: [k, n], or [..., k, n] with the same leading dims as `a`.
    dtype: compute dtype.
  Returns:
    <float32>[..., m, n].
  """
  if dtype == "float32":
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)
  if b.ndim != 2 and a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f"matmul of {a.shape} and {b.shape}: leading dims must match.")
  return _low_matmul(a, b, dtype, a.dtype, b.dtype)


def dot_general(dtype: str) -> Callable:
  """A `lax.dot_general` for `nn.Dense(dot_general=...)`: `matmul` in `dtype`."""
  def fn(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del preferred_element_type
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or precision is not None:
      raise ValueError(f"Only a plain dense contraction is supported, not "
                       f"{dimension_numbers} with precision {precision}.")
    return matmul(lhs, rhs, dtype)
  return fn


def dense_options(dtype: str) -> dict:
  """`nn.Dense` keyword arguments for this module's dot: operands cast to `dtype`,
  float32 result, and no promotion of a kernel stored in `dtype` back to float32."""
  return {"dot_general": dot_general(dtype),
          "promote_dtype": lambda *xs, dtype=None: xs}


def cast_kernels(params, dtype: str, names: tuple = ("kernel",)):
  """`params` with every leaf named in `names` (dense kernels; add "embedding" for a
  decoder whose LM head is tied to it) in `dtype`, for inference: a weight stored in the
  compute dtype is read at half the bytes and never cast per call. Biases and norms
  stay float32."""
  if dtype == "float32":
    return params
  def cast(path, x):
    return x.astype(dtype) if getattr(path[-1], "key", None) in names else x
  return jax.tree_util.tree_map_with_path(cast, params)
