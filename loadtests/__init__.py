"""Benchmarks and load tests (run by `make bench` / `make loadtest`)."""
