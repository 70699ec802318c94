"""Service-independent core: config, errors, batcher, cache, metrics, server bootstrap."""
