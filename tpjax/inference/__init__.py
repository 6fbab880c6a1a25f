"""Inference: loading trained runs, the bucketed compaction engine, prediction, decoder generation, peers, the benchmark harness and the evaluation of decoder prefill pruners (sdtp_eval)."""
