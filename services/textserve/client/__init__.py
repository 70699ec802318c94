"""textserve's Python client, and the call layer towards textserve services.

The public client (usable without the server's model stack: it imports grpc, the v1 stubs,
numpy and the transport-free error kinds, never the runtime, torch, onnxruntime,
transformers, fastapi or a service package; an import contract checks it):

```python
from textserve.client import TextserveClient

with TextserveClient(embedding="127.0.0.1:50052") as client:
    vector = client.embed("hello world")                     # np.ndarray, merged with others
```

`AsyncTextserveClient` (client/api.py) is the asyncio client, `TextserveClient`
(client/sync.py) the blocking one; `ClientOptions` (client/policy.py) holds deadline, TLS,
token, retry and merging options; results are the dataclasses of client/results.py;
failures raise the error kinds re-exported here.

Services use the call layer: `channels.open_channel` (TLS, bearer token, inherited
deadline), `tokens` (where the client token comes from) and `upstream` (time left, metadata,
error kinds with their structured details, upstream metrics).
"""

from textserve.client.api import AsyncTextserveClient
from textserve.client.policy import ClientOptions
from textserve.client.results import (
    Classification,
    Classifications,
    Embeddings,
    Encoding,
    Entity,
    EntityExtraction,
    Generation,
    GenerationChunk,
    ModelInfo,
    Timing,
    Tokenization,
    Usage,
)
from textserve.client.sync import TextserveClient
from textserve.core.config import TlsConfig
from textserve.core.errors import (
    BackendFailure,
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    TextserveError,
    Unauthenticated,
)

__all__ = [
    "AsyncTextserveClient",
    "BackendFailure",
    "Cancelled",
    "Classification",
    "Classifications",
    "ClientOptions",
    "DeadlineExceeded",
    "Embeddings",
    "Encoding",
    "Entity",
    "EntityExtraction",
    "Generation",
    "GenerationChunk",
    "InvalidInput",
    "ModelInfo",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PermissionDenied",
    "TextserveClient",
    "TextserveError",
    "Timing",
    "TlsConfig",
    "Tokenization",
    "Unauthenticated",
    "Usage",
]
