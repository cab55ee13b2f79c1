"""Benchmarks (not tests): `make bench`; figures go to docs/BENCHMARKS.md."""
