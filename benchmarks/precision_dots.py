"""One encoder-sized dot in each precision form, and the dense MiniLM-L6 forward, per XLA
flag setting: does this machine's XLA:CPU have a fast bf16 path?

Each flag setting runs in its own process (XLA reads its flags once); within it the
forms alternate per round on the same arrays. Reports median ms and the per-round
ratio float32 / form, and records the CPU's model and matrix-engine flags and the load
average, so a result from a machine without AMX/AVX512-BF16 says so.

  python benchmarks/precision_dots.py --rounds=10 \
      --out=benchmarks/results/precision_dots.json
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_FLAG_SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}

_CHILD = r"""
import json, sys, time, dataclasses
import jax, jax.numpy as jnp, numpy as np
from tpjax.models import pretrained, precision
rounds, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = jnp.asarray(rng.standard_normal((800, 384)), jnp.float32)
b = jnp.asarray(rng.standard_normal((384, 1536)), jnp.float32)
b16 = b.astype(jnp.bfloat16)
forms = {
  "float32": (jax.jit(lambda a, b: a @ b), b),
  "bf16 operands, f32 result": (jax.jit(lambda a, b: jnp.matmul(
      a.astype(jnp.bfloat16), b, preferred_element_type=jnp.float32)), b16),
  "bf16 operands, bf16 result": (jax.jit(lambda a, b: a.astype(jnp.bfloat16) @ b), b16),
}
model, params, tok = pretrained.load_pretrained("minilm-l6", num_labels=2)
ids = jnp.asarray(rng.integers(1000, 20000, (32, 32)), jnp.int32)
mask = jnp.ones_like(ids)
for dtype in ("float32", "bfloat16"):
  m = precision.with_dtype(model, dtype)
  p = precision.cast_kernels(params, dtype)
  f = jax.jit(lambda p, ids, mask, m=m: m.apply({"params": p}, ids, mask).logits)
  forms[f"MiniLM-L6 forward 32x32, {dtype}"] = (lambda x, p, f=f: f(p, ids, mask), p)
times = {name: [] for name in forms}
for name, (fn, w) in forms.items():
  jax.block_until_ready(fn(a, w))
for _ in range(rounds):
  for name, (fn, w) in forms.items():
    start = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(fn(a, w))
    times[name].append((time.perf_counter() - start) / repeats * 1e3)
print(json.dumps({"times_ms": times, "jax": jax.__version__}))
"""


def cpu_info() -> dict:
  info = {"machine": platform.machine(), "model": "", "matrix_flags": []}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name") and not info["model"]:
          info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          info["matrix_flags"] = sorted(
              {x for x in line.split(":", 1)[1].split()
               if x.startswith(("amx", "avx512_bf16", "avx512_vnni", "avx_vnni"))})
          break
  except OSError:
    pass
  return info


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--settings", default=",".join(_FLAG_SETTINGS))
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(),
            "cores": os.cpu_count(), "rounds": args.rounds,
            "load_average_before": os.getloadavg(), "settings": {}}
  for setting in args.settings.split(","):
    env = dict(os.environ, XLA_FLAGS=_FLAG_SETTINGS[setting])
    out = subprocess.run([sys.executable, "-c", _CHILD, str(args.rounds),
                          str(args.repeats)], env=env, check=True, capture_output=True,
                         text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    times = data["times_ms"]
    base = {"dot": times["float32"],
            "forward": times["MiniLM-L6 forward 32x32, float32"]}
    summary = {}
    for name, values in times.items():
      ref = base["forward"] if name.startswith("MiniLM") else base["dot"]
      ratios = [r / v for r, v in zip(ref, values)]
      summary[name] = {"median_ms": statistics.median(values),
                       "speed_vs_float32_median": statistics.median(ratios),
                       "speed_vs_float32_range": [min(ratios), max(ratios)]}
      print(f"{setting:8s} {name:40s} {statistics.median(values):8.2f} ms  "
            f"x{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
    result["settings"][setting] = {"xla_flags": _FLAG_SETTINGS[setting],
                                   "forms": summary, "times_ms": times}
    result["jax"] = data["jax"]
  result["load_average_after"] = os.getloadavg()
  result["command"] = "python " + " ".join(sys.argv)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
