"""Entry point of `python -m tpjax.benchmark` (see tpjax/inference/benchmark.py)."""

from tpjax.inference import benchmark

if __name__ == "__main__":
  benchmark.run_main()
