"""Pruning: token scores, FLOPs and one module per method (LTP, ToP, SDTP, top-k) as stateless array functions."""
