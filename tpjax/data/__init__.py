"""Data: GLUE (TFDS and TSV) and its metrics, SQuAD documents, tokenization and bucketing."""
