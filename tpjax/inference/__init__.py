"""Inference: loading trained runs, the bucketed compaction engine, prediction, decoder generation, peers and the benchmark harness."""
