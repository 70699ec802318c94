"""gRPC transport: servers, interceptors, the RPC boundary, registration, channels, TLS, health."""
