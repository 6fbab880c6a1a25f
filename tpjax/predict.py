"""Entry point of `python -m tpjax.predict` (see tpjax/inference/predict.py)."""

from tpjax.inference import predict

if __name__ == "__main__":
  predict.run_main()
