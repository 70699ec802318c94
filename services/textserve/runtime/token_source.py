"""Where a model service gets token ids from: in-process or a remote tokenizer service."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from textserve.runtime.tokenization import Encoded, TextTokenizer

# Above this many texts, in-process tokenization moves off the event loop.
_THREAD_THRESHOLD = 32


class TokenSource(Protocol):
    """Turns texts into truncated token ids for one model."""

    max_length: int

    def bind(self, model: str, max_length: int) -> None:
        """Sets the model and the cut, once the model is loaded (the Encoder calls it)."""
        ...

    async def encode(self, texts: Sequence[str], deadline: float | None) -> list[Encoded]:
        """Token ids for each text, cut at max_length (special tokens added)."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class LocalTokenSource:
    """Tokenizes in this process with the model's own tokenizer files."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.max_length = tokenizer.max_length

    def bind(self, model: str, max_length: int) -> None:
        """Nothing to do: the tokenizer is the model's own."""
        return None

    async def encode(self, texts: Sequence[str], deadline: float | None) -> list[Encoded]:
        if len(texts) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(self.tokenizer.encode_many, texts)
        return self.tokenizer.encode_many(texts)

    async def close(self) -> None:
        return None
