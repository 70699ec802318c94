"""Per-token log-probabilities as the service hands them out: token ids with their text.

The engine reports ids and numbers (`sampling.TokenLogprobs`); `TokenTexts` adds each
token's text (the token decoded alone, as OpenAI-compatible servers show it; part of a
UTF-8 character decodes to U+FFFD), remembering the texts it has decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textserve.generation.sampling import TokenLogprobs


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability and the most likely tokens at its position."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


class TokenTexts:
    """Token id -> text of the token alone, decoded once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        """The token decoded alone (special tokens included)."""
        text = self._texts.get(token_id)
        if text is None:
            text = str(self._tokenizer.decode([token_id], clean_up_tokenization_spaces=False))
            self._texts[token_id] = text
        return text

    def entry(self, item: TokenLogprobs) -> TokenLogprob:
        """The engine's numbers with the tokens' texts."""
        return TokenLogprob(
            item.token,
            self.text(item.token),
            item.logprob,
            tuple(TopLogprob(token, self.text(token), value) for token, value in item.top),
        )
