"""What tests, the local run's tools and the benchmarks share (never shipped in the layer)."""
