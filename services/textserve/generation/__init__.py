"""Generation service: text from a causal LM over gRPC, with continuous batching and token streaming."""
