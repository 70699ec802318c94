"""The public Python client of textserve: `AsyncTextserveClient` (asyncio) and its typed methods.

```python
async with AsyncTextserveClient(embedding="127.0.0.1:50052") as client:
    vector = await client.embed("hello world")              # np.ndarray (384,), merged with others
    batch = await client.embed_batch(["a", "b"], normalize=True)   # Embeddings (one call)
```

One long-lived channel per service address (opened on first use; see client/policy.py for
round_robin, keepalive, TLS, token, deadlines and retries). `embed` and `classify` take one
text and are merged with the concurrent calls of this client into one RPC
(client/merging.py); the `*_batch` methods send the texts they are given as one call.
Failures raise the error kinds of `textserve.core.errors` (re-exported by textserve.client):
InvalidInput (with `field`), Overloaded, DeadlineExceeded, NotReady, Unauthenticated, ...
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Hashable, Sequence
from types import TracebackType
from typing import Any, cast

import grpc
import numpy as np

from textserve.client.merging import Merger
from textserve.client.policy import CallPolicy, ClientOptions, deadline_of, open_public_channel
from textserve.client.results import (
    Classification,
    Classifications,
    Embeddings,
    EntityExtraction,
    Generation,
    GenerationChunk,
    Tokenization,
    chunk_of,
    classification_of,
    classifications_of,
    embeddings_of,
    entities_of,
    generation_of,
    tokenization_of,
    vector_of,
)
from textserve.core.errors import DeadlineExceeded
from textserve.transport.status import from_rpc_error
from textserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)

DEFAULT_ADDRESSES = {
    "tokenizer": "127.0.0.1:50051",
    "embedding": "127.0.0.1:50052",
    "classifier": "127.0.0.1:50053",
    "generation": "127.0.0.1:50054",
}
"""Where `textserve serve all` listens by default."""


def _truncation(truncate: bool | None) -> common_pb2.TruncationPolicy:
    """True: cut overlong texts; False: reject them (INVALID_ARGUMENT); None: the server's default."""
    if truncate is None:
        return common_pb2.TRUNCATION_POLICY_UNSPECIFIED
    return common_pb2.TRUNCATION_POLICY_TRUNCATE if truncate else common_pb2.TRUNCATION_POLICY_REJECT


def _labels(labels: Sequence[str]) -> list[classifier_pb2.LabelSpec]:
    return [classifier_pb2.LabelSpec(name=name) for name in labels]


_STRATEGIES: dict[str, int] = {
    "": classifier_pb2.AGGREGATION_STRATEGY_UNSPECIFIED,
    **{
        name.removeprefix("AGGREGATION_STRATEGY_").lower(): number
        for name, number in classifier_pb2.AggregationStrategy.items()
        if number != classifier_pb2.AGGREGATION_STRATEGY_UNSPECIFIED
    },
}
"""Aggregation strategy names -> the wire enum, read from the enum itself ("": the service's)."""


class AsyncTextserveClient:
    """Typed asyncio calls to the four textserve services (see the module docstring).

    Give the address of each service you call (`host:port`, or `dns:///name:port` to balance
    over every address of a headless Service); the defaults are those of a local
    `textserve serve all`.
    """

    def __init__(
        self,
        *,
        embedding: str | None = None,
        classifier: str | None = None,
        tokenizer: str | None = None,
        generation: str | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        self.addresses = {
            "embedding": embedding or DEFAULT_ADDRESSES["embedding"],
            "classifier": classifier or DEFAULT_ADDRESSES["classifier"],
            "tokenizer": tokenizer or DEFAULT_ADDRESSES["tokenizer"],
            "generation": generation or DEFAULT_ADDRESSES["generation"],
        }
        self._policy = CallPolicy(self.options)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._embed_merger: Merger[np.ndarray] = Merger(
            self._send_embed, self.options.merge_max_texts, self.options.merge_max_wait_s
        )
        self._classify_merger: Merger[Classification] = Merger(
            self._send_classify, self.options.merge_max_texts, self.options.merge_max_wait_s
        )

    # --- channels --------------------------------------------------------------------------

    def _stub(self, service: str) -> Any:
        stub = self._stubs.get(service)
        if stub is None:
            channel = open_public_channel(self.addresses[service], self.options)
            self._channels[service] = channel
            stub_type = {
                "embedding": embedding_pb2_grpc.EmbeddingServiceStub,
                "classifier": classifier_pb2_grpc.ClassifierServiceStub,
                "tokenizer": tokenizer_pb2_grpc.TokenizerServiceStub,
                "generation": generation_pb2_grpc.GenerationServiceStub,
            }[service]
            stub = self._stubs[service] = stub_type(channel)
        return stub

    async def close(self) -> None:
        """Waits for merged calls in flight, then closes every channel."""
        await self._embed_merger.aclose()
        await self._classify_merger.aclose()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()

    async def __aenter__(self) -> AsyncTextserveClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def merged_calls(self) -> int:
        """Merged embed and classify calls sent so far."""
        return self._embed_merger.calls + self._classify_merger.calls

    # --- embedding -------------------------------------------------------------------------

    async def embed(
        self,
        text: str,
        *,
        normalize: bool = False,
        truncate: bool | None = None,
        skip_cache: bool = False,
        timeout: float | None = None,
    ) -> np.ndarray:
        """The embedding of one text (float32 vector); concurrent calls share one RPC."""
        deadline = deadline_of(timeout, self.options)
        key = (normalize, truncate, skip_cache)
        if not self.options.merge:
            return (await self._send_embed(key, [text], deadline))[0]
        return await self._embed_merger.submit(key, text, deadline)

    async def _send_embed(self, key: Hashable, texts: list[str], deadline: float) -> list[np.ndarray]:
        normalize, truncate, skip_cache = cast(tuple[bool, bool | None, bool], key)
        request = embedding_pb2.EmbedRequest(
            texts=texts, normalize=normalize, truncation=_truncation(truncate), skip_cache=skip_cache
        )
        reply = await self._policy.call_unary(self._stub("embedding").Embed, request, deadline, "Embed")
        return [vector_of(item) for item in reply.embeddings]

    async def embed_batch(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = False,
        truncate: bool | None = None,
        skip_cache: bool = False,
        timeout: float | None = None,
    ) -> Embeddings:
        """Embeddings of several texts in one call (rows in the order of `texts`)."""
        request = embedding_pb2.EmbedRequest(
            texts=list(texts), normalize=normalize, truncation=_truncation(truncate), skip_cache=skip_cache
        )
        reply = await self._policy.call_unary(
            self._stub("embedding").Embed, request, deadline_of(timeout, self.options), "Embed"
        )
        return embeddings_of(reply)

    # --- classifier ------------------------------------------------------------------------

    async def classify(
        self,
        text: str,
        *,
        labels: Sequence[str] = (),
        label_set: str = "",
        top_k: int = 0,
        temperature: float = 0.0,
        truncate: bool | None = None,
        timeout: float | None = None,
    ) -> Classification:
        """The classification of one text; concurrent calls with equal options share one RPC."""
        deadline = deadline_of(timeout, self.options)
        key = (tuple(labels), label_set, top_k, temperature, truncate)
        if not self.options.merge:
            return (await self._send_classify(key, [text], deadline))[0]
        return await self._classify_merger.submit(key, text, deadline)

    async def _send_classify(self, key: Hashable, texts: list[str], deadline: float) -> list[Classification]:
        labels, label_set, top_k, temperature, truncate = cast(
            tuple[tuple[str, ...], str, int, float, bool | None], key
        )
        request = classifier_pb2.ClassifyRequest(
            texts=texts,
            labels=_labels(labels),
            label_set=label_set,
            top_k=top_k,
            temperature=temperature,
            truncation=_truncation(truncate),
        )
        reply = await self._policy.call_unary(
            self._stub("classifier").Classify, request, deadline, "Classify"
        )
        return [classification_of(item) for item in reply.classifications]

    async def classify_batch(
        self,
        texts: Sequence[str],
        *,
        labels: Sequence[str] = (),
        label_set: str = "",
        top_k: int = 0,
        temperature: float = 0.0,
        truncate: bool | None = None,
        timeout: float | None = None,
    ) -> Classifications:
        """Classifications of several texts in one call."""
        request = classifier_pb2.ClassifyRequest(
            texts=list(texts),
            labels=_labels(labels),
            label_set=label_set,
            top_k=max(0, top_k),
            temperature=temperature,
            truncation=_truncation(truncate),
        )
        reply = await self._policy.call_unary(
            self._stub("classifier").Classify, request, deadline_of(timeout, self.options), "Classify"
        )
        return classifications_of(reply)

    async def extract_entities(
        self,
        texts: Sequence[str],
        *,
        aggregation_strategy: str = "",
        stride: int = 0,
        include_tokens: bool = False,
        timeout: float | None = None,
    ) -> EntityExtraction:
        """Named entities of several texts (a classifier of kind token_classification).
        `aggregation_strategy`: none, simple, first, average or max ("": the service's)."""
        if aggregation_strategy not in _STRATEGIES:
            raise ValueError(f"aggregation_strategy must be one of {sorted(_STRATEGIES)[1:]}")
        request = classifier_pb2.ExtractEntitiesRequest(
            texts=list(texts),
            aggregation_strategy=_STRATEGIES[aggregation_strategy],  # type: ignore[arg-type]
            stride=max(0, stride),
            include_tokens=include_tokens,
        )
        reply = await self._policy.call_unary(
            self._stub("classifier").ExtractEntities,
            request,
            deadline_of(timeout, self.options),
            "ExtractEntities",
        )
        return entities_of(reply)

    # --- tokenizer -------------------------------------------------------------------------

    async def tokenize(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        add_special_tokens: bool = True,
        max_tokens: int = 0,
        timeout: float | None = None,
    ) -> Tokenization:
        """Token ids, token strings and code-point offsets of each text."""
        request = tokenizer_pb2.TokenizeRequest(
            model=model,
            texts=list(texts),
            add_special_tokens=add_special_tokens,
            return_tokens=True,
            return_offsets=True,
            max_tokens=max(0, max_tokens),
        )
        reply = await self._policy.call_unary(
            self._stub("tokenizer").Tokenize, request, deadline_of(timeout, self.options), "Tokenize"
        )
        return tokenization_of(reply)

    async def count_tokens(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        add_special_tokens: bool = True,
        timeout: float | None = None,
    ) -> list[int]:
        """Tokens of each text."""
        request = tokenizer_pb2.CountTokensRequest(
            model=model, texts=list(texts), add_special_tokens=add_special_tokens
        )
        reply = await self._policy.call_unary(
            self._stub("tokenizer").CountTokens, request, deadline_of(timeout, self.options), "CountTokens"
        )
        return list(reply.counts)

    async def detokenize(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        model: str = "",
        skip_special_tokens: bool = True,
        timeout: float | None = None,
    ) -> list[str]:
        """The text of each sequence of token ids."""
        request = tokenizer_pb2.DetokenizeRequest(
            model=model,
            sequences=[common_pb2.TokenIds(ids=list(ids)) for ids in sequences],
            skip_special_tokens=skip_special_tokens,
        )
        reply = await self._policy.call_unary(
            self._stub("tokenizer").Detokenize, request, deadline_of(timeout, self.options), "Detokenize"
        )
        return list(reply.texts)

    # --- generation ------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str | Sequence[tuple[str, str]],
        *,
        timeout: float | None = None,
        skip_cache: bool = False,
        **params: Any,
    ) -> Generation:
        """A whole completion of `prompt` (a string, or chat messages as (role, content) pairs);
        `params` are SamplingParams fields (max_new_tokens, temperature, top_k, top_p,
        repetition_penalty, stop, seed, ignore_eos)."""
        return await self.generate_request(
            generate_request(prompt, skip_cache=skip_cache, **params), timeout=timeout
        )

    async def generate_request(
        self, request: generation_pb2.GenerateRequest, *, timeout: float | None = None
    ) -> Generation:
        """`generate` of a GenerateRequest built by the caller."""
        reply = await self._policy.call_unary(
            self._stub("generation").Generate, request, deadline_of(timeout, self.options), "Generate"
        )
        return generation_of(reply)

    async def stream(
        self,
        prompt: str | Sequence[tuple[str, str]],
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """A completion streamed as it is generated (arguments as for `generate`); leaving the
        loop early cancels the generation on the server."""
        chunks = self.stream_request(generate_request(prompt, **params), timeout=timeout)
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # leaving early cancels the call at once
            await chunks.aclose()  # type: ignore[attr-defined]

    async def stream_request(
        self, request: generation_pb2.GenerateRequest, *, timeout: float | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """`stream` of a GenerateRequest built by the caller."""
        deadline = deadline_of(timeout, self.options)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("GenerateStream: deadline exceeded before the call could be made")
        call = self._stub("generation").GenerateStream(
            request,
            timeout=remaining,
            metadata=self._policy.metadata,
            wait_for_ready=self.options.wait_for_ready,
        )
        try:
            async for reply in call:
                yield chunk_of(reply)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()


def generate_request(
    prompt: str | Sequence[tuple[str, str]], *, skip_cache: bool = False, **params: Any
) -> generation_pb2.GenerateRequest:
    """The GenerateRequest of a prompt (or chat messages) and SamplingParams fields."""
    seed = params.pop("seed", None)
    sampling = generation_pb2.SamplingParams(**params)
    if seed is not None:
        sampling.seed = seed
    request = generation_pb2.GenerateRequest(params=sampling, skip_cache=skip_cache)
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.chat.messages.extend(common_pb2.ChatMessage(role=role, content=text) for role, text in prompt)
    return request
