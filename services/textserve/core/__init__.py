"""Transport-free core: errors, batcher, cache and coalescing, metrics, logging, validation, config parts.

Nothing here imports grpc, a web framework, generated stubs or another textserve package
(the `core-transport-free` import contract); see docs/architecture.md.
"""
