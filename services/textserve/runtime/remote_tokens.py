"""A TokenSource that tokenizes through the tokenizer service over gRPC (`tokenizer_address`).

Gives the same ids as LocalTokenSource: the tokenizer service cuts overlong texts with the
same rule (keep the final special token) at the length this source asks for, and reports
each text's untruncated length. The model service binds the source to its model name and
length cut once its model is loaded (`bind`). Calls go through the upstream-call helper of
textserve/client/: they never outlive the request's deadline, never wait for a connection,
and keep the tokenizer's error kind (unreachable -> UNAVAILABLE at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from textserve.client.channels import open_channel
from textserve.client.upstream import unary_call
from textserve.core.config import ClientConfig
from textserve.core.errors import InvalidInput, NotReady
from textserve.runtime.tokenization import Encoded
from textserve.v1 import tokenizer_pb2, tokenizer_pb2_grpc


class RemoteTokenSource:
    """Token ids from a tokenizer service for one model."""

    def __init__(
        self,
        address: str,
        client: ClientConfig | None = None,
        *,
        model: str = "",
        max_length: int = 0,
        token: str | None = None,
        service: str = "embedding",
    ) -> None:
        self.address = address
        self.model = model
        self.max_length = max_length
        self._client = client or ClientConfig()
        self._token = token
        self._service = service
        self._channel: grpc.aio.Channel | None = None
        self._stub: tokenizer_pb2_grpc.TokenizerServiceStub | None = None

    def bind(self, model: str, max_length: int) -> None:
        """Sets the model to ask for and the cut (called by the model service once loaded)."""
        self.model = model
        self.max_length = max_length

    def _get_stub(self) -> tokenizer_pb2_grpc.TokenizerServiceStub:
        if self._stub is None:
            self._channel = open_channel(self.address, self._client, token=self._token)
            self._stub = tokenizer_pb2_grpc.TokenizerServiceStub(self._channel)
        return self._stub

    @property
    def upstream(self) -> str:
        """How errors name the tokenizer service."""
        return f"tokenizer service at {self.address}"

    async def encode(self, texts: Sequence[str], deadline: float | None) -> list[Encoded]:
        """Ids of each text with special tokens, cut at max_length."""
        if self.max_length <= 0:
            raise NotReady(f"{self.upstream}: token source not bound to a model yet")
        request = tokenizer_pb2.TokenizeRequest(
            model=self.model, texts=list(texts), add_special_tokens=True, max_tokens=self.max_length
        )
        try:
            response = await unary_call(
                self._get_stub().Tokenize,
                request,
                service=self._service,
                method="TokenizerService/Tokenize",
                deadline=deadline,
                default_timeout_s=self._client.timeout_s,
                upstream=self.upstream,
            )
        except InvalidInput as error:
            if error.field == "model":
                # Our configuration, not the caller's request, is wrong: the tokenizer lacks the model.
                raise NotReady(
                    f"{self.upstream} does not serve model {self.model!r}: {error.message}"
                ) from error
            raise
        if len(response.encodings) != len(texts):
            raise NotReady(
                f"{self.upstream} answered {len(response.encodings)} encodings for {len(texts)} texts"
            )
        return [
            Encoded(list(item.ids), item.truncated, max(item.untruncated_tokens, len(item.ids)))
            for item in response.encodings
        ]

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
            self._stub = None
