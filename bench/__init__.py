"""ChancePay benchmarks (run from the repository root, e.g. ``python -m bench.raw_limits``)."""
