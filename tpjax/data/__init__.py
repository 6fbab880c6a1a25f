"""GLUE data sources, tokenization and bucketing."""
