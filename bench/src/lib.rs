//! Placeholder: the load generator and micro-benchmarks arrive with the benchmark issue.
