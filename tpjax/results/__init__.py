"""Results: reading benchmarks/results/*.json and the Pareto front (files), curve files
from finished runs against their task's one baseline (curves), the pictures (plots)
and the generated tables of README and docs/ (tables)."""
