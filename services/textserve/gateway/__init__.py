"""OpenAI-compatible HTTP gateway: /v1/embeddings, /v1/completions, /v1/chat/completions over gRPC.

Owns no model. Each endpoint is split as in vLLM's entrypoints: `routes.py` (HTTP in/out),
`protocol.py` (OpenAI wire types), and one serving module per endpoint (`embeddings.py`,
`completions.py`, `chat.py`) that calls the gRPC services through `backends.py`. Every
failure becomes an OpenAI error body in one place (`errors.py`).
"""
