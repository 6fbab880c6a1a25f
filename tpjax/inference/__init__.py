"""Inference: loading trained runs, the bucketed compaction engine, CLIs."""
