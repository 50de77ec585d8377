"""Side-by-side benchmarks against peer implementations. Run all: ``python -m benchmarks``."""
