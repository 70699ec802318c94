"""Model quality in production: prediction statistics, drift detection, feedback, A/B verdicts.

Transport-free (no grpc, no service package): services call into it from their logic.
- `metrics`: the textserve_* quality metrics and their writers.
- `drift`: two-sample detectors (MMD, projection KS, label-mix chi-square, confidence KS).
- `reference`: reference samples (build, save, load).
- `monitor`: `DriftMonitor`, sliding windows per (model, version) tested in a worker thread.
- `feedback`: the bounded prediction store (memory, Redis) and live accuracy from feedback.
- `payload_log`: the opt-in, sampled payload log (JSONL file or Redis stream).
- `ab`: two-proportion z-test of two versions' live accuracy from Prometheus data.
- `config`: the `quality` config section.
"""
