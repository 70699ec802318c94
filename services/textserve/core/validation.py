"""Request checks shared by the services; each failure names the field and the limit."""

from __future__ import annotations

import re
from collections.abc import Sequence

from textserve.core.config import VERSION_PATTERN, LimitsConfig
from textserve.core.errors import InvalidInput

MAX_REQUEST_ID_CHARS = 128
"""Longest x-request-id passed on (gateway) or kept (classifier feedback); longer ones are cut."""


def check_texts(texts: Sequence[str], limits: LimitsConfig, field: str = "texts") -> None:
    """Non-empty list within max_texts_per_request; each text non-empty within max_text_chars."""
    if len(texts) == 0:
        raise InvalidInput(field, "must contain at least one text")
    if len(texts) > limits.max_texts_per_request:
        raise InvalidInput(
            field, f"has {len(texts)} texts; max_texts_per_request={limits.max_texts_per_request}"
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"{field}[{index}]", f"must be a string, got {type(text).__name__}")
        if not text or not text.strip():
            raise InvalidInput(f"{field}[{index}]", "must not be empty or only whitespace")
        if len(text) > limits.max_text_chars:
            raise InvalidInput(
                f"{field}[{index}]", f"has {len(text)} characters; max_text_chars={limits.max_text_chars}"
            )


def check_token_ids(
    sequences: Sequence[Sequence[int]], max_sequences: int, vocab_size: int, field: str = "token_inputs"
) -> None:
    """Pre-tokenized inputs: 1..max_sequences non-empty id lists, every id in [0, vocab_size)."""
    if len(sequences) > max_sequences:
        raise InvalidInput(field, f"has {len(sequences)} inputs; max_texts_per_request={max_sequences}")
    for index, ids in enumerate(sequences):
        if len(ids) == 0:
            raise InvalidInput(f"{field}[{index}]", "must not be empty")
        for position, token in enumerate(ids):
            if not 0 <= token < vocab_size:
                raise InvalidInput(
                    f"{field}[{index}].ids[{position}]",
                    f"token id {token} is outside the vocabulary [0, {vocab_size})",
                )


MAX_ROUTING_KEY_CHARS = 256
"""Longest routing key (request field or x-textserve-routing-key metadata)."""


def check_routing(model_version: str, routing_key: str, prefix: str = "") -> tuple[str, str]:
    """A pinned version (empty, or a positive integer) and a routing key within
    MAX_ROUTING_KEY_CHARS; returns them (the version stripped)."""
    version = model_version.strip()
    if version and not re.match(VERSION_PATTERN, version):
        raise InvalidInput(
            f"{prefix}model_version", f"must be a positive integer version such as '2'; got {version[:40]!r}"
        )
    if len(routing_key) > MAX_ROUTING_KEY_CHARS:
        raise InvalidInput(
            f"{prefix}routing_key",
            f"has {len(routing_key)} characters; at most {MAX_ROUTING_KEY_CHARS}",
        )
    return version, routing_key
