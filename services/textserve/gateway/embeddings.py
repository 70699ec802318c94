"""POST /v1/embeddings: OpenAI EmbeddingRequest -> EmbeddingService.Embed -> OpenAI response.

Texts go in `texts`, token id lists in `token_inputs` (used as given). Vectors come back as
JSON floats or, with encoding_format=base64, as base64 of little-endian float32 bytes (what
the openai client asks for by default). `normalize` (default true, as OpenAI's vectors are
unit length) is passed to the service; the service's field names in errors (`texts[3]`)
are renamed to the client's (`input[3]`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import numpy as np

from textserve.gateway.backends import Backends
from textserve.gateway.calls import CallOptions
from textserve.gateway.errors import Renamer, invalid
from textserve.gateway.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from textserve.v1 import common_pb2, embedding_pb2

_TOKEN_FIELD = re.compile(r"^token_inputs(\[\d+\])?(?:\.ids(\[\d+\]))?")
_TEXT_FIELD = re.compile(r"^texts")


def _renamer(single_text: bool) -> Renamer:
    def rename(field: str) -> str:
        if single_text and re.match(r"^texts\[0\]", field):
            return "input" + field[len("texts[0]") :]
        field = _TOKEN_FIELD.sub(lambda m: "input" + (m.group(1) or "") + (m.group(2) or ""), field, count=1)
        return _TEXT_FIELD.sub("input", field, count=1)

    return rename


def embed_request(request: EmbeddingRequest) -> embedding_pb2.EmbedRequest:
    """The EmbedRequest of an OpenAI request (texts, or token id lists)."""
    data = request.input
    message = embedding_pb2.EmbedRequest(normalize=request.normalize)
    if isinstance(data, str):
        message.texts.append(data)
    elif data and all(isinstance(item, int) for item in data):
        message.token_inputs.append(common_pb2.TokenIds(ids=_ids(data, "input")))  # type: ignore[arg-type]
    elif data and all(isinstance(item, list) for item in data):
        for index, ids in enumerate(data):
            message.token_inputs.append(common_pb2.TokenIds(ids=_ids(ids, f"input[{index}]")))  # type: ignore[arg-type]
    else:
        message.texts.extend(data)  # type: ignore[arg-type]
    return message


def _ids(ids: Sequence[int], field: str) -> list[int]:
    for position, token in enumerate(ids):
        if not 0 <= token < 1 << 32:
            raise invalid(f"{field}[{position}]", f"token id {token} is not a valid token id")
    return list(ids)


def _encode(values: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")
    return list(values)


class EmbeddingServing:
    """Serves /v1/embeddings through the embedding service."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def create(self, request: EmbeddingRequest, options: CallOptions) -> EmbeddingResponse:
        """Embeds the request's input; raises GatewayError (400/404/429/503/504/...)."""
        model = await self.backends.check_model("embedding", request.model, options)
        message = embed_request(request)
        response = await self.backends.unary(
            "embedding", "Embed", message, options, rename=_renamer(isinstance(request.input, str))
        )
        dimensions = len(response.embeddings[0].values) if response.embeddings else 0
        if request.dimensions is not None and request.dimensions != dimensions:
            raise invalid(
                "dimensions", f"{model} returns {dimensions} dimensions; shortening is not supported"
            )
        data = [
            EmbeddingData.model_construct(
                object="embedding", index=index, embedding=_encode(item.values, request.encoding_format)
            )
            for index, item in enumerate(response.embeddings)
        ]
        tokens = int(response.usage.input_tokens)
        return EmbeddingResponse.model_construct(
            object="list",
            data=data,
            model=response.model.name or model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
