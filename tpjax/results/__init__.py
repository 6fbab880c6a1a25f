"""Results: reading benchmarks/results/*.json and the Pareto front (files), the pictures
(plots) and README's generated tables (tables)."""
