"""Token pruning methods as stateless array functions."""
