"""textserve: gRPC model-serving microservices for text models."""

__version__ = "0.1.0"
