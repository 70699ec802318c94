"""tritonclient's Open Inference Protocol client, unchanged, in the same process as our servers.

tritonclient (PyPI) ships the official generated `inference` stubs (Triton's
grpc_service.proto, a superset of KServe's grpc_predict_v2.proto) and the client that
KServe and Triton users call. Our servers register their own stubs of the same proto
package, and protobuf's default descriptor pool refuses one symbol defined by two files,
so tritonclient's generated modules are imported while the default pool is a private
one. Nothing else changes: requests are built, serialized and sent by tritonclient's own
code and the official messages, exactly as in a client process of its own.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType, SimpleNamespace

from google.protobuf import descriptor_pool


@functools.cache
def official() -> SimpleNamespace:
    """tritonclient's modules: grpc, aio (the asyncio client), service_pb2, service_pb2_grpc, utils."""
    importlib.import_module("google.protobuf.json_format")  # not a descriptor; keep it out of the swap
    private = descriptor_pool.DescriptorPool()
    default = descriptor_pool.Default
    descriptor_pool.Default = lambda: private  # type: ignore[assignment]
    try:
        modules: dict[str, ModuleType] = {
            "grpc": importlib.import_module("tritonclient.grpc"),
            "aio": importlib.import_module("tritonclient.grpc.aio"),
            "service_pb2": importlib.import_module("tritonclient.grpc.service_pb2"),
            "service_pb2_grpc": importlib.import_module("tritonclient.grpc.service_pb2_grpc"),
            "utils": importlib.import_module("tritonclient.utils"),
        }
    finally:
        descriptor_pool.Default = default  # type: ignore[assignment]
    assert modules["service_pb2"].DESCRIPTOR.pool is private
    return SimpleNamespace(pool=private, **modules)
