"""`TextserveClient`: the blocking client, the asyncio client run on a thread of its own.

```python
with TextserveClient(embedding="127.0.0.1:50052") as client:
    vector = client.embed("hello world")
```

Every method of `AsyncTextserveClient` exists here with the same arguments, blocking until
the result. The client is thread-safe: calls from many threads run on its one event loop,
so concurrent single-text `embed`/`classify` calls from different threads are merged too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from textserve.client.api import AsyncTextserveClient
from textserve.client.policy import ClientOptions
from textserve.client.results import (
    Classification,
    Classifications,
    Embeddings,
    EntityExtraction,
    Generation,
    GenerationChunk,
    Tokenization,
)

T = TypeVar("T")


class TextserveClient:
    """Blocking typed calls to the textserve services (arguments as for AsyncTextserveClient)."""

    def __init__(
        self,
        *,
        embedding: str | None = None,
        classifier: str | None = None,
        tokenizer: str | None = None,
        generation: str | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="textserve-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def build() -> AsyncTextserveClient:
            return AsyncTextserveClient(
                embedding=embedding,
                classifier=classifier,
                tokenizer=tokenizer,
                generation=generation,
                options=options,
            )

        self.aio = self._run(build())
        """The asyncio client doing the work (on this client's loop thread)."""

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Closes the channels and stops the loop thread."""
        if self._closed:
            return
        self._run(self.aio.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> TextserveClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    def merged_calls(self) -> int:
        """Merged embed and classify calls sent so far."""
        return self.aio.merged_calls

    def embed(self, text: str, **kwargs: Any) -> np.ndarray:
        """The embedding of one text; concurrent calls (from any thread) share one RPC."""
        return self._run(self.aio.embed(text, **kwargs))

    def embed_batch(self, texts: Sequence[str], **kwargs: Any) -> Embeddings:
        """Embeddings of several texts in one call."""
        return self._run(self.aio.embed_batch(texts, **kwargs))

    def classify(self, text: str, **kwargs: Any) -> Classification:
        """The classification of one text; concurrent calls share one RPC."""
        return self._run(self.aio.classify(text, **kwargs))

    def classify_batch(self, texts: Sequence[str], **kwargs: Any) -> Classifications:
        """Classifications of several texts in one call."""
        return self._run(self.aio.classify_batch(texts, **kwargs))

    def extract_entities(self, texts: Sequence[str], **kwargs: Any) -> EntityExtraction:
        """Named entities of several texts (a token_classification classifier)."""
        return self._run(self.aio.extract_entities(texts, **kwargs))

    def tokenize(self, texts: Sequence[str], **kwargs: Any) -> Tokenization:
        """Token ids, token strings and offsets of each text."""
        return self._run(self.aio.tokenize(texts, **kwargs))

    def count_tokens(self, texts: Sequence[str], **kwargs: Any) -> list[int]:
        """Tokens of each text."""
        return self._run(self.aio.count_tokens(texts, **kwargs))

    def detokenize(self, sequences: Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        """The text of each sequence of token ids."""
        return self._run(self.aio.detokenize(sequences, **kwargs))

    def generate(self, prompt: str | Sequence[tuple[str, str]], **kwargs: Any) -> Generation:
        """A whole completion."""
        return self._run(self.aio.generate(prompt, **kwargs))

    def stream(self, prompt: str | Sequence[tuple[str, str]], **kwargs: Any) -> Iterator[GenerationChunk]:
        """A completion streamed as it is generated; closing the iterator early cancels it."""
        chunks: AsyncIterator[GenerationChunk] = self.aio.stream(prompt, **kwargs)
        try:
            while (chunk := self._run(_next(chunks))) is not None:
                yield chunk
        finally:
            if not self._closed:
                self._run(_close(chunks))


async def _next(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk | None:
    """The next chunk, or None at the end."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def _close(chunks: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
