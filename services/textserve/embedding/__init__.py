"""Embedding service: texts -> dense vectors over gRPC, with dynamic batching and caching."""
