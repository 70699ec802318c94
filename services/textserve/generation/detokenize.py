"""Incremental detokenization: text deltas that never split a UTF-8 character or a word oddly.

Decoding one token at a time is wrong for most tokenizers: a byte-level BPE token may
hold half of a multi-byte character, SentencePiece drops the leading space of a lone
piece, WordPiece's "##ing" only makes sense after its word. The prefix-offset technique
(text-generation-inference, vLLM) decodes a short window of tokens twice, before and after
the new token, and emits only the difference, and only when the text does not end in the
replacement character of an unfinished UTF-8 sequence. The window starts inside the
prompt, so the first generated word gets its leading space right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"
# Tokens held back while the text ends in an unfinished character. A UTF-8 character has
# at most 4 bytes, so past this a trailing U+FFFD is a real invalid byte and goes out.
_MAX_HELD_TOKENS = 6
# Prompt tokens kept as context in front of the first generated token.
_PROMPT_CONTEXT = 5


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(
            ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False
        )
        return text

    def add(self, token_id: int) -> str:
        """Appends a token; returns the new text it completes (may be empty while held back)."""
        self._ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Returns whatever text is still held back (at the end of generation)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        held = len(self._ids) - self._read_offset
        if not final and new_text.endswith(_REPLACEMENT) and held < _MAX_HELD_TOKENS:
            return ""
        if len(new_text) <= len(prefix_text) and not final and held < _MAX_HELD_TOKENS:
            return ""  # e.g. a skipped special token, or a piece that only shows with the next one
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        # Keep the window short: only the last token read is needed as context.
        if self._prefix_offset > 0:
            self._ids = self._ids[self._prefix_offset :]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return delta


class StopMatcher:
    """Finds stop sequences in streamed text and holds back what might be the start of one.

    `feed` returns the text that is safe to send and whether a stop sequence was found
    (the stop sequence and anything after it are never returned).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Adds text; returns (text to emit now, stopped)."""
        if not self._stops:
            return delta, False
        text = self._pending + delta
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return text[:cut], True
        keep = self._held_suffix(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Text held back as a possible stop prefix (generation ended without the stop)."""
        text, self._pending = self._pending, ""
        return text

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop sequence."""
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
