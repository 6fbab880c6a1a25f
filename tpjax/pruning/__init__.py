"""Pruning: token scores, FLOPs, the method interface and registry, one module per method
(LTP, ToP, SDTP, top-k) as stateless array functions, and the methods' named variants
(variants, ltp_variant)."""
